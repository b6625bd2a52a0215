"""Rolling restart behind HAProxy under client load (issue 17 §1 + §2).

The module fixture switches the session lab to 3 app instances behind HAProxy (`p3lab up --app-instances 3`) and
back to one at the end, so the other tests keep their single app. Every assertion reads real state: supervisor
PIDs, HAProxy's runtime API, the load generator's ledger re-read against Redis/PostgreSQL (lab/p3lablib/load.py).
"""
import json
import os
import signal
import sys
import time

import pytest

from p3harness import ROOT, lab, run_playbook

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import haproxy as lb  # noqa: E402
from p3lablib import supervisor  # noqa: E402
from p3lablib.common import Lab  # noqa: E402
from p3lablib.load import Load  # noqa: E402

PROGRAMS = ["p3app", "p3app2", "p3app3"]
DRAIN = ("Take this instance out of the load balancer (HAProxy drain; refuses when it is the last one serving) "
         "and wait for its requests in flight")
READY = "Put this instance back into the load balancer once HAProxy's own checks see it up"


def poll(pred, timeout, interval=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def admin_states(L):
    """{server: srv_admin_state} from `show servers state` (0 = ready)."""
    text = lb.command(L, "show servers state %s" % lb.BACKEND)
    out = {}
    for ln in text.splitlines():
        f = ln.split()
        if len(f) > 6 and f[0].isdigit() and f[1] == lb.BACKEND:
            out[f[3]] = int(f[6])
    return out


def all_ready(L):
    srv = lb.servers(L)
    return (len(srv) == 3 and all(v["status"] == "UP" for v in srv.values())
            and admin_states(L) == {"app1": 0, "app2": 0, "app3": 0})


def pids(L):
    return {p: supervisor.pid_of(L, p) for p in PROGRAMS}


@pytest.fixture(scope="module")
def fleet(lab_up):
    lab("heal", timeout=240)
    lab("up", "--app-instances", "3", timeout=240)
    L = Lab()
    assert L.lb_url and poll(lambda: all_ready(L), 30), lb.servers(L)
    yield L
    lab("up", "--app-instances", "1", timeout=240)
    L1 = Lab()
    assert L1.app_instances == 1 and not supervisor.pid_of(L1, "haproxy")


@pytest.fixture
def ready_fleet(fleet):
    """Every instance running and ready in HAProxy before and after the test."""
    lab("heal", timeout=240)
    assert poll(lambda: all_ready(fleet), 30), (lb.servers(fleet), admin_states(fleet))
    yield fleet
    lab("heal", timeout=240)
    for srv in ("app1", "app2", "app3"):
        lb.command(fleet, "set server %s/%s state ready" % (lb.BACKEND, srv))
    assert poll(lambda: all_ready(fleet), 30), (lb.servers(fleet), admin_states(fleet))


def test_load_loses_nothing_on_a_healthy_lab(ready_fleet):
    """All four streams through HAProxy: every acknowledged key, session and job is found again in real state."""
    ld = Load(ready_fleet, seconds=4, rate=20, ledger=os.path.join(ready_fleet.dir, "load", "healthy.jsonl"))
    ld.start()
    assert ld.wait(30)
    ld.stop()
    s = ld.summary()
    v = ld.verify()
    assert ld.url == ready_fleet.lb_url
    assert s["http_total"]["requests"] > 50 and s["http_total"]["failed"] == 0, s["http_total"]
    assert s["redis"]["ok"] > 20 and s["redis"]["unacked"] == 0 and s["redis"]["failed"] == 0, s["redis"]
    for kind in ("redis", "sessions", "jobs"):
        assert v[kind]["expected"] > 0 and v[kind]["lost"] == 0 and v[kind]["unreadable"] == 0, (kind, v[kind])
    assert v["jobs"]["anchored"] is not None


def test_rolling_restart_under_load_fails_no_request(ready_fleet, tmp_path):
    L = ready_fleet
    before = pids(L)
    assert all(before.values()), before
    ld = Load(L, seconds=300, rate=25, streams=("session", "http"),
              ledger=os.path.join(L.dir, "load", "rolling.jsonl"))
    t0 = time.monotonic()
    with ld:
        run = run_playbook("restart_app.yml", env={"P3_INCIDENT_DIR": str(tmp_path)})
    took = time.monotonic() - t0
    s = ld.summary()
    after = pids(L)
    print("rolling restart of 3 instances under load: %.1f s, %d requests through haproxy, %d failed %s"
          % (took, s["http_total"]["requests"], s["http_total"]["failed"], s["http_total"]["reasons"]))
    assert run.rc == 0, run.stdout[-3000:]
    assert all(after[p] and after[p] != before[p] for p in PROGRAMS), (before, after)
    assert s["http_total"]["requests"] > 100
    assert s["http_total"]["failed"] == 0, s["http_total"]
    assert poll(lambda: all_ready(L), 10), (lb.servers(L), admin_states(L))
    drains = run.results(DRAIN)
    assert len(drains) == 3 and all(r["changed"] for r in drains)
    # one at a time: each drain left the two others serving
    assert all(len(r["serving"]) == 2 for r in drains), [r["serving"] for r in drains]
    assert [e["action"] for r in drains for e in r["timeline"]] == ["haproxy drain"] * 3
    assert len(run.results(READY)) == 3
    # the incident timeline has each instance's drain and ready, in rolling order
    logs = list(tmp_path.glob("incident-*.jsonl"))
    assert len(logs) == 1
    steps = [(t["action"], t["target"]) for line in logs[0].read_text().splitlines()
             for t in json.loads(line).get("timeline", []) if t["action"].startswith("haproxy")]
    assert steps == [(a, "p3_app/app%d" % i) for i in (1, 2, 3) for a in ("haproxy drain", "haproxy ready")], steps
    v = ld.verify()
    assert v["sessions"]["lost"] == 0 and v["sessions"]["expected"] > 0, v["sessions"]


def test_check_mode_plans_and_changes_nothing(ready_fleet):
    L = ready_fleet
    before = pids(L)
    run = run_playbook("restart_app.yml", check=True)
    assert run.rc == 0, run.stdout[-3000:]
    drains = run.results(DRAIN)
    assert len(drains) == 3 and all(r["changed"] and r["reason"].startswith("would set") for r in drains), drains
    # every server is ready already: the re-enable step has nothing to change
    assert [r["changed"] for r in run.results(READY)] == [False] * 3
    assert pids(L) == before
    assert admin_states(L) == {"app1": 0, "app2": 0, "app3": 0}


def test_never_drains_the_last_serving_instance(ready_fleet):
    """One instance down: the rolling restart of the two others under load fails no request (each drain leaves
    exactly one serving). Then two down: draining the last one serving is refused with one line and it keeps running
    untouched."""
    L = ready_fleet
    os.kill(supervisor.pid_of(L, "p3app3"), signal.SIGKILL)
    assert poll(lambda: lb.servers(L).get("app3", {}).get("status", "").startswith("DOWN"), 15), lb.servers(L)
    before = pids(L)
    ld = Load(L, seconds=300, rate=25, streams=("session", "http"), ledger=os.path.join(L.dir, "load", "down1.jsonl"))
    with ld:
        run = run_playbook("restart_app.yml", limit="p3-lab-app,p3-lab-app2")
    s = ld.summary()
    print("rolling restart of app1+app2 with app3 down: %d requests, %d failed" % (s["http_total"]["requests"],
                                                                                 s["http_total"]["failed"]))
    assert run.rc == 0, run.stdout[-3000:]
    assert s["http_total"]["failed"] == 0 and s["http_total"]["requests"] > 50, s["http_total"]
    assert [r["serving"] for r in run.results(DRAIN)] == [["app2"], ["app1"]]
    after = pids(L)
    assert after["p3app"] != before["p3app"] and after["p3app2"] != before["p3app2"], (before, after)
    assert poll(lambda: all(lb.servers(L)[s]["status"] == "UP" for s in ("app1", "app2")), 15), lb.servers(L)

    os.kill(supervisor.pid_of(L, "p3app2"), signal.SIGKILL)
    assert poll(lambda: all(lb.servers(L).get(s, {}).get("status", "").startswith("DOWN") for s in ("app2", "app3")),
                15), lb.servers(L)
    app1 = supervisor.pid_of(L, "p3app")
    run = run_playbook("restart_app.yml", limit="p3-lab-app")
    assert run.rc != 0
    assert run.failed(DRAIN)
    msg = run.result(DRAIN)["msg"]
    assert "refusing to drain app1" in msg and "\n" not in msg, msg
    assert supervisor.pid_of(L, "p3app") == app1
    assert admin_states(L)["app1"] == 0 and lb.servers(L)["app1"]["status"] == "UP"
