#!/usr/bin/env python3
"""Chaos soak (issue 17 §4): K rounds of seeded random fault combinations from the lab's faults under client load,
each followed by playbooks/recover_all.yml with the gates its faults need; after each round the invariants of
lab/p3lablib/invariants.py are checked on real state (acknowledged Redis writes, anchor jobs and receipts on chain,
sessions, the app serving). Bounded: every round has a total deadline and the run stops by itself.

Usage (needs the lab up; P3LAB_DIR / P3LAB_BASE_PORT select the lab, as for the tests):
    .venv/bin/python bench/chaos.py [--rounds K] [--seed S] [--round R] [--max-faults N] [--no-reference]
`--seed S --round R` replays one round exactly (the round's faults depend on (S, R) only).
Prints rounds survived, MTTR p50/p95/max per fault kind, every breach with the seed and round that replay it, and
(unless --no-reference) what heals by itself measured in the same run beside ours, with the ratios.
"""
import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, INVENTORY, ROOT, env, health_ok, lab  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "lab"))
from p3lablib import invariants  # noqa: E402
from p3lablib.common import Lab  # noqa: E402
from p3lablib.load import Load  # noqa: E402

# The lab's faults a chaos round draws from (lab/p3lablib/faults.py), in injection order: every fault but app-down
# needs the app answering to inject, so app-down comes last. anchor-backlog is left out: it pauses the worker
# through a lab-only hook no recovery is meant to undo.
POOL = ("db-exhaustion", "redis-master-down", "redis-slots-uncovered", "sessions-corrupt", "mesh-down",
        "anchor-worker-down", "wallet-empty", "app-down")
# pairs the lab cannot inject together: both Redis faults pick the lowest-port master; wallet-empty needs a worker
# to fail its jobs
CONFLICTS = (frozenset(("redis-master-down", "redis-slots-uncovered")),
             frozenset(("wallet-empty", "anchor-worker-down")))
# the gates recover_all needs for each fault (the runbook's own choices; everything else is the default).
# redis-master-down needed p3_anchor_min_workers: 1 until the lab app named every connection of its worker (a node
# its cluster client met after the worker started had unnamed connections, so the final diagnose said "anchor worker
# absent" while the worker took jobs; tests/integration/test_anchor_failover.py): it runs on the defaults now.
GATES = {"db-exhaustion": {"p3_db_min_age_seconds": 1}}
PAUSE_FOR = ("db-exhaustion",)
ROUND_DEADLINE = 1800.0  # seconds: one round (inject + recover + invariants), however it goes
# recover_all took 160-420 s under load at load average 7-20 on 2 cores, but more than 900 s (two faults, client
# load) in a local CI at load 12-14 with six other passes: a hang guard, not a measure (MTTR is measured per round)
RECOVER_TIMEOUT = 1200.0


def plan_round(seed, rnd, max_faults=2, pool=POOL):
    """The faults of round rnd of seed: 1..max_faults distinct, compatible faults in injection order. Depends on
    (seed, rnd) only, so `--seed S --round R` replays it."""
    rng = random.Random("p3chaos:%d:%d" % (seed, rnd))
    k = rng.randint(1, max(1, min(max_faults, len(pool))))
    picked = []
    for name in rng.sample(list(pool), len(pool)):
        if len(picked) == k:
            break
        if any(frozenset((name, p)) in CONFLICTS for p in picked):
            continue
        picked.append(name)
    return sorted(picked, key=pool.index)


def gates_for(faults):
    out = {}
    for f in faults:
        out.update(GATES.get(f, {}))
    return out


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(math.ceil(p / 100.0 * len(s))) - 1))]


def recover_all(extravars, timeout=RECOVER_TIMEOUT):
    """ansible-playbook recover_all.yml; returns (rc or None on timeout, seconds, last lines of its output)."""
    report_dir = tempfile.mkdtemp(prefix="chaos-reports-")
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/recover_all.yml",
           "-e", json.dumps(dict(extravars, p3_report_dir=report_dir))]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    return rc, time.monotonic() - t0, out


def failed_tasks(out, limit=3):
    """The `fatal:`/`failed:` lines of an ansible-playbook output, shortened (what a breach line names)."""
    lines = [ln.strip() for ln in out.splitlines() if ln.startswith(("fatal:", "failed:"))]
    return [ln[:300] for ln in lines[:limit]]


