"""Unit tests of the pure verdict filters (plugins/filter/verdicts.py)."""
import importlib.util
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "filter", "verdicts.py")
_spec = importlib.util.spec_from_file_location("p3_verdicts", _PATH)
verdicts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verdicts)

SEV = {"health": "SEV-1", "database": "SEV-1", "redis": "SEV-2", "pulse": "SEV-2", "metrics": "SEV-4"}
SCEN = {"health": "restart_app", "database": "recover_database", "pulse": "recover_mesh"}


def test_to_check_reads_a_probe_result():
    res = {"healthy": False, "reason": "node 127.0.0.1:1 unreachable\n(connection refused)", "changed": False}
    assert verdicts.to_check(res, "redis") == {
        "name": "redis", "healthy": False, "reason": "node 127.0.0.1:1 unreachable (connection refused)"}


def test_to_check_reads_a_sub_result():
    res = {"healthy": False, "health": {"healthy": True, "reason": "200"}, "pulse": {"healthy": False, "reason": "0 peers"}}
    assert verdicts.to_check(res, "health", "health")["healthy"] is True
    assert verdicts.to_check(res, "pulse", "pulse") == {"name": "pulse", "healthy": False, "reason": "0 peers"}


def test_a_failed_probe_is_an_unhealthy_check_with_its_message():
    res = {"failed": False, "failed_when_result": False, "msg": "dsn: malformed URL"}
    assert verdicts.to_check(res, "database") == {"name": "database", "healthy": False, "reason": "dsn: malformed URL"}
    assert verdicts.to_check(None, "x")["healthy"] is False
    assert verdicts.to_check({"skipped": True}, "x")["healthy"] is None


def test_long_reasons_are_one_bounded_line():
    c = verdicts.to_check({"healthy": False, "reason": "x" * 1000}, "n")
    assert len(c["reason"]) == 300 and c["reason"].endswith("...")


def test_triage_takes_the_worst_severity_and_orders_scenarios():
    checks = [
        {"name": "health", "healthy": False}, {"name": "database", "healthy": False},
        {"name": "redis", "healthy": True}, {"name": "pulse", "healthy": False}, {"name": "metrics", "healthy": None},
    ]
    t = verdicts.triage(checks, SEV, SCEN)
    assert t["severity"] == "SEV-1" and t["response_time"] == "Immediate"
    assert t["failing"] == ["health", "database", "pulse"]
    assert t["scenarios"] == ["restart_app", "recover_database", "recover_mesh"]


def test_triage_of_minor_and_healthy():
    assert verdicts.triage([{"name": "metrics", "healthy": False}], SEV, SCEN)["severity"] == "SEV-4"
    assert verdicts.triage([{"name": "unknown", "healthy": False}], SEV, SCEN)["severity"] == "SEV-3"
    assert verdicts.triage([{"name": "redis", "healthy": True}], SEV, SCEN) == {
        "severity": None, "response_time": None, "failing": [], "root_causes": [], "consequences": [],
        "scenarios": [], "causes": []}


DEPS = {"health": ["database", "redis"], "pulse": ["health"], "metrics": ["health"]}


def test_triage_recommends_root_causes_only():
    app_down = [{"name": "database", "healthy": True}, {"name": "health", "healthy": False},
                {"name": "pulse", "healthy": False}, {"name": "metrics", "healthy": False}]
    t = verdicts.triage(app_down, SEV, SCEN, DEPS)
    assert t["root_causes"] == ["health"] and t["consequences"] == ["pulse", "metrics"]
    assert t["scenarios"] == ["restart_app"]
    db_down = [{"name": "database", "healthy": False}, {"name": "health", "healthy": False},
               {"name": "pulse", "healthy": True}]
    t = verdicts.triage(db_down, SEV, SCEN, DEPS)
    assert t["scenarios"] == ["recover_database"] and t["consequences"] == ["health"]


def test_verdict_table():
    lines = verdicts.verdict_table([{"name": "redis", "healthy": True, "reason": "ok"},
                                    {"name": "database", "healthy": False, "reason": "y" * 200}], width=60)
    assert lines[0].split() == ["check", "verdict", "reason"]
    assert lines[1].startswith("redis ") and " OK " in lines[1]
    assert "UNHEALTHY" in lines[2] and lines[2].endswith("...") and len(lines[2]) <= 60


def test_evidence_drops_bookkeeping():
    assert verdicts.evidence({"invocation": {}, "changed": False, "healthy": True, "metrics": {}}, ["metrics"]) == {"healthy": True}


def test_redis_serving_ignores_a_dead_node_that_serves_no_slot():
    from ansible_collections.p3.recovery.plugins.filter.verdicts import redis_serving
    serving = {"healthy": False, "cluster_enabled": True, "cluster_state": "ok", "slots_ok": 16384, "slots_uncovered": []}
    assert redis_serving(serving) is True
    assert redis_serving(dict(serving, cluster_state="fail")) is False
    assert redis_serving(dict(serving, slots_ok=10923, slots_uncovered=["0-5460"])) is False
    assert redis_serving({"healthy": True, "cluster_enabled": False}) is True
    assert redis_serving({"healthy": False, "cluster_enabled": False}) is False
    assert redis_serving({"healthy": False, "cluster_enabled": None}) is False  # nothing answered
    assert redis_serving(None) is False
