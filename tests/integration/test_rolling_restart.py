"""Rolling restart behind HAProxy under client load (issue 17 §1 + §2).

The module fixture switches the session lab to 3 app instances behind HAProxy (`p3lab up --app-instances 3`) and
back to one at the end, so the other tests keep their single app. Every assertion reads real state: supervisor
PIDs, HAProxy's runtime API, the load generator's ledger re-read against Redis/PostgreSQL (lab/p3lablib/load.py).
"""
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from p3harness import ROOT, lab, lab_fault, lab_status, run_playbook

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import haproxy as lb  # noqa: E402
from p3lablib import supervisor  # noqa: E402
from p3lablib.common import Lab, wait_until as poll  # noqa: E402
from p3lablib.load import Load  # noqa: E402

PROGRAMS = ["p3app", "p3app2", "p3app3"]
DRAIN = ("Take this instance out of the load balancer (HAProxy drain; refuses when it is the last one serving) "
         "and wait for its requests in flight")
READY = "Put this instance back into the load balancer once HAProxy's own checks see it up"
GATE_FAILED = "Fail clearly when the app did not come back"
LOCKED_OUT = "Lock - nothing done, stop here"
FORCE = {"p3_restart_force": True}
# Hang guard of a roll over several instances: each instance's waits are bounded by the role (HAProxy drain 30 s,
# active anchor jobs 15 s, health gate 60 s, stable 2 s, ready in HAProxy 30 s: 137 s), three instances 411 s, plus
# the playbook's own time; at load 14 three instances passed the default 300 s guard (local CI), and the killed run
# left app-fleet locked for the next tests. A hang guard, never a timing assertion.
ROLL_GUARD = 900


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
    ld = Load(L, seconds=ROLL_GUARD, rate=25, streams=("session", "http"),
              ledger=os.path.join(L.dir, "load", "rolling.jsonl"))
    t0 = time.monotonic()
    with ld:
        run = run_playbook("restart_app.yml", extravars=FORCE, env={"P3_INCIDENT_DIR": str(tmp_path)},
                           timeout=ROLL_GUARD)
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


@pytest.mark.extended
def test_check_mode_plans_and_changes_nothing(ready_fleet):
    L = ready_fleet
    before = pids(L)
    run = run_playbook("restart_app.yml", extravars=FORCE, check=True)
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
    ld = Load(L, seconds=ROLL_GUARD, rate=25, streams=("session", "http"),
              ledger=os.path.join(L.dir, "load", "down1.jsonl"))
    with ld:
        run = run_playbook("restart_app.yml", extravars=FORCE, limit="p3-lab-app,p3-lab-app2", timeout=ROLL_GUARD)
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
    run = run_playbook("restart_app.yml", extravars=FORCE, limit="p3-lab-app")
    assert run.rc != 0
    assert run.failed(DRAIN)
    msg = run.result(DRAIN)["msg"]
    assert "refusing to drain app1" in msg and "\n" not in msg, msg
    assert supervisor.pid_of(L, "p3app") == app1
    assert admin_states(L)["app1"] == 0 and lb.servers(L)["app1"]["status"] == "UP"


def drained_count(L):
    """How many servers of the backend are not ready (drain or maintenance) right now."""
    return sum(1 for v in admin_states(L).values() if v != 0)


def test_two_concurrent_rolling_restarts_never_drain_two_instances(ready_fleet):
    """Two operators restart at the same time, each a different instance: the run lock of the app fleet lets one
    roll; the other ends at once with one line naming the lock, restarts nothing and drains nothing."""
    L = ready_fleet
    before = pids(L)
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                seen.append(drained_count(L))
            except Exception:  # noqa: BLE001 - a sample lost to a busy socket is not a verdict
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(run_playbook, "restart_app.yml", extravars=FORCE, limit=host)
                       for host in ("p3-lab-app", "p3-lab-app2")]
            runs = [f.result() for f in futures]
    finally:
        stop.set()
        sampler.join(5)
    after = pids(L)
    assert all(r.rc == 0 for r in runs), [r.stdout[-2000:] for r in runs]
    assert seen and max(seen) == 1, "two instances drained at once (samples: %s)" % sorted(set(seen))
    locked = [r for r in runs if r.results(LOCKED_OUT)]
    rolled = [r for r in runs if r.results(DRAIN)]
    assert len(locked) == 1 and len(rolled) == 1, [r.stdout[-2000:] for r in runs]
    msg = locked[0].result(LOCKED_OUT)["msg"]
    assert "app-fleet" in msg and "\n" not in msg, msg
    restarted = [p for p in ("p3app", "p3app2") if after[p] != before[p]]
    assert len(restarted) == 1, (before, after)
    assert after["p3app3"] == before["p3app3"]
    # the lock was released: a third run is not locked out
    third = run_playbook("restart_app.yml", limit="p3-lab-app3")
    assert third.rc == 0 and not third.results(LOCKED_OUT), third.stdout[-2000:]


