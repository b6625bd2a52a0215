"""Bench entry `anchor_retry`: retry 100k failed BullMQ jobs - ours (p3.recovery.bullmq_retry) beside Node BullMQ's
own queue.retryJobs() on the same data in the same run, and the runbook's per-job shell way on 10k.

Runs on a standalone redis-server started here on a free port (deleted afterwards). Each contender gets freshly
seeded, identical data: N job hashes (name, data, opts, timestamp, processedOn, finishedOn, failedReason, atm) in
the `failed` sorted set (score = finishedOn), as BullMQ leaves them. Times are the retry itself (Node: around
`await queue.retryJobs()`; ours: the module's own `elapsed_ms`, plus the whole ansible task's wall time for
reference); memory is the peak RSS of a Python process running our retry on 10k and on 100k jobs.
"""
import json
import os
import shutil
import subprocess
import sys
import time

from benchlib import StandaloneRedis

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
N_BIG = int(os.environ.get("BENCH_RETRY_JOBS", "100000"))
N_SHELL = int(os.environ.get("BENCH_RETRY_SHELL_JOBS", "10000"))
PREFIX, QUEUE = "bull", "anchor"
BASE = "%s:%s:" % (PREFIX, QUEUE)

NODE_SCRIPT = r"""
const { Queue } = require('bullmq');
(async () => {
  const q = new Queue(process.argv[3], { prefix: process.argv[2], connection: { host: '127.0.0.1', port: +process.argv[4] } });
  await q.waitUntilReady();
  const t0 = process.hrtime.bigint();
  await q.retryJobs({ state: 'failed' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const counts = await q.getJobCounts('failed', 'wait');
  console.log(JSON.stringify({ ms, counts }));
  await q.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""

RSS_SCRIPT = r"""
import resource, sys, json
sys.path.insert(0, sys.argv[1])
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings
from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue
q = BullQueue(RedisSettings([("127.0.0.1", int(sys.argv[2]))], socket_timeout=30), "anchor", "bull").connect()
res = q.retry(max_jobs=10**9, ids_limit=1000)
print(json.dumps({"retried": res["retried"], "elapsed_ms": res["elapsed_ms"],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class RedisServer(StandaloneRedis):
    def __init__(self):
        super(RedisServer, self).__init__(prefix="bench-redis-", socket_timeout=60, decode_responses=True)


def seed(client, n):
    client.flushall()
    now = int(time.time() * 1000) - 60000 - n  # every finishedOn (score) in the past
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        jid = "job-%d" % i
        pipe.hset(BASE + jid, mapping={
            "name": "anchor", "data": json.dumps({"outboxId": jid, "digest": "%064x" % i}), "opts": '{"attempts":1}',
            "timestamp": now, "processedOn": now + 1, "finishedOn": now + 2, "atm": 1, "ats": 1,
            "failedReason": "Web3RPCError: Insufficient funds for gas * price + value"})
        pipe.zadd(BASE + "failed", {jid: now + 2 + i})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    pipe.hset(BASE + "meta", mapping={"opts.maxLenEvents": 10000})
    pipe.set(BASE + "id", n)
    pipe.execute()
    assert client.zcard(BASE + "failed") == n


def check_moved(client, n):
    failed, wait = client.zcard(BASE + "failed"), client.llen(BASE + "wait")
    if failed != 0 or wait != n:
        raise SystemExit("bench: expected 0 failed / %d wait after a retry, got %d / %d" % (n, failed, wait))
    if client.hget(BASE + "job-0", "failedReason") is not None:
        raise SystemExit("bench: failedReason not cleared")


def run_node(server, n):
    seed(server.client, n)
    script = os.path.join(server.dir, "retry.js")
    with open(script, "w") as f:
        f.write(NODE_SCRIPT)
    env = dict(os.environ, NODE_PATH=os.path.join(ROOT, "node_modules"))
    proc = subprocess.run(["node", script, PREFIX, QUEUE, str(server.port)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit("bench: node retryJobs failed: %s" % proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    check_moved(server.client, n)
    return out["ms"] / 1000.0


def run_ours_module(server, n, validate=True):
    seed(server.client, n)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_NOCOLOR="1")
    args = json.dumps({"redis_url": "redis://127.0.0.1:%d" % server.port, "prefix": PREFIX, "queue": QUEUE,
                       "max_jobs": n, "redis_socket_timeout": 60, "validate_data": validate})
    t0 = time.perf_counter()
    proc = subprocess.run([os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=%s" % sys.executable,
                           "-m", "p3.recovery.bullmq_retry", "-a", args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("bench: bullmq_retry failed: %s%s" % (proc.stdout[-2000:], proc.stderr[-1000:]))
    res = json.loads(proc.stdout.split("=>", 1)[1])
    check_moved(server.client, n)
    return res["elapsed_ms"] / 1000.0, wall


def run_rss(server, n):
    seed(server.client, n)
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, os.path.join(ROOT, ".state", "unit-path"),
                           str(server.port)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit("bench: rss run failed: %s" % proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    check_moved(server.client, n)
    return out["maxrss_kb"]


def run_shell(server, n):
    """The runbook's per-job pipeline with its key names fixed so it runs at all (failed is a ZSET, the list is
    wait); it is still not a retry (finishedOn/failedReason stay, jobs stay in failed, no events)."""
    seed(server.client, n)
    cmd = ("redis-cli -p {p} ZRANGE {b}failed 0 -1 | xargs -I {{}} redis-cli -p {p} LPUSH {b}wait {{}} >/dev/null"
           .format(p=server.port, b=BASE))
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, timeout=1800)
    dt = time.perf_counter() - t0
    if server.client.llen(BASE + "wait") != n:
        raise SystemExit("bench: the shell way did not push %d ids" % n)
    return dt


def bench_anchor_retry():
    for tool in ("redis-server", "redis-cli", "node"):
        if not shutil.which(tool):
            raise SystemExit("bench: %s not found" % tool)
    if not os.path.isdir(os.path.join(ROOT, "node_modules", "bullmq")):
        raise SystemExit("bench: npm bullmq missing (npm install)")
    server = RedisServer()
    try:
        runs = int(os.environ.get("BENCH_RETRY_RUNS", "3"))
        node, ours, walls, checked = [], [], [], []
        for _ in range(runs):  # alternate, same data each time
            node.append(run_node(server, N_BIG))
            o, w = run_ours_module(server, N_BIG, validate=False)  # the same work as retryJobs
            ours.append(o)
            walls.append(w)
            checked.append(run_ours_module(server, N_BIG, validate=True)[0])  # plus our job-data check
        rss_small = run_rss(server, N_BIG // 10)
        rss_big = run_rss(server, N_BIG)
        shell = run_shell(server, N_SHELL)
    finally:
        server.stop()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    node_s, ours_s, wall_s, checked_s = med(node), med(ours), med(walls), med(checked)
    return {
        "entry": "anchor_retry",
        "what": ("retry %d failed BullMQ jobs on a standalone redis-server: bullmq_retry validate_data=false, its own "
                 "elapsed_ms (whole ansible task %.2f s; with the default validate_data=true %.3f s = %.2fx Node) vs "
                 "Node bullmq queue.retryJobs(); runbook per-job shell on %d: %.2f s (%.0f jobs/s, ours %.0f jobs/s "
                 "= %.0fx); our peak RSS %d KB at %d jobs, %d KB at %d jobs"
                 % (N_BIG, wall_s, checked_s, checked_s / node_s, N_SHELL, shell, N_SHELL / shell, N_BIG / ours_s,
                    (N_BIG / ours_s) / (N_SHELL / shell), rss_small, N_BIG // 10, rss_big, N_BIG)),
        "ours_s": round(ours_s, 3),
        "reference_s": round(node_s, 3),
        "ratio_ours_over_reference": round(ours_s / node_s, 2) if node_s else None,
        "throughput_ours_over_node": round(node_s / ours_s, 2) if ours_s else None,
        "ours_task_wall_s": round(wall_s, 3),
        "ours_validated_s": round(checked_s, 3),
        "shell_s": round(shell, 3),
        "shell_jobs": N_SHELL,
        "rss_kb": {str(N_BIG // 10): rss_small, str(N_BIG): rss_big},
        "target": "throughput >= 1.0x Node retryJobs, RSS flat in the number of jobs",
        "target_met": ours_s <= node_s and rss_big < rss_small * 1.5,
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(bench_anchor_retry(), indent=2))
