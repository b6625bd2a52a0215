"""Bench entry `anchor_retry`: retry 100k failed BullMQ jobs - ours (p3.recovery.bullmq_retry) beside Node BullMQ's
own queue.retryJobs() on the same data in the same run, and the runbook's per-job shell way on 10k.

Runs on a standalone redis-server started here on a free port (deleted afterwards). Each contender gets freshly
seeded, identical data: N job hashes (name, data, opts, timestamp, processedOn, finishedOn, failedReason, atm) in
the `failed` sorted set (score = finishedOn), as BullMQ leaves them. What each time covers:
- Node: `await queue.retryJobs()` on a connected Queue (its loop of moveJobsToWait calls, count 1000, including
  ioredis' first NOSCRIPT -> EVAL); not node start-up, require() or the connection.
- ours: the module's `elapsed_ms` = BullQueue.retry() on a connected client (reading the script file, SCRIPT LOAD,
  every page); not ansible/python start-up, the connection or the module's count afterwards. The whole ansible task
  wall time is printed for reference.
Server side, around each run: INFO commandstats (script calls, their total and mean server time) and SLOWLOG (the
longest single script call = the longest the server was held by one page). Memory is the peak RSS of a Python
process running our retry on 10k and on 100k jobs.
"""
import json
import os
import shutil
import subprocess
import sys
import time

from benchlib import BIN, COLLECTIONS, ROOT, StandaloneRedis

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


def server_reset(client):
    client.config_set("slowlog-log-slower-than", 1000)
    client.config_set("slowlog-max-len", 10000)
    client.slowlog_reset()
    client.config_resetstat()


def server_stats(client):
    """(script calls, mean us per call, longest call us) since server_reset."""
    st = client.info("commandstats")
    calls = sum(st.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    usec = sum(st.get(k, {}).get("usec", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    slow = [e["duration"] for e in client.slowlog_get(10000)
            if str(e.get("command", b""))[:8].upper().find("EVAL") >= 0]
    return calls, (usec / calls if calls else 0.0), max(slow) if slow else 0


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
    server_reset(server.client)
    proc = subprocess.run(["node", script, PREFIX, QUEUE, str(server.port)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        raise SystemExit("bench: node retryJobs failed: %s" % proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    stats = server_stats(server.client)
    check_moved(server.client, n)
    return out["ms"] / 1000.0, stats


def run_ours_module(server, n, validate=None):
    seed(server.client, n)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_NOCOLOR="1")
    module_args = {"redis_url": "redis://127.0.0.1:%d" % server.port, "prefix": PREFIX, "queue": QUEUE,
                   "max_jobs": n, "redis_socket_timeout": 60}
    if validate is not None:
        module_args["validate_data"] = validate
    args = json.dumps(module_args)
    server_reset(server.client)
    t0 = time.perf_counter()
    proc = subprocess.run([os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=%s" % sys.executable,
                           "-m", "p3.recovery.bullmq_retry", "-a", args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("bench: bullmq_retry failed: %s%s" % (proc.stdout[-2000:], proc.stderr[-1000:]))
    res = json.loads(proc.stdout.split("=>", 1)[1])
    stats = server_stats(server.client)
    check_moved(server.client, n)
    return res["elapsed_ms"] / 1000.0, wall, stats


def run_rss(server, n):
    seed(server.client, n)
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, COLLECTIONS,
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
        node, ours, walls, checked, ratios, ratios_checked = [], [], [], [], [], []
        srv = {"node": [], "ours": [], "ours_validated": []}
        for _ in range(runs):  # alternate, same data each time
            n_s, n_st = run_node(server, N_BIG)
            # the module's default: no job-data check, the same work and semantics as retryJobs
            o, w, o_st = run_ours_module(server, N_BIG)
            # plus the job-data check (what naming required_data_keys turns on; the anchor_queue role does)
            c, _w, c_st = run_ours_module(server, N_BIG, validate=True)
            node.append(n_s)
            ours.append(o)
            walls.append(w)
            checked.append(c)
            ratios.append(n_s / o)
            ratios_checked.append(n_s / c)
            for k, st in (("node", n_st), ("ours", o_st), ("ours_validated", c_st)):
                srv[k].append({"script_calls": st[0], "mean_call_ms": round(st[1] / 1000.0, 2),
                               "max_call_ms": round(st[2] / 1000.0, 2)})
        rss_small = run_rss(server, N_BIG // 10)
        rss_big = run_rss(server, N_BIG)
        shell = run_shell(server, N_SHELL)
    finally:
        server.stop()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    node_s, ours_s, wall_s, checked_s = med(node), med(ours), med(walls), med(checked)
    return {
        "entry": "anchor_retry",
        "what": ("retry %d failed BullMQ jobs on a standalone redis-server, same data, same run, median of %d: "
                 "Node bullmq queue.retryJobs() (await on a connected Queue) vs bullmq_retry's own elapsed_ms "
                 "(retry() on a connected client, script load included; whole ansible task %.2f s) with "
                 "its defaults (no job-data check: the same work as retryJobs) and with validate_data=true "
                 "(%.3f s, throughput %.2fx Node, per-run ratios %s); runbook per-job shell on %d: %.2f s (%.0f jobs/s, "
                 "ours %.0f jobs/s = %.0fx); our peak RSS %d KB at %d jobs, %d KB at %d jobs"
                 % (N_BIG, runs, wall_s, checked_s, node_s / checked_s,
                    ", ".join("%.2f" % r for r in ratios_checked), N_SHELL, shell, N_SHELL / shell, N_BIG / ours_s,
                    (N_BIG / ours_s) / (N_SHELL / shell), rss_small, N_BIG // 10, rss_big, N_BIG)),
        "ours_s": round(ours_s, 3),
        "reference_s": round(node_s, 3),
        "ratio_ours_over_reference": round(ours_s / node_s, 2) if node_s else None,
        "throughput_ours_over_node": round(node_s / ours_s, 2) if ours_s else None,
        "ours_task_wall_s": round(wall_s, 3),
        "ours_validated_s": round(checked_s, 3),
        "throughput_validated_over_node": round(node_s / checked_s, 2) if checked_s else None,
        "per_run_throughput_over_node": [round(r, 2) for r in ratios],
        "per_run_validated_throughput_over_node": [round(r, 2) for r in ratios_checked],
        "server_script_calls": srv,
        "shell_s": round(shell, 3),
        "shell_jobs": N_SHELL,
        "rss_kb": {str(N_BIG // 10): rss_small, str(N_BIG): rss_big},
        "target": "throughput >= 1.0x Node retryJobs, RSS flat in the number of jobs",
        "target_met": ours_s <= node_s and rss_big < rss_small * 1.5,
        "target_met_with_data_check": checked_s <= node_s and rss_big < rss_small * 1.5,
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(bench_anchor_retry(), indent=2))