def test_a_failed_health_gate_says_the_instance_is_left_drained(ready_fleet):
    """The restarted instance never passes its gate: the failure line names it and says it stays drained in
    HAProxy (as it really does), and the lock of the app fleet is released for the next run."""
    L = ready_fleet
    run = run_playbook("restart_app.yml", limit="p3-lab-app", extravars=dict(
        FORCE, p3_app_health_url="http://127.0.0.1:1/health", p3_restart_timeout=2))
    assert run.rc != 0
    msg = run.result(GATE_FAILED)["msg"]
    assert "p3-lab-app" in msg and "left drained in HAProxy (p3_app/app1)" in msg and "\n" not in msg, msg
    assert admin_states(L)["app1"] != 0  # really drained
    assert not run.results(READY)
    again = run_playbook("restart_app.yml", limit="p3-lab-app2")
    assert again.rc == 0 and not again.results(LOCKED_OUT), again.stdout[-2000:]


@pytest.mark.extended
def test_a_second_run_on_a_healthy_fleet_restarts_nothing(ready_fleet):
    """Without p3_restart_force only instances whose health gate is red are restarted: on a healthy fleet nothing
    is drained or restarted and the run reports changed=false; with one instance killed, only that one."""
    L = ready_fleet
    before = pids(L)
    run = run_playbook("restart_app.yml")
    assert run.rc == 0, run.stdout[-3000:]
    assert pids(L) == before
    assert not run.changed_tasks(), run.changed_tasks()
    assert not run.results(DRAIN)
    os.kill(supervisor.pid_of(L, "p3app2"), signal.SIGKILL)
    assert poll(lambda: not supervisor.pid_of(L, "p3app2"), 10)
    run = run_playbook("restart_app.yml")
    assert run.rc == 0, run.stdout[-3000:]
    after = pids(L)
    assert after["p3app"] == before["p3app"] and after["p3app3"] == before["p3app3"], (before, after)
    assert after["p3app2"] and after["p3app2"] != before["p3app2"]
    assert poll(lambda: all_ready(L), 15), (lb.servers(L), admin_states(L))


def test_lab_status_shows_every_instance_and_haproxy(ready_fleet):
    """`p3lab status` with --app-instances 3: every app program (port, pid, up), HAProxy itself, and each server's
    check status and admin state; a drained server makes the lab unhealthy and is named."""
    L = ready_fleet
    st = lab_status()
    for i, prog in ((1, "p3app"), (2, "p3app2"), (3, "p3app3")):
        svc = st["services"]["app" if i == 1 else "app%d" % i]
        assert svc["up"] and svc["pid"] == supervisor.pid_of(L, prog) and svc["port"] == L.app_ports[i - 1], svc
    assert st["services"]["haproxy"]["up"] and st["services"]["haproxy"]["pid"] == supervisor.pid_of(L, "haproxy")
    assert st["lb"]["url"] == L.lb_url
    assert {n: (s["status"], s["admin"]) for n, s in st["lb"]["servers"].items()} == {
        "app1": ("UP", "ready"), "app2": ("UP", "ready"), "app3": ("UP", "ready")}, st["lb"]
    assert st["healthy"], st["problems"]
    lb.command(L, "set server %s/app2 state drain" % lb.BACKEND)
    st = lab_status()
    assert st["lb"]["servers"]["app2"]["admin"] == "drain"
    assert not st["healthy"] and any("app2 DRAIN/drain" in p for p in st["problems"]), st["problems"]
    text = lab("status", check=False)
    assert "app2" in text and "app3" in text and "app2=DRAIN/drain" in text, text


def test_an_app_that_crashes_again_after_its_restart_fails_in_one_line(ready_fleet):
    """Fault app-crashloop: instance 1 is down and every start of it exits about 12 s after it serves. Its restart passes
    supervisor's startsecs and the first health probe, then it dies: the run fails in one line naming the host,
    says it crashed again and stays drained; it is restarted once only and the other instances are untouched."""
    L = ready_fleet
    others = {p: supervisor.pid_of(L, p) for p in ("p3app2", "p3app3")}
    lab_fault("app-crashloop")
    run = run_playbook("restart_app.yml", limit="p3-lab-app", extravars={"p3_restart_stable_seconds": 16})
    assert run.rc != 0
    msg = run.result("Fail clearly when the app crashed again after its restart")["msg"]
    assert "p3-lab-app" in msg and "crashed again" in msg and "\n" not in msg, msg
    assert "left drained in HAProxy (p3_app/app1)" in msg, msg
    assert len(run.results("Restart the app with supervisor")) == 1
    assert poll(lambda: not supervisor.pid_of(L, "p3app"), 10)  # really dead again
    assert admin_states(L)["app1"] != 0
    assert {p: supervisor.pid_of(L, p) for p in ("p3app2", "p3app3")} == others
