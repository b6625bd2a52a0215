"""P3 Protocol's own server as the lab's app (`p3lab up --app upstream`): unmodified, on loopback, against the lab's
PostgreSQL, Redis and anvil; /api/system/health is its only database check; an anchor job of P3's worker completes;
the lockfile's BullMQ leaves P3 without a worker. Every assertion reads real state (/proc, redis-py, psycopg2,
JSON-RPC, files), not what p3lab printed."""
import json
import os
import tarfile
import time
import uuid

import pytest

from p3harness import lab, lab_fault, lab_status
from p3upstream_harness import job_state, lab_now, p3_query, rpc, upstream, wait_for, worker_client_name


def _listen_addrs(port):
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on port."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                addr, p = parts[1].rsplit(":", 1)
                if parts[3] == "0A" and int(p, 16) == port:
                    out.append(addr)
    return out


def test_up_runs_p3_unmodified_on_loopback_against_the_lab(healthy_upstream):
    lab_ = lab_now()
    st = healthy_upstream
    assert st["lab"]["app"] == "upstream" and st["lab"]["bullmq"] == "working"
    src = upstream.src_dir(lab_)
    pid = st["services"]["app"]["pid"]
    with open("/proc/%d/cmdline" % pid, "rb") as fh:
        argv = fh.read().split(b"\0")
    assert b"server/index.ts" in argv and b"tsx" in argv, argv
    assert os.path.realpath(os.readlink("/proc/%d/cwd" % pid)) == os.path.realpath(src)
    # loopback only (P3 hard-codes 0.0.0.0; the preload moves it): 127.0.0.1 is 0100007F in /proc/net/tcp
    assert _listen_addrs(lab_.app_port) == ["0100007F"]
    # the source is the tarball's, byte for byte, with its licence files
    with tarfile.open(upstream.tarball()) as tar:
        for member in ("server/index.ts", "server/workers/anchorWorker.ts", "package-lock.json", "LICENSE", "NOTICE"):
            want = tar.extractfile("P3-Protocol/" + member).read()
            with open(os.path.join(src, member), "rb") as fh:
                assert fh.read() == want, member
    # P3's own postgres.js pool (application_name p3-protocol) holds connections on its database
    rows = p3_query(lab_, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                    (upstream.DB, "p3-protocol"))
    assert rows[0][0] >= 1
    # its BullMQ worker is connected to the Redis P3 uses
    names = [c.get("name") for c in upstream.redis_client(lab_).client_list()]
    assert worker_client_name() in names, names


def test_system_health_is_the_only_database_check(healthy_upstream):
    lab_ = lab_now()
    code, body = upstream.health(lab_)
    assert code == 200 and body["status"] == "ok" and body["database"]["status"] == "healthy", body
    pid = healthy_upstream["services"]["app"]["pid"]
    lab_fault("db-down")
    st = lab_status()
    assert st["services"]["postgres"]["up"] is False
    code, body = upstream.health(lab_, timeout=40)
    # SELECT 1 fails, then the route's task count fails too: 500 "error", never the "degraded" its code names
    assert code == 500 and body["status"] == "error", (code, body)
    hcode, hbody = upstream.api(lab_, "GET", "/health")
    assert hcode == 200 and hbody["status"] == "healthy"  # /health checks nothing
    assert st["app"]["healthy"] is False and any("system/health" in p for p in st["problems"]), st["problems"]
    out = json.loads(lab("heal", timeout=300))
    assert not any("restarted" in a for a in out["actions"]), out  # P3 reconnects to PostgreSQL by itself
    code, body = upstream.health(lab_)
    assert code == 200 and body["database"]["status"] == "healthy", body
    assert lab_status()["services"]["app"]["pid"] == pid


