"""Bench entry alert_loop (issue 19, Speed): fault -> alert firing -> delivered -> response done -> resolved, per
fault, through the real loop (the lab's Prometheus + Alertmanager, `p3lab up --monitoring`, and ansible-rulebook
running the shipped rulebook with the four responses allowed), beside the same fault left alone (self-healing:
Redis' own failover, supervisor - bounded by BENCH_ALERT_NOTHING_S, default 60) and beside a human following the
runbook after a scheduled drift_check every 5 minutes (expected detection 150 s: the mean wait for the next run,
plus drift_check's measured wall time, plus the same response playbook's measured time). Ratios in the same run.

    .venv/bin/python bench/run.py alert_loop        (run only when named; needs `p3lab up --monitoring`)

BENCH_ALERT_FAULTS (comma list) selects faults. Numbers on a loaded 2-core machine are dominated by ansible's per-task
cost (docs/monitoring.md).
"""
import os
import subprocess
import sys
import tempfile
import time

from benchlib import BIN, INVENTORY, ROOT, env, lab

sys.path.insert(0, os.path.join(ROOT, "lab"))
from p3lablib import monitoring as mon  # noqa: E402
from p3lablib import notify  # noqa: E402
from p3lablib import rediscluster  # noqa: E402
from p3lablib.common import Lab, wait_until as _poll  # noqa: E402

FAULTS = {"mesh-down": "mesh_peer_count_low", "db-exhaustion": "database_connection_high", "app-down": "app_down",
          "redis-master-down": "redis_node_down"}
SCHEDULE_S = 300  # the scheduled drift_check's period




def _firing(L, alert):
    return [a for a in (mon.alerts(L) or {}).get(alert, []) if a["state"] == "firing"]


def _acted(L, alert, seen):
    recs = [r["body"]["p3_eda"] for r in notify.read_records(notify.records_file(L)) if isinstance(r.get("body"), dict)
            and (r["body"].get("p3_eda") or {}).get("alert", {}).get("name") == alert]
    return [n for n in recs[seen:] if n.get("decision") == "act"], len(recs)


def _quiet(L):
    lab("heal")
    _poll(lambda: mon.alerts(L) == {}, 60)


def loop_round(L, fault, alert):
    _quiet(L)
    _, seen = _acted(L, alert, 0)
    t0 = time.monotonic()
    lab("fault", fault)
    row = {"fault": fault, "alert": alert, "injected_s": round(time.monotonic() - t0, 1)}
    row["firing_s"] = _poll(lambda: _firing(L, alert) and round(time.monotonic() - t0, 1), 60)
    row["delivered_s"] = _poll(lambda: [a for a in (mon.am_alerts(L) or []) if a["labels"]["alertname"] == alert]
                               and round(time.monotonic() - t0, 1), 60)
    acted = _poll(lambda: _acted(L, alert, seen)[0], 300, 1)
    row["response_done_s"] = round(time.monotonic() - t0, 1) if acted else None
    row["response_ok"] = bool(acted and acted[0].get("ok"))
    if fault == "redis-master-down":
        lab("heal")  # the killed node is restarted by the lab (a human, systemd); then the alert resolves
    row["resolved_s"] = _poll(lambda: not (mon.alerts(L) or {}).get(alert) and round(time.monotonic() - t0, 1), 120)
    return row


def _cluster_serves(L):
    """Every slot served by a live master: cluster_state ok seen from a live node, and every master holding slots
    answers PING (right after the kill the cluster still lists the dead master until cluster-node-timeout)."""
    prefer = next((p for p in L.redis_ports if rediscluster.ping(p)), None)
    if prefer is None:
        return False
    port, nodes = rediscluster.view(L, prefer=prefer)
    try:
        state = rediscluster.cluster_info(port, timeout=0.7).get("cluster_state")
    except Exception:  # noqa: BLE001
        return False
    owners = [n for n in nodes or [] if n["role"] == "master" and n["slots"]]
    return state == "ok" and len(owners) == 3 and all(not n["failing"] and rediscluster.ping(n["port"]) for n in owners)


