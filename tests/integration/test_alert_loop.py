"""Issue 19: the exported rules on a real Prometheus + Alertmanager fed by real exporters (`p3lab monitoring-up`),
and the closed loop through the collection's EDA source and rulebook (real ansible-rulebook).

Pass integration-d. The module fixture adds the monitoring programs to the pass's session lab and removes them at
the end (`monitoring-down`), so the other tests of the pass see the lab as before. Every assertion reads real state:
Prometheus' and Alertmanager's HTTP APIs, the lab's services (p3lab status, supervisor), the rulebook's records.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from p3harness import ROOT, lab, lab_fault, lab_status

sys.path.insert(0, os.path.join(ROOT, "lab"))
from p3lablib import monitoring as mon  # noqa: E402
from p3lablib.common import Lab, http, wait_until as poll  # noqa: E402

PROMQL_WORDS = {"sum", "rate", "min", "max", "by", "on", "clamp_min", "and", "or", "unless", "count", "avg",
                "ignoring", "without", "group_left", "group_right", "e"}




def prom_alerts(L):
    """{alertname: [alert]} in Prometheus now (pending and firing)."""
    out = mon.alerts(L)
    assert out is not None, "prometheus %s does not answer" % mon.urls(L)["prometheus"]
    return out


def firing(L, name):
    return [a for a in prom_alerts(L).get(name, []) if a["state"] == "firing"]


@pytest.fixture(scope="module")
def monitored(lab_up):
    lab("heal", timeout=240)
    L = Lab()
    out = json.loads(lab("monitoring-up", "--webhook-url", mon.urls(L)["eda_webhook"], timeout=300).splitlines()[-1])
    L = Lab()
    assert L.monitoring and out["alerts"], out
    yield L
    lab("monitoring-down", timeout=120)
    assert not Lab().monitoring


def test_prometheus_scrapes_every_target_and_the_rules_use_real_metric_names(monitored):
    L = monitored
    # every target answered: the app, all six Redis nodes through the one exporter, PostgreSQL
    targets = poll(lambda: [t for t in mon.targets(L) if t["health"] == "up"] if all(
        t["health"] == "up" for t in mon.targets(L)) else None, 20)
    assert targets, mon.targets(L)
    assert sorted(t["instance"] for t in targets if t["job"] == "redis") == sorted(mon.redis_targets(L))
    assert [t["job"] for t in targets].count("p3-app") == 1 and [t["job"] for t in targets].count("postgres") == 1
    # the rules Prometheus evaluates are the exported file's, all healthy, none firing on a healthy lab
    rules = yaml.safe_load(open(mon.Paths(L).rules).read())["groups"][0]["rules"]
    code, body = http("GET", mon.urls(L)["prometheus"] + "/api/v1/rules?type=alert", timeout=2)
    loaded = [r for g in body["data"]["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in rules)
    assert poll(lambda: all(r["health"] == "ok" for r in (
        r for g in http("GET", mon.urls(L)["prometheus"] + "/api/v1/rules?type=alert", timeout=2)[1]["data"]["groups"]
        for r in g["rules"])), 10)
    assert not prom_alerts(L), prom_alerts(L)
    # every metric name a rule reads is one the app / redis_exporter / postgres_exporter really expose here
    code, body = http("GET", mon.urls(L)["prometheus"] + "/api/v1/label/__name__/values", timeout=5)
    have = set(body["data"])
    used = set()
    for r in rules:
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\b(by|on|without|ignoring)\s*\([^)]*\)', " ", r["expr"])
        used |= set(w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS)
    assert used and not (used - have), sorted(used - have)


def test_a_bad_rules_file_is_refused_and_prometheus_keeps_its_rules(monitored, tmp_path):
    L = monitored
    bad = tmp_path / "bad.rules.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: broken\n        expr: sum(rate(x[5m])\n")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "lab", "p3lab"), "monitoring-up", "--rules", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(bad) in proc.stderr and "parse error" in proc.stderr and "Traceback" not in proc.stderr
    assert "app_down" in mon.rules_loaded(L) and "broken" not in mon.rules_loaded(L)


# ---------------------------------------------------------------------------------------------- the closed loop
ALLOW = ["app_down", "database_connection_high", "redis_node_down", "mesh_peer_count_low"]


@pytest.fixture(scope="module")
def loop(monitored, tmp_path_factory):
    """Real ansible-rulebook running the shipped rulebook (extensions/eda/rulebooks/p3_recovery.yml), its source
    listening where the lab's Alertmanager posts (base+57) with the lab's webhook token (monitoring.Rulebook); the
    four responses are allowed to act."""
    from p3lablib import notify

    L = monitored
    d = tmp_path_factory.mktemp("loop")
    loop_vars = {
        "p3_alert_eda_allow": ALLOW,
        "p3_alert_eda_state_file": str(d / "eda-guard.json"),
        "p3_report_dir": str(d / "reports"),
        # the fault's leaked backends are seconds old; the role's default (the runbook's 5 minutes) spares them
        "p3_alert_eda_playbook_args": ["-e", "p3_db_min_age_seconds=1"],
    }
    with mon.Rulebook(L, str(d), loop_vars) as rb:
        yield {"lab": L, "dir": d, "rulebook": rb, "records": notify.records_file(L)}


def notifications(loop, name):
    from p3lablib import notify

    return [r["body"]["p3_eda"] for r in notify.read_records(loop["records"])
            if isinstance(r.get("body"), dict) and (r["body"].get("p3_eda") or {}).get("alert", {}).get("name") == name]


def _app_restarted(before):
    def check(st, fault):
        return st["app"]["healthy"] and st["services"]["app"]["pid"] not in (None, before)
    return check


def _db_free(st, fault):
    return st["db"]["leaked"] == 0 and st["app"]["healthy"]


def _mesh_back(st, fault):
    return st["mesh"]["peers"] == Lab().peers and st["mesh"]["relay"] == "up"


def _slots_served(st, fault):
    """Every slot served by a live master: the killed node owns no slot any more (its replica was promoted, by
    the response or by Redis itself), 3 masters, cluster ok."""
    r = st["redis"]
    return (r["cluster_state"] == "ok" and r["masters"] == 3 and r["slots_assigned"] == 16384
            and not any(n["address"] == fault["node"] and n["role"] == "master" and n["slots"] for n in r["nodes"]))


# make test runs the loop for redis-master-down and db-exhaustion (a node kill and a destructive response); make test-full
# for every fault (the same loop: alert, rulebook, response, resolved).
EXTENDED = ("mesh-down", "app-down")
CASES = {
    # fault: (alert, response playbook, healed(status, fault record), needs a restart of the killed process after)
    "mesh-down": ("mesh_peer_count_low", "p3.recovery.recover_mesh", _mesh_back, False),
    "db-exhaustion": ("database_connection_high", "p3.recovery.recover_database", _db_free, False),
    "app-down": ("app_down", "p3.recovery.restart_app", None, False),
    "redis-master-down": ("redis_node_down", "p3.recovery.recover_redis", _slots_served, True),
}


@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.extended) if f in EXTENDED else f for f in CASES])
def test_fault_alert_rulebook_response_healed_resolved(loop, fault):
    """Inject -> the alert fires in Prometheus -> Alertmanager delivers it (token) -> ansible-rulebook runs the
    matching response for real (allowed) -> the lab is healthy by real state -> the alert resolves."""
    L = loop["lab"]
    alert, playbook, healed, restart_node = CASES[fault]
    lab("heal", timeout=240)
    assert poll(lambda: not prom_alerts(L), 30), prom_alerts(L)
    before = lab_status()
    healed = healed or _app_restarted(before["services"]["app"]["pid"])
    seen = len(notifications(loop, alert))
    rec = lab_fault(fault)
    t0 = time.monotonic()
    fired = poll(lambda: firing(L, alert), 45)
    assert fired, (fault, prom_alerts(L))
    t_fire = time.monotonic() - t0
    # Alertmanager has it, with the fingerprint the rulebook's episode is keyed on
    am = poll(lambda: [a for a in (mon.am_alerts(L) or []) if a["labels"]["alertname"] == alert], 20)
    assert am, mon.am_alerts(L)
    fingerprints = set(a["fingerprint"] for a in am)
    # the rulebook acted: the response ran for real, succeeded, recorded for that alert episode
    # (a bound on the response's playbook run, as test_eda_loop's WAIT: 180 s was close at load 12-14)
    acted = poll(lambda: [n for n in notifications(loop, alert)[seen:] if n["decision"] == "act"
                          and n["ran"] == "real"], 600, 1)
    assert acted, (notifications(loop, alert), loop["rulebook"].log_tail())
    t_acted = time.monotonic() - t0
    assert acted[0]["alert"]["fingerprint"] in fingerprints and acted[0]["playbook"] == playbook, acted[0]
    assert acted[0]["ok"] and not acted[0]["failed"], acted[0]
    # real state: the fault is healed by the response (not by the lab)
    st = poll(lambda: (lambda s: s if healed(s, rec) else None)(lab_status()), 60, 1)
    assert st, lab_status()
    if restart_node:
        # a killed Redis process is not something the collection restarts: the response restored service
        # (all slots on live masters); the node comes back by the lab (a human, systemd) and the alert resolves
        lab("heal", timeout=240)
    assert poll(lambda: not prom_alerts(L).get(alert), 60), prom_alerts(L)
    t_resolved = time.monotonic() - t0
    # one response for the episode, however often Alertmanager re-sent it while firing
    assert len([n for n in notifications(loop, alert)[seen:] if n["decision"] == "act"]) == 1
    print("%s: firing %.1f s, response done %.1f s, resolved %.1f s" % (fault, t_fire, t_acted, t_resolved))
