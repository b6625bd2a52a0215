"""bullmq_retry's retry (BullQueue.retry) on a throwaway standalone redis-server: the same end state as Node
BullMQ's own queue.retryJobs() on the same data (job hashes, wait order, failed set, events, marker, meta), the
max_jobs cap exact with several pages in flight, malformed jobs left failed and named, filters, check mode.

Needs redis-server (and node with the npm bullmq package for the comparison with Node); no lab.
"""
import json
import os
import shutil
import subprocess

import pytest

from p3harness import ROOT, ensure_collection_importable, throwaway_redis

ensure_collection_importable()

from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings  # noqa: E402

PREFIX, QUEUE = "bull", "anchor"
BASE = "%s:%s:" % (PREFIX, QUEUE)
NOW = 1700000000000  # fixed, so two seeds are identical

NODE_SCRIPT = r"""
const { Queue } = require('bullmq');
(async () => {
  const q = new Queue(process.argv[3], { prefix: process.argv[2], connection: { host: '127.0.0.1', port: +process.argv[4] } });
  await q.waitUntilReady();
  await q.retryJobs({ state: 'failed', count: +process.argv[5], timestamp: +process.argv[6] });
  await q.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server not installed")


@pytest.fixture(scope="module")
def server():
    redis_server = throwaway_redis(prefix="p3test-bullmq-", decode_responses=True)
    yield redis_server.port, redis_server.client
    redis_server.stop()


def seed(client, n, bad=(), reasons=None, parent=None):
    """n failed jobs job-0..job-n-1 (finishedOn NOW-60000+i), as BullMQ leaves them; bad: indexes with malformed
    data; reasons: i -> failedReason; parent: index of a child job of a flow whose parent still waits for it."""
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        jid = "job-%d" % i
        fin = NOW - 60000 + i
        data = "{not json" if i in bad else json.dumps({"outboxId": jid, "digest": "%064x" % i})
        fields = {"name": "anchor", "data": data, "opts": '{"attempts":1}', "timestamp": fin - 2,
                  "processedOn": fin - 1, "finishedOn": fin, "atm": 1, "ats": 1,
                  "failedReason": (reasons or {}).get(i, "Web3RPCError: insufficient funds")}
        if i == parent:
            fields["parentKey"] = BASE + "parent"
            pipe.zadd(BASE + "parent:unsuccessful", {BASE + jid: fin})
        pipe.hset(BASE + jid, mapping=fields)
        pipe.zadd(BASE + "failed", {jid: fin})
    if parent is not None:
        pipe.hset(BASE + "parent", mapping={"name": "parent", "data": "{}", "opts": "{}", "timestamp": NOW})
    pipe.set(BASE + "id", n)
    pipe.execute()


def snapshot(client):
    out = {}
    for key in sorted(client.scan_iter(BASE + "*", count=1000)):
        t = client.type(key)
        if t == "hash":
            out[key] = client.hgetall(key)
        elif t == "list":
            out[key] = client.lrange(key, 0, -1)
        elif t == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif t == "set":
            out[key] = sorted(client.smembers(key))
        elif t == "stream":  # entry ids are times: compare the entries
            out[key] = [fields for _id, fields in client.xrange(key)]
        else:
            out[key] = client.get(key)
    return out


def ours(port, **kw):
    q = BullQueue(RedisSettings([("127.0.0.1", port)], socket_timeout=30), QUEUE, PREFIX).connect()
    try:
        kw.setdefault("max_jobs", 10 ** 9)
        return q.retry(clock=lambda: NOW, **kw)
    finally:
        q.close()


@pytest.mark.skipif(not shutil.which("node") or not os.path.isdir(os.path.join(ROOT, "node_modules", "bullmq")),
                    reason="node and the npm bullmq package are needed for the comparison")
@pytest.mark.parametrize("validate", [True, False])
def test_same_end_state_as_node_retryjobs(server, tmp_path, validate):
    port, client = server
    n = 2345  # pages of 1000, 1000, 345
    seed(client, n, parent=7)
    script = tmp_path / "retry.js"
    script.write_text(NODE_SCRIPT)
    proc = subprocess.run(["node", str(script), PREFIX, QUEUE, str(port), "1000", str(NOW)], capture_output=True,
                          text=True, env=dict(os.environ, NODE_PATH=os.path.join(ROOT, "node_modules")), timeout=120)
    assert proc.returncode == 0, proc.stderr
    node = snapshot(client)
    node[BASE + "meta"].pop("version")  # written by Node's Queue when it connects, not by retryJobs

    seed(client, n, parent=7)
    res = ours(port, validate=validate, required_keys=["outboxId"], ids_limit=1500)
    mine = snapshot(client)
    assert res["retried"] == res["matched"] == n and res["malformed_count"] == 0
    assert 3 <= res["pages"] <= 4  # the last call in flight may find nothing left
    assert res["ids"] == ["job-%d" % i for i in range(1500)] and res["ids_truncated"] is True
    assert mine == node
    # what retryJobs does, spelled out
    assert client.zcard(BASE + "failed") == 0 and client.llen(BASE + "wait") == n
    assert client.lindex(BASE + "wait", -1) == "job-0"  # LPUSH: oldest failure first out
    job = client.hgetall(BASE + "job-3")
    assert not set(job) & {"finishedOn", "processedOn", "failedReason"} and job["atm"] == "1"
    assert client.xlen(BASE + "events") == n
    assert client.sismember(BASE + "parent:dependencies", BASE + "job-7")


@pytest.mark.parametrize("max_jobs,page", [(1700, 500), (1000, 1000), (1, 1000), (2345, 1000), (999, 7)])
def test_max_jobs_cap_is_exact(server, max_jobs, page):
    port, client = server
    seed(client, 2345)
    res = ours(port, max_jobs=max_jobs, page_size=page)
    assert res["retried"] == max_jobs
    assert client.llen(BASE + "wait") == max_jobs and client.xlen(BASE + "events") == max_jobs
    assert client.zrange(BASE + "failed", 0, 0) == (["job-%d" % max_jobs] if max_jobs < 2345 else [])


def test_malformed_job_stays_failed_and_is_named(server):
    port, client = server
    seed(client, 2345, bad={1200, 2000})
    res = ours(port, required_keys=["outboxId", "digest"])
    assert res["retried"] == 2343 and res["malformed_count"] == 2
    assert sorted(m["id"] for m in res["malformed"]) == ["job-1200", "job-2000"]
    assert all(m["problem"].startswith("data is not JSON") for m in res["malformed"])
    assert client.zrange(BASE + "failed", 0, -1) == ["job-1200", "job-2000"]
    assert client.hget(BASE + "job-1200", "failedReason") and client.hget(BASE + "job-1200", "finishedOn")
    assert "job-1200" not in client.lrange(BASE + "wait", 0, -1) and client.llen(BASE + "wait") == 2343
    # missing key: named as such
    seed(client, 3)
    client.hset(BASE + "job-1", "data", json.dumps({"outboxId": "x"}))
    res = ours(port, required_keys=["outboxId", "digest"])
    assert res["retried"] == 2 and res["malformed"] == [{"id": "job-1", "problem": "data lacks digest"}]
    # without the check, malformed jobs move as retryJobs moves them
    seed(client, 5, bad={2})
    res = ours(port, validate=False)
    assert res["retried"] == 5 and client.zcard(BASE + "failed") == 0


def test_filters_and_check_mode(server):
    port, client = server
    reasons = dict((i, "nonce too low") for i in range(0, 2345, 3))
    seed(client, 2345, reasons=reasons)
    before = snapshot(client)
    res = ours(port, check_mode=True)
    assert res["would_retry"] == 2345 and res["retried"] == 0 and snapshot(client) == before
    res = ours(port, reason_pattern="(?i)insufficient", page_size=400)
    assert res["retried"] == 2345 - len(reasons) and res["skipped_reason"] == len(reasons)
    assert sorted(client.zrange(BASE + "failed", 0, -1)) == sorted("job-%d" % i for i in reasons)
    seed(client, 2345)
    res = ours(port, min_age_seconds=30)  # finishedOn NOW-60000+i: i <= 30000 all old enough; then check the edge
    assert res["retried"] == 2345
    seed(client, 10)
    res = ours(port, min_age_seconds=59.995)  # cutoff NOW-59995: job-0..job-5
    assert res["retried"] == 6 and client.zrange(BASE + "failed", 0, 0) == ["job-6"]
