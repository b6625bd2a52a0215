#!/usr/bin/env python3
"""Benchmarks: our playbooks beside the runbook's shell way (and reference tools), measured in the same run.

Usage: .venv/bin/python bench/run.py [entry ...]   (entries: diagnose, recover_database, ...)   -- needs the lab up
(upstream_recovery runs only when named, against the upstream lab: see bench/upstream_recovery.py)
(make bench does it; P3LAB_DIR / P3LAB_BASE_PORT select another lab, as for the tests).
Prints medians and ratios; writes bench/out/results.json. Benchmarks are never asserted by tests.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BIN, INVENTORY, ROOT, RUNS, env, health_ok, lab, lab_vars, median_of  # noqa: E402


def bench_diagnose():
    v = lab_vars()
    report_dir = tempfile.mkdtemp(prefix="bench-reports-")
    ours = median_of([os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/diagnose.yml",
                      "-e", "p3_report_dir=%s" % report_dir])
    host, port = v["p3_redis_nodes"][0].split(":")
    # The runbook's five quick-diagnostics commands, run the same way (one after the other, from a shell).
    runbook = " && ".join([
        "curl -s -m 5 -o /dev/null %s/health" % v["p3_app_url"],
        "psql '%s' -Atc 'SELECT 1;' >/dev/null" % v["p3_database_url"],
        "REDISCLI_AUTH='%s' redis-cli -c -h %s -p %s PING >/dev/null" % (v["p3_redis_password"], host, port),
        "curl -s -m 5 -o /dev/null %s/pulse/status" % v["p3_app_url"],
        "curl -s -m 5 -o /dev/null %s/metrics" % v["p3_app_url"],
    ])
    ref = median_of(runbook, shell=True)
    return {
        "entry": "diagnose",
        "what": "diagnose.yml wall time on a healthy lab vs the runbook's 5 quick-diagnostics shell commands",
        "ours_s": round(ours, 3),
        "reference_s": round(ref, 3),
        "ratio_ours_over_reference": round(ours / ref, 1) if ref else None,
        "target": "ours <= 2.5 s",
        "target_met": ours <= 2.5,
        "runs": RUNS,
    }


def fault_to_healthy(cmd, health_url, shell=False):
    """Inject db-exhaustion, then time cmd; returns (cmd wall time, time until /health first answered 200)."""
    lab("heal")
    lab("fault", "db-exhaustion")
    if health_ok(health_url):
        raise SystemExit("db-exhaustion did not break the app's health")
    time.sleep(1.2)  # the policy below selects statements older than 1 s
    first = {}
    done = threading.Event()

    def watch(t0):
        while not done.is_set():
            if health_ok(health_url):
                first.setdefault("t", time.perf_counter() - t0)
                return
            time.sleep(0.2)

    t0 = time.perf_counter()
    watcher = threading.Thread(target=watch, args=(t0,), daemon=True)
    watcher.start()
    proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True, env=env(), cwd=ROOT)
    dt = time.perf_counter() - t0
    done.set()
    watcher.join(2)
    if proc.returncode != 0:
        raise SystemExit("benchmark command failed (%d): %s\n%s%s" % (proc.returncode, cmd, proc.stdout[-2000:],
                                                                     proc.stderr[-2000:]))
    if not health_ok(health_url):
        raise SystemExit("the app is not healthy after: %s" % cmd)
    return dt, first.get("t", dt)


def runbook_recover_database():
    """(shell command, health URL): the runbook's database recovery followed literally, as far as it runs here."""
    v = lab_vars()
    with open(INVENTORY) as f:
        app = yaml.safe_load(f)["all"]["children"]["p3_app"]["hosts"]
    host = app[sorted(app)[0]]
    health_url = host["p3_app_health_url"]
    # The runbook's recovery with its SQL corrected (no `duration` column) and its restart adapted to the lab's
    # process manager, then a wait for the health endpoint, from a shell.
    terminate_sql = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                     "AND pid <> pg_backend_pid() AND state = 'active' AND now() - query_start > interval '1 second'")
    ref_cmd = " && ".join([
        "psql '%s' -Atc \"%s\" >/dev/null" % (v["p3_database_url"], terminate_sql),
        "%s -c %s restart %s >/dev/null" % (host["p3_supervisorctl"], host["p3_supervisor_conf"], host["p3_supervisor_program"]),
        "until curl -sf -m 1 -o /dev/null %s; do sleep 0.1; done" % health_url,
    ])
    return ref_cmd, health_url


