#!/usr/bin/env python3
"""Benchmarks: our playbooks beside the runbook's shell way (and reference tools), measured in the same run.

Usage: .venv/bin/python bench/run.py [entry ...]   (entries: diagnose)   -- needs the lab up (make bench does it).
Prints medians and ratios; writes bench/out/results.json. Benchmarks are never asserted by tests.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
INVENTORY = os.path.join(ROOT, "lab", "inventory.yml")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def env():
    e = dict(os.environ)
    e["PATH"] = BIN + os.pathsep + e.get("PATH", "")
    e["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    return e


def timed(cmd, shell=False):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True, env=env(), cwd=ROOT)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("benchmark command failed (%d): %s\n%s%s" % (proc.returncode, cmd, proc.stdout[-2000:], proc.stderr[-2000:]))
    return dt


def median_of(cmd, shell=False):
    timed(cmd, shell)  # warm-up (page cache, Python bytecode)
    return statistics.median(timed(cmd, shell) for _ in range(RUNS))


def lab_vars():
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


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


ENTRIES = {"diagnose": bench_diagnose}


def main(argv):
    names = argv or list(ENTRIES)
    results = []
    for name in names:
        r = ENTRIES[name]()
        results.append(r)
        print("%-10s ours %.3f s | reference %.3f s | ratio %sx | %s: %s" % (
            r["entry"], r["ours_s"], r["reference_s"], r["ratio_ours_over_reference"], r["target"],
            "met" if r["target_met"] else "NOT met"))
        print("           (%s; median of %d runs)" % (r["what"], r["runs"]))
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