def run_round(lb, seed, rnd, max_faults, rate, tail_s=3.0, log=print):
    """One round on a healed lab: load, faults, recover_all, more load, invariants. Returns its record."""
    faults = plan_round(seed, rnd, max_faults)
    rec = {"seed": seed, "round": rnd, "faults": faults, "breaches": []}
    deadline = time.monotonic() + ROUND_DEADLINE
    lab("heal")
    from_block = invariants.chain_block(lb)
    ledger = os.path.join(lb.dir, "chaos", "ledger-%d-%d.jsonl" % (seed, rnd))
    if os.path.exists(ledger):
        os.unlink(ledger)
    run_id = "c%dr%d%s" % (seed, rnd, os.urandom(2).hex())
    # bounded by the round's deadline, not by an operation count the round would outlast
    ld = Load(lb, seconds=min(ROUND_DEADLINE, 890), rate=rate, ledger=ledger, run_id=run_id,
              max_ops=min(100000, int(rate * ROUND_DEADLINE) + 1))
    ld.start()
    try:
        time.sleep(2.0)  # acknowledged work before the faults
        for f in faults:
            # the app's pool keeps its connections while the load keeps it busy, so a leak takes the database only
            # in a traffic dip: the load pauses while db-exhaustion is injected (at most its 20 s symptom wait)
            if f in PAUSE_FOR:
                ld.pause()
            try:
                lab("fault", f)
            except SystemExit as e:
                rec["breaches"].append("inject %s: %s" % (f, str(e).strip().splitlines()[-1][:200]))
            finally:
                ld.resume()
        t_injected = time.monotonic()
        rc, took, out = recover_all(gates_for(faults), timeout=max(30.0, min(RECOVER_TIMEOUT,
                                                                              deadline - time.monotonic())))
        rec["mttr_s"] = round(time.monotonic() - t_injected, 2)
        rec["recover_rc"] = rc
        rec["recover_log"] = ledger[:-len(".jsonl")] + ".recover.log"
        with open(rec["recover_log"], "w") as fh:
            fh.write(out)
        if rc != 0:
            rec["breaches"].append("recover_all %s after %.0f s: %s" % (
                "did not end" if rc is None else "failed (rc %d)" % rc, took, " | ".join(failed_tasks(out)) or
                out.strip().splitlines()[-1:]))
        time.sleep(tail_s)  # the load keeps going on the recovered system
    finally:
        ld.stop()
    res = invariants.check(lb, ledger, run_id, from_block=from_block,
                           drain_timeout=max(10.0, min(60.0, deadline - time.monotonic())))
    rec["breaches"] += res["breaches"]
    rec["evidence"] = res["evidence"]
    rec["survived"] = not rec["breaches"]
    log("round %d (seed %d) %-52s MTTR %6.1f s  %s" % (rnd, seed, "+".join(faults), rec.get("mttr_s", -1),
                                                        "ok" if rec["survived"] else "BREACH"))
    for b in rec["breaches"]:
        log("    breach: %s  (replay: bench/chaos.py --seed %d --round %d)" % (b, seed, rnd))
    return rec


# ---------------------------------------------------------------------------------------------------------------
# what heals by itself, in the same run

def _served_everywhere(lb):
    from p3lablib import rediscluster

    _, nodes = rediscluster.view(lb)
    return bool(nodes) and all(rediscluster.slot_owner(nodes, s) is not None for s in range(0, 16384, 97)) and \
        all(n.get("cluster_state") in (None, "ok") for n in nodes)


def reference_redis_failover(lb, limit=90.0):
    """Redis Cluster's own failover: a master SIGKILLed, nothing else done; seconds until /health is 200 again (the
    replica took over at cluster-node-timeout)."""
    lab("heal")
    t0 = time.monotonic()
    lab("fault", "redis-master-down")  # returns once /health lists redis
    while time.monotonic() - t0 < limit:
        if health_ok(lb.app_url + "/health"):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def reference_supervisor_restart(lb, limit=60.0):
    """A supervisor autorestart (the lab's programs have autorestart=false so that the collection's restart is
    what is measured): the app SIGKILLed, then started again at once as autorestart would; seconds until /health
    200."""
    from p3lablib import supervisor

    lab("heal")
    t0 = time.monotonic()
    lab("fault", "app-down")
    supervisor.ctl(lb, "start", supervisor.app_program(lb))
    while time.monotonic() - t0 < limit:
        if health_ok(lb.app_url + "/health"):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def reference_runbook_redis(lb, limit=90.0):
    """The runbook's Redis Cluster Partition commands followed literally after a master is SIGKILLed: `redis-cli -u
    $REDIS_URL CLUSTER NODES | grep fail`, `CLUSTER FAILOVER`, `CLUSTER FIX`, against REDIS_URL = the app's first
    node. CLUSTER FAILOVER sent to a master is refused ("You should send CLUSTER FAILOVER to a replica"), to the
    dead node it cannot connect, and CLUSTER FIX is no Redis command: the literal runbook heals exactly when Redis
    Cluster's own failover does. Returns (seconds until /health 200, what the commands answered)."""
    from p3lablib.common import REDIS_PASSWORD

    lab("heal")
    t0 = time.monotonic()
    lab("fault", "redis-master-down")
    url = "redis://:%s@%s" % (REDIS_PASSWORD, lb.redis_nodes[0])
    answers = []
    for cmd in (["CLUSTER", "NODES"], ["CLUSTER", "FAILOVER"], ["CLUSTER", "FIX"]):
        proc = subprocess.run(["redis-cli", "--no-auth-warning", "-u", url] + cmd, capture_output=True, text=True,
                              timeout=10, check=False)
        out = (proc.stdout + proc.stderr).strip()
        if cmd[1] == "NODES":
            out = "%d lines with fail" % sum(1 for line in out.splitlines() if "fail" in line)
        answers.append("%s: %s" % (" ".join(cmd), out.splitlines()[0][:90] if out else "(nothing)"))
    while time.monotonic() - t0 < limit:
        if health_ok(lb.app_url + "/health"):
            return time.monotonic() - t0, answers
        time.sleep(0.1)
    return None, answers