def bench_recover_database():
    ref_cmd, health_url = runbook_recover_database()
    report_dir = tempfile.mkdtemp(prefix="bench-reports-")
    ours_cmd = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/recover_database.yml",
                "-e", "p3_report_dir=%s" % report_dir, "-e", "p3_db_min_age_seconds=1"]
    ours, ours_healthy, ref = [], [], []
    try:
        fault_to_healthy(ours_cmd, health_url)  # warm-up
        for _ in range(RUNS):
            dt, healthy_at = fault_to_healthy(ours_cmd, health_url)
            ours.append(dt)
            ours_healthy.append(healthy_at)
            ref.append(fault_to_healthy(ref_cmd, health_url, shell=True)[0])
    finally:
        lab("heal")
    o, r = statistics.median(ours), statistics.median(ref)
    return {
        "entry": "recover_database",
        "what": ("db-exhaustion -> app healthy: recover_database.yml to its verified end (app healthy after %.2f s) "
                 "vs the runbook's corrected psql terminate + supervisorctl restart + health wait"
                 % statistics.median(ours_healthy)),
        "ours_s": round(o, 3),
        "ours_app_healthy_s": round(statistics.median(ours_healthy), 3),
        "reference_s": round(r, 3),
        "ratio_ours_over_reference": round(o / r, 1) if r else None,
        "target": "ours <= 5 s",
        "target_met": o <= 5.0,
        "runs": RUNS,
    }


ENTRIES = {"diagnose": bench_diagnose, "recover_database": bench_recover_database}
from anchor_retry import bench_anchor_retry  # noqa: E402  (entry in its own file)
ENTRIES["anchor_retry"] = bench_anchor_retry
from session_purge import bench_session_purge  # noqa: E402  (entry in its own file)
ENTRIES["session_purge"] = bench_session_purge
from recover_redis import bench_recover_redis  # noqa: E402  (entry in its own file)
ENTRIES["recover_redis"] = bench_recover_redis
from upstream_recovery import bench_upstream_recovery  # noqa: E402  (entry in its own file)
ENTRIES["upstream_recovery"] = bench_upstream_recovery
from alert_loop import bench_alert_loop  # noqa: E402  (entry in its own file)
ENTRIES["alert_loop"] = bench_alert_loop
# Entries that need a lab of their own (the upstream lab) or the lab's monitoring (alert_loop): run only when named.
ONLY_WHEN_NAMED = {"upstream_recovery", "alert_loop"}


def print_table(r):
    """An entry with rows (upstream_recovery): one line per fault, seconds to "works again" per way."""
    print("%s: %s" % (r["entry"], r["what"]))
    print("%-18s %12s %12s %12s %10s" % ("fault", "playbook s", "runbook s", "nothing s", "pb/runbook"))
    for row in r["rows"]:
        print("%-18s %12s %12s %12s %10s" % (row["fault"], row["playbook"]["seconds"], row["runbook"]["seconds"],
                                             row["nothing"]["seconds"], row["ratio_playbook_over_runbook"]))
    for row in r["rows"]:
        for how in ("playbook", "runbook", "nothing"):
            print("  %s %s: %s" % (row["fault"], how, row[how]["detail"]))


def main(argv):
    names = argv or [n for n in ENTRIES if n not in ONLY_WHEN_NAMED]
    results = []
    for name in names:
        r = ENTRIES[name]()
        results.append(r)
        if r.get("printed"):
            continue
        if "rows" in r:
            print_table(r)
            continue
        print("%-16s ours %.3f s | reference %.3f s | ratio %sx | %s: %s" % (
            r["entry"], r["ours_s"], r["reference_s"], r["ratio_ours_over_reference"], r["target"],
            "met" if r["target_met"] else "NOT met"))
        print("                 (%s; median of %d runs)" % (r["what"], r["runs"]))
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