def left_alone(L, fault, alert, limit):
    """(seconds until the alert resolves with nobody acting, seconds until the service is back by itself) - None:
    not within limit. The service: for redis-master-down Redis' own failover (every slot on a live master again; the
    alert stays until the node is restarted); for the others the alert resolving is the service back."""
    _quiet(L)
    t0 = time.monotonic()
    lab("fault", fault)
    service = None
    if fault == "redis-master-down":
        service = _poll(lambda: _cluster_serves(L) and round(time.monotonic() - t0, 1), limit, 0.5)
    _poll(lambda: _firing(L, alert), 60)
    resolved = _poll(lambda: not (mon.alerts(L) or {}).get(alert) and round(time.monotonic() - t0, 1),
                     max(1.0, limit - (time.monotonic() - t0)), 1)
    return resolved, (service if fault == "redis-master-down" else resolved)


def drift_check_seconds():
    t0 = time.monotonic()
    subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, "playbooks/drift_check.yml",
                    "-e", "p3_report_dir=%s" % tempfile.mkdtemp(prefix="bench-drift-")], cwd=ROOT, env=env(),
                   capture_output=True, text=True, timeout=600, check=False)
    return round(time.monotonic() - t0, 1)


def bench_alert_loop():
    L = Lab()
    if not L.monitoring:
        raise SystemExit("alert_loop needs the lab's monitoring: lab/p3lab up --monitoring")
    faults = [f.strip() for f in os.environ.get("BENCH_ALERT_FAULTS", ",".join(FAULTS)).split(",") if f.strip()]
    limit = float(os.environ.get("BENCH_ALERT_NOTHING_S", "60"))
    work = tempfile.mkdtemp(prefix="bench-alert-loop-")
    loop_vars = {"p3_alert_eda_allow": [FAULTS[f] for f in faults],
                 "p3_alert_eda_state_file": os.path.join(work, "eda-guard.json"),
                 "p3_report_dir": os.path.join(work, "reports"),
                 "p3_alert_eda_playbook_args": ["-e", "p3_db_min_age_seconds=1"]}
    rows = []
    with mon.Rulebook(L, work, loop_vars):
        for f in faults:
            rows.append(loop_round(L, f, FAULTS[f]))
    drift_s = drift_check_seconds()
    for row in rows:
        row["left_alone_s"], row["left_alone_service_s"] = left_alone(L, row["fault"], row["alert"], limit)
        response = (row["response_done_s"] or 0) - (row["delivered_s"] or 0)
        row["human_s"] = round(SCHEDULE_S / 2.0 + drift_s + response, 1)
        done = row["response_done_s"]
        row["ratio_human_over_loop"] = round(row["human_s"] / done, 1) if done else None
    _quiet(L)
    print("alert_loop: seconds from the fault (loop: Prometheus -> Alertmanager -> ansible-rulebook -> response)")
    print("%-18s %7s %9s %9s %8s %9s %13s %12s %9s %11s" % (
        "fault", "firing", "delivered", "response", "resolved", "alone", "alone service", "human (5min)",
        "human/loop", "response ok"))
    for r in rows:
        print("%-18s %7s %9s %9s %8s %9s %13s %12s %9s %11s" % (
            r["fault"], r["firing_s"], r["delivered_s"], r["response_done_s"], r["resolved_s"],
            r["left_alone_s"] if r["left_alone_s"] is not None else "> %d" % limit,
            r["left_alone_service_s"] if r["left_alone_service_s"] is not None else "> %d" % limit, r["human_s"],
            r["ratio_human_over_loop"], r["response_ok"]))
    print("  alone service: redis-master-down - every slot on a live master again by Redis' own failover (the alert "
          "stays until the node is restarted); the others - the alert resolved")
    print("  human = %d s (mean wait for the next 5-minute drift_check) + drift_check %.1f s + the same response"
          % (SCHEDULE_S // 2, drift_s))
    return {"entry": "alert_loop", "what": "fault -> alert -> response -> resolved via the real loop, vs left alone, "
            "vs a 5-minute drift_check and a human", "rows": rows, "drift_check_s": drift_s, "printed": True}
