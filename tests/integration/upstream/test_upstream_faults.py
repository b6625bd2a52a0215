"""Every lab fault on P3 Protocol's own server: injected into what P3 really uses, the symptom read from the real
services, and `p3lab heal` brings P3 back to working (a new anchor job completes, the DB-backed endpoint answers)."""
import json
import subprocess
import sys
import time
import uuid

import pytest

from p3harness import LAB, ROOT, lab, lab_fault, lab_status
from p3upstream_harness import lab_now, p3_query, rpc, upstream, wait_for, worker_client_name

ONE_ETH = 10 ** 18


def _worker(lab_):
    try:
        return worker_client_name() in [c.get("name") for c in upstream.redis_client(lab_).client_list()]
    except Exception:  # noqa: BLE001 - P3's Redis down
        return None


def _works(lab_):
    """P3 really works: the DB-backed endpoint answers, an anchor batch writes its outbox row, an anchor checkpoint
    goes on chain, and its anchor worker is connected. (Whether the worker takes a job depends on how long it has
    idled - test_upstream_lab.py::test_worker_takes_no_job_after_idling - so job completion is asserted where the
    worker is fresh: test_anchor_backlog, test_upstream_lab.py::test_anchor_job_completes_and_outbox_row_is_written.)"""
    code, body = upstream.health(lab_)
    assert code == 200 and body["database"]["status"] == "healthy", body
    tag = "works-%s" % uuid.uuid4().hex[:8]
    code, body = upstream.api(lab_, "POST", "/api/anchor/batch", {"events": [{"appId": "p3-it", "event": tag}]})
    assert code == 200, body
    assert p3_query(lab_, "SELECT count(*) FROM anchor_outbox WHERE payload->>'event' = %s", (tag,))[0][0] == 1
    code, body = upstream.anchor_checkpoint(lab_, kind=tag)
    assert code == 200 and body["onChain"] is True, body
    assert wait_for(lambda: _worker(lab_), 15)


def _heal():
    return json.loads(lab("heal", timeout=300))


@pytest.mark.extended
def test_app_down(healthy_upstream):
    lab_ = lab_now()
    old = healthy_upstream["services"]["app"]["pid"]
    rec = lab_fault("app-down")
    assert rec["pid"] == old
    st = lab_status()
    assert st["services"]["app"]["up"] is False and st["services"]["app"]["state"] == "EXITED"
    assert upstream.health(lab_, timeout=2)[0] is None
    out = _heal()
    assert "started p3upstream" in out["actions"]
    assert lab_status()["services"]["app"]["pid"] != old
    _works(lab_)


def test_db_exhaustion_through_p3s_pools(healthy_upstream):
    lab_ = lab_now()
    rec = lab_fault("db-exhaustion")
    rows = p3_query(lab_, "SELECT count(*) FILTER (WHERE application_name = 'p3-lab-leak'), count(*), "
                          "current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int "
                          "FROM pg_stat_activity WHERE backend_type = 'client backend'")
    leaked, total, usable = rows[0]
    assert leaked == rec["connections"] and leaked > 0
    assert total - 1 >= usable  # every non-reserved slot is taken (our admin connection is a reserved one)
    # what P3 answered to concurrent /api/system/health: 200 "degraded" (its SELECT 1 could not get a connection,
    # its second query could) or 500 naming the server's refusal (reserved slots, or max_connections itself)
    assert rec["failed_probes"] > 0
    assert any(t in rec["health"] for t in ("'unhealthy'", "remaining connection slots", "too many clients")), rec
    _heal()
    assert p3_query(lab_, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'p3-lab-leak'")[0][0] == 0
    _works(lab_)


@pytest.mark.extended
def test_redis_master_down(healthy_upstream):
    lab_ = lab_now()
    rec = lab_fault("redis-master-down")
    assert not upstream.redis_up(lab_)
    assert rec["anchor_batch"] == 500
    code, body = upstream.health(lab_)
    assert code == 200 and body["database"]["status"] == "healthy"  # P3's health check is blind to Redis
    out = _heal()
    assert any(a.startswith("restarted p3upstream") for a in out["actions"]), out
    assert _worker(lab_)
    _works(lab_)


@pytest.mark.extended
def test_redis_outage_p3_does_not_come_back_by_itself(healthy_upstream):
    lab_ = lab_now()
    assert _worker(lab_)
    rec = lab_fault("redis-outage")
    assert rec["worker_before"] is True and rec["worker_after"] is False and rec["recovered_by_itself"] is False
    # Redis has been back for a while: P3's clients gave up for good
    assert upstream.redis_up(lab_)
    time.sleep(15)
    assert _worker(lab_) is False
    code, body = upstream.health(lab_)
    assert code == 200 and body["status"] == "ok"  # and P3 says it is fine
    out = _heal()
    assert any(a.startswith("restarted p3upstream") for a in out["actions"]), out
    _works(lab_)


@pytest.mark.extended
def test_anchor_backlog(healthy_upstream):
    lab_ = lab_now()
    rec = lab_fault("anchor-backlog")
    key = "%s:%s:wait" % (upstream.BULL_PREFIX, upstream.QUEUE)
    r = upstream.redis_client(lab_)
    n = r.llen(key)
    assert n >= rec["posted"] >= lab_.backlog and _worker(lab_) is False
    time.sleep(5)
    assert r.llen(key) == n  # nothing consumes them
    done = r.zcard("%s:%s:completed" % (upstream.BULL_PREFIX, upstream.QUEUE))
    _heal()
    assert r.llen(key) == 0
    assert r.zcard("%s:%s:completed" % (upstream.BULL_PREFIX, upstream.QUEUE)) >= done + n
    _works(lab_)


@pytest.mark.extended
def test_wallet_empty(healthy_upstream):
    lab_ = lab_now()
    rec = lab_fault("wallet-empty")
    assert int(rpc(lab_.rpc_url, "eth_getBalance", [upstream.ANCHOR_WALLET, "latest"]), 16) == 0
    rows = p3_query(lab_, "SELECT id::text, status FROM anchor_outbox WHERE id::text = ANY(%s)", (rec["outbox_ids"],))
    assert sorted(rows) == sorted((i, "pending") for i in rec["outbox_ids"])
    _heal()
    assert int(rpc(lab_.rpc_url, "eth_getBalance", [upstream.ANCHOR_WALLET, "latest"]), 16) >= ONE_ETH // 10
    code, body = upstream.anchor_checkpoint(lab_, kind="after-heal")
    assert code == 200 and body["onChain"] is True, body


def test_faults_that_do_not_apply_say_why_in_one_line(healthy_upstream):
    for name in ("sessions-corrupt", "mesh-down", "redis-slots-uncovered"):
        proc = subprocess.run([sys.executable, LAB, "fault", name], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not apply to app=upstream" in lines[0], proc.stderr
    assert lab_status()["faults"] == []