@pytest.mark.extended
def test_anchor_job_completes_and_outbox_row_is_written(healthy_upstream):
    """Queue B: POST /api/sdk/anchor/batch (wallet JWT) -> BullMQ job on anchor-batch:us -> P3's worker. P3's worker
    misses jobs once it has idled 5 s (test_worker_takes_no_job_after_idling), so the job submitted through P3's
    route is taken by a fresh worker: the one P3 starts after a restart."""
    lab_ = lab_now()
    tag = "it-%s" % uuid.uuid4().hex[:12]
    code, body = upstream.submit_batch(lab_, [{"appId": "p3-it", "event": tag}])
    assert code == 200 and body["accepted"] == 1, body
    job = body["jobIds"][0]
    assert job_state(lab_, job) in ("wait", "active", "completed")
    lab_fault("app-down")
    lab("heal", timeout=300)
    assert wait_for(lambda: job_state(lab_, job) == "completed", 30), job_state(lab_, job)
    r = upstream.redis_client(lab_)
    assert r.hget("bull:%s:%s" % (upstream.QUEUE, job), "finishedOn")
    # what the worker does with it: the explorer index in P3's Redis
    indexed = [json.loads(r.hget("us-east-1:anchor:%s" % m, "data") or "{}") for m in r.zrange("explorer:us:p3-it", 0, -1)]
    assert any(d.get("event") == tag for d in indexed), indexed
    # the durable outbox: POST /api/anchor/batch writes an anchor_outbox row (pending: development runs no queue A)
    tag2 = tag + "-outbox"
    code, body = upstream.api(lab_, "POST", "/api/anchor/batch", {"events": [{"appId": "p3-it", "event": tag2}]})
    assert code == 200 and body["queued"] == 1, body
    rows = p3_query(lab_, "SELECT status, app_id, type FROM anchor_outbox WHERE payload->>'event' = %s", (tag2,))
    assert rows == [("pending", "p3-it", tag2)], rows
    # on chain: the anchor checkpoint goes through P3's signer to the registry at P3's hard-coded address
    code, body = upstream.anchor_checkpoint(lab_, kind=tag)
    assert code == 200 and body["onChain"] is True, body
    rcpt = rpc(lab_.rpc_url, "eth_getTransactionReceipt", [body["txHash"]])
    assert rcpt["status"] == "0x1"
    assert rcpt["from"].lower() == upstream.ANCHOR_WALLET.lower()
    log = rcpt["logs"][0]
    assert log["address"].lower() == upstream.REGISTRY_ADDRESSES[0].lower()
    assert log["topics"][0] == "0x" + upstream.DATA_ANCHORED_TOPIC and log["topics"][2] == body["contentHash"]


@pytest.mark.extended
def test_worker_takes_no_job_after_idling(healthy_upstream):
    """P3's real anchor worker (bullmq 5.12.11) stops taking jobs once it has idled 5 s: its ioredis connection has
    commandTimeout 5000, BullMQ blocks 5 s in BZPOPMIN, the client gives up first and later pops land on abandoned
    commands. The worker stays connected (CLIENT LIST) while jobs wait; status calls it stuck; a restart helps."""
    lab_ = lab_now()
    lab_fault("app-down")
    lab("heal", timeout=300)
    time.sleep(12)
    code, body = upstream.submit_batch(lab_, [{"appId": "p3-it", "event": "idle"}])
    assert code == 200, body
    job = body["jobIds"][0]
    time.sleep(16)
    assert job_state(lab_, job) == "wait"
    assert worker_client_name() in [c.get("name") for c in upstream.redis_client(lab_).client_list()]
    st = lab_status()
    assert st["anchor"]["stuck"] is True and not st["healthy"], st["anchor"]
    out = json.loads(lab("heal", timeout=300))
    assert any(a.startswith("restarted p3upstream") for a in out["actions"]), out
    assert wait_for(lambda: job_state(lab_, job) == "completed", 30), job_state(lab_, job)


@pytest.mark.extended
def test_lockfile_bullmq_leaves_p3_without_an_anchor_worker(healthy_upstream):
    lab_ = lab_now()
    r = upstream.redis_client(lab_)
    assert worker_client_name() in [c.get("name") for c in r.client_list()]  # the check can see a worker
    size = os.path.getsize(lab_.app_log)
    lab("up", "--bullmq", "lockfile", timeout=600)
    lab_ = lab_now()
    with open(os.path.join(upstream.src_dir(lab_), "node_modules", "bullmq", "package.json")) as fh:
        assert json.load(fh)["version"] == upstream.BULLMQ_LOCKFILE
    code, body = upstream.health(lab_)
    assert code == 200 and body["database"]["status"] == "healthy"  # P3 itself runs
    time.sleep(2)
    names = [c.get("name") or "" for c in upstream.redis_client(lab_).client_list()]
    assert not [n for n in names if n.startswith(worker_client_name())], names
    with open(lab_.app_log, "rb") as fh:
        fh.seek(size)
        assert b"[AnchorWorker] Failed to start" in fh.read()
    code, body = upstream.submit_batch(lab_, [{"appId": "p3-it", "event": "lockfile"}])
    assert code == 500, (code, body)
    st = lab_status()
    assert st["anchor"]["worker"] is False and not st["healthy"]
    assert any(p.startswith("anchor: no BullMQ worker") for p in st["problems"]), st["problems"]
    lab("up", "--bullmq", "working", timeout=600)
    assert wait_for(lambda: worker_client_name() in [c.get("name") for c in upstream.redis_client(lab_).client_list()],
                    30)
