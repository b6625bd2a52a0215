"""Unit tests of the pure parts of the incident record (module_utils/incident.py): who ran it, incident state,
restored time, root cause in words, the run record, and the degraded-redundancy verdict of the Redis probe."""
import datetime

from ansible_collections.p3.recovery.plugins.module_utils import incident as inc
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import degraded_redundancy
from ansible_collections.p3.recovery.plugins.filter.verdicts import to_check, verdict_table


def _e(ts, run, **kw):
    d = {"ts": "2026-12-06T10:%s:00Z" % ts, "run": run, "host": "localhost", "task": kw.pop("task", "Probe"),
         "status": "ok"}
    d.update(kw)
    return d


def _round(ts, run, **health):
    return [_e(ts, run, kind="probe", task="Probe all [%s]" % name, probe=name, healthy=ok,
               reason="%s %s" % (name, "ok" if ok else "broken"), **({"degraded": deg} if deg else {}))
            for name, (ok, deg) in ((n, h if isinstance(h, tuple) else (h, None)) for n, h in health.items())]


REDIS_DOWN = "node 127.0.0.1:17001 unreachable (connection refused), down: flagged fail by 5 of 5 peers"
DEG = [{"node": "127.0.0.1:17001", "next": "restart Redis node 127.0.0.1:17001 (it rejoins as a replica)"}]


def test_who_reads_only_the_awx_job_variables_and_the_process():
    extra = {"awx_job_id": 42, "awx_job_template_name": "P3 recover redis", "tower_user_name": "alice",
             "awx_workflow_job_id": 7, "p3_database_url": "postgresql://u:secretpw@h/db", "awx_secret": "x"}
    w = inc.who(extra)
    assert w["awx_job_id"] == "42" and w["awx_job_template_name"] == "P3 recover redis"
    assert w["awx_user_name"] == "alice" and w["awx_workflow_job_id"] == "7" and w["via"] == "awx"
    assert w["os_user"] and w["host"]
    assert "secretpw" not in repr(w) and "awx_secret" not in w
    assert inc.who({})["via"] == "shell"


def test_target_and_new_incident_id_are_stable_plain_names():
    assert inc.target_of({"p3_incident_target": "prod-eu"}, ["a"]) == "prod-eu"
    assert inc.target_of({"awx_inventory_name": "P3 prod"}, ["a"]) == "P3 prod"
    assert inc.target_of({}, ["b", "a", "a"]) == "hosts:a,b"
    now = datetime.datetime(2026, 12, 6, 10, 0, 0, tzinfo=datetime.timezone.utc)
    i = inc.new_incident_id(now, "hosts:a,b")
    assert i.startswith("inc-20261206T100000Z-") and "/" not in i and i == inc.new_incident_id(now, "hosts:a,b")


def test_states_open_then_resolved_by_a_later_run_or_the_final_diagnose_of_the_same_run():
    broken = _round("00", "a", redis=False, app=True)
    assert inc.incident_state(broken) == "open" and inc.restored_at(broken) is None
    # recover_all: the same run acts, and its final diagnose (a round of probes) is all green
    same_run = broken + [_e("01", "a", kind="action", changed=True, timeline=[
        {"action": "cluster failover force", "target": "127.0.0.1:17005", "detail": "promoted"}])] + \
        _round("02", "a", redis=True, app=True)
    assert inc.incident_state(same_run) == "resolved" and inc.restored_at(same_run) == "2026-12-06T10:02:00Z"
    # one healthy probe of the same run (a stage's check) is no proof
    assert inc.restored_at(broken + [_e("01", "a", kind="probe", healthy=True, task="Stage 3 probe")]) is None
    # a later run
    assert inc.restored_at(broken + _round("05", "b", redis=True, app=True)) == "2026-12-06T10:05:00Z"
    assert inc.incident_state(_round("00", "a", redis=True)) == "none"


