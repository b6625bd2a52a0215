"""Issue 19: the exported rules on a real Prometheus + Alertmanager fed by real exporters (`p3lab monitoring-up`),
and the closed loop through the collection's EDA source and rulebook (real ansible-rulebook).

Pass integration-c. The module fixture adds the monitoring programs to the pass's session lab and removes them at
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
from p3lablib.common import Lab, http  # noqa: E402

PROMQL_WORDS = {"sum", "rate", "min", "max", "by", "on", "clamp_min", "and", "or", "unless", "count", "avg",
                "ignoring", "without", "group_left", "group_right", "e"}


def poll(pred, timeout, interval=0.25):
    end = time.monotonic() + timeout
    while True:
        val = pred()
        if val or time.monotonic() > end:
            return val
        time.sleep(interval)


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
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert str(bad) in proc.stderr and "parse error" in proc.stderr and "Traceback" not in proc.stderr
    assert "app_down" in mon.rules_loaded(L) and "broken" not in mon.rules_loaded(L)