def reference_runbook_database():
    """The runbook's commands followed literally for db-exhaustion (bench/run.py: its psql terminate, corrected, then
    a supervisorctl restart and a health wait): seconds until /health 200."""
    from run import fault_to_healthy, runbook_recover_database

    cmd, health_url = runbook_recover_database()
    return fault_to_healthy(cmd, health_url, shell=True)[1]


# ---------------------------------------------------------------------------------------------------------------

def summary(records, refs, log=print):
    per = {}
    for r in records:
        if "mttr_s" not in r or r.get("recover_rc") != 0:
            continue
        for f in r["faults"]:
            per.setdefault(f, []).append(r["mttr_s"])
    survived = sum(1 for r in records if r["survived"])
    log("")
    log("rounds survived: %d of %d" % (survived, len(records)))
    log("MTTR under load (fault injected -> recover_all verified all green), per fault kind (rounds it was in):")
    table = {}
    for f in sorted(per):
        v = per[f]
        table[f] = {"n": len(v), "p50": round(statistics.median(v), 1), "p95": round(percentile(v, 95), 1),
                    "max": round(max(v), 1)}
        log("  %-24s n=%-2d p50 %6.1f s  p95 %6.1f s  max %6.1f s" % (f, len(v), table[f]["p50"], table[f]["p95"],
                                                                    table[f]["max"]))
    ratios = {}
    for kind, measured in refs.items():
        ours = table.get(kind, {}).get("p50")
        for ref_name, seconds in measured:
            if seconds is None:
                log("  reference %s: did not heal within its bound" % ref_name)
                continue
            ratio = round(ours / seconds, 2) if ours else None
            ratios.setdefault(kind, {})[ref_name] = ratio
            log("  %-24s ours p50 %s s vs %s %.1f s: ratio ours/reference %s" % (
                kind, ours if ours is not None else "(not drawn)", ref_name, seconds, ratio))
    breaches = [(r["seed"], r["round"], b) for r in records for b in r["breaches"]]
    log("breaches: %d" % len(breaches))
    for seed, rnd, b in breaches:
        log("  --seed %d --round %d: %s" % (seed, rnd, b))
    return {"rounds": len(records), "survived": survived, "mttr": table, "references":
            dict((k, [{"what": n, "seconds": round(s, 2) if s is not None else None} for n, s in v])
                 for k, v in refs.items()),
            "ratios": ratios, "breaches": len(breaches)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds (1-50; default 5)")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--round", type=int, default=None, help="replay only this round of --seed")
    p.add_argument("--max-faults", type=int, default=2, help="faults per round at most (1-3; default 2)")
    p.add_argument("--rate", type=float, default=10.0, help="load: operations per second per stream (default 10)")
    p.add_argument("--no-reference", action="store_true", help="skip the self-healing reference measurements")
    p.add_argument("--json", default=None, help="also write the records and the summary to this file")
    a = p.parse_args(argv)
    if not 1 <= a.rounds <= 50 or not 1 <= a.max_faults <= 3:
        p.error("--rounds must be 1-50 and --max-faults 1-3")
    lb = Lab()
    rounds = [a.round] if a.round is not None else list(range(a.rounds))
    records = [run_round(lb, a.seed, r, a.max_faults, a.rate) for r in rounds]
    refs = {}
    if not a.no_reference:
        literal, answers = reference_runbook_redis(lb)
        print("the runbook's Redis commands answered: %s" % "; ".join(answers))
        refs["redis-master-down"] = [
            ("Redis Cluster's own failover (cluster-node-timeout)", reference_redis_failover(lb)),
            ("the runbook's commands literally (CLUSTER FAILOVER, CLUSTER FIX to REDIS_URL)", literal)]
        # the runbook's app step is "restart the application" (npm run dev): a start at once, as autorestart does
        refs["app-down"] = [("a supervisor autorestart = the runbook's restart (start at once)",
                             reference_supervisor_restart(lb))]
        refs["db-exhaustion"] = [("the runbook's commands (psql terminate + restart)", reference_runbook_database())]
    lab("heal")
    out = summary(records, refs)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"records": records, "summary": out}, fh, indent=1)
    return 0 if out["breaches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