def test_degraded_redundancy_is_restored_with_the_remaining_step_named():
    entries = _round("00", "a", redis=False) + [_e("01", "a", kind="action", changed=True, timeline=[
        {"action": "cluster failover force", "target": "127.0.0.1:17005", "detail": "replica of dead master promoted"}])] \
        + _round("02", "a", redis=(True, DEG), app=True)
    assert inc.incident_state(entries) == "degraded"
    assert inc.remaining_steps(entries) == [DEG[0]["next"]]
    text = inc.root_cause(entries)
    assert "Broken: redis - redis broken" in text
    assert "Fixed by: cluster failover force 127.0.0.1:17005 replica of dead master promoted." in text
    assert "service restored at 2026-12-06T10:02:00Z, redundancy degraded - remaining step: restart Redis node " \
           "127.0.0.1:17001 (it rejoins as a replica)" in text
    # restarting the node turns it resolved: the next round has no remaining step
    assert inc.incident_state(entries + _round("09", "b", redis=True, app=True)) == "resolved"


def test_root_cause_names_the_triage_root_cause_first_and_each_fix_once_not_task_names():
    entries = _round("00", "a", health=False, redis=False) + [
        _e("00", "a", kind="triage", severity="SEV-1", root_causes=["redis"]),
        _e("01", "a", kind="action", changed=True, task="Act - promote", timeline=[
            {"action": "failover", "target": "n5", "detail": "promoted"}]),
        _e("01", "a", kind="action", changed=True, task="Act - promote again", timeline=[
            {"action": "failover", "target": "n5", "detail": "promoted"}]),
        _e("02", "a", kind="action", changed=True, task="Restart the app", msg="")]
    text = inc.root_cause(entries)
    assert text.index("redis - redis broken") < text.index("health - health broken")
    assert "(root cause: redis)" in text and text.count("failover n5 promoted") == 1
    assert "Act - promote" not in text
    assert "Outcome: not yet restored - still failing: health, redis." in text


def test_run_record_has_the_shape_set_stats_publishes():
    entries = _round("00", "r1", redis=False) + [_e("00", "r1", kind="triage", severity="SEV-2")]
    rec = inc.run_record(entries, [], "inc-1", "r1", "diagnose", "hosts:localhost", "2026-12-06T09:59:59Z",
                         inc.who({"awx_job_id": 9}), {"directory": "/x", "database": None})
    assert set(rec) >= {"incident_id", "run", "playbook", "target", "started", "finished", "healthy", "changed",
                        "state", "severity", "root_cause", "remaining", "who", "timeline", "sinks"}
    assert rec["state"] == "open" and rec["healthy"] is False and rec["severity"] == "SEV-2"
    assert rec["who"]["awx_job_id"] == "9" and len(rec["timeline"]) == 2
    healthy = inc.run_record(_round("00", "r2", redis=True), [], None, "r2", "diagnose", "t", "x", {})
    assert healthy["state"] == "none" and healthy["incident_id"] is None and healthy["healthy"] is True
    big = inc.run_record([_e("00", "r3", kind="probe", healthy=True)] * (inc.MAX_TIMELINE + 5), [], None, "r3", "p",
                         "t", "x", {})
    assert len(big["timeline"]) == inc.MAX_TIMELINE and big["timeline_dropped"] == 5


def test_scrub_masks_the_sink_password_anywhere():
    assert "pw123" not in repr(inc.scrub({"a": ["x pw123 y"]}, ["pw123"]))


def test_degraded_redundancy_names_the_restart_step_and_the_check_shows_degraded():
    down = [{"address": "127.0.0.1:17001", "role": "master", "health_why": "flagged fail by 5 of 5 peers"}]
    [d] = degraded_redundancy(down)
    assert d["next"] == "restart Redis node 127.0.0.1:17001 (it rejoins as a replica)" and d["was"] == "master"
    check = to_check({"healthy": True, "reason": "service restored, redundancy degraded: ...", "degraded": [d]}, "redis")
    assert check["healthy"] is True and check["degraded"] == [d["next"]]
    assert "DEGRADED" in verdict_table([check])[1]
    assert "OK" in verdict_table([to_check({"healthy": True, "reason": "fine"}, "redis")])[1]


def test_root_cause_uses_the_triage_causes_words_and_names_the_consequences():
    entries = _round("00", "a", app=False, metrics=False) + [
        _e("00", "a", kind="triage", severity="SEV-1", root_causes=["health"],
           causes=[{"check": "health", "reason": "GET /health failed: connection refused"}])]
    text = inc.root_cause(entries)
    assert text.startswith("Broken: health - GET /health failed: connection refused (also failing as a "
                           "consequence: app, metrics).")
