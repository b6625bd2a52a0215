"""plugins/filter/database.py: the database role's input checks, the pool arithmetic and the outcome line."""
import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "filter", "database.py")
_spec = importlib.util.spec_from_file_location("p3_database_filters", _PATH)
db = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(db)

GOOD = dict(p3_db_max_usage_pct=80, p3_db_min_age_seconds=300, p3_db_long_running_seconds="300",
            p3_db_max_count=50, p3_db_cancel_grace_seconds=2, p3_db_timeout=5, p3_db_settle_timeout=5,
            p3_db_verify_timeout=20, p3_db_app_instances=1, p3_db_app_pool_max=10, p3_db_query_length=200,
            p3_db_evidence_items=20, p3_db_restart_app="auto", p3_db_states=["active"])


def test_good_input_has_no_error():
    assert db.database_input_errors(GOOD) == []
    assert db.database_input_errors(dict(GOOD, p3_db_max_usage_pct="100", p3_db_min_age_seconds=0)) == []


@pytest.mark.parametrize("name,value,msg", [
    ("p3_db_max_usage_pct", -5, "p3_db_max_usage_pct must be a number > 0 and <= 100, got -5"),
    ("p3_db_max_usage_pct", 0, "p3_db_max_usage_pct must be a number > 0 and <= 100, got 0"),
    ("p3_db_max_usage_pct", 100.5, "got 100.5"),
    ("p3_db_max_usage_pct", "lots", "p3_db_max_usage_pct must be a number > 0 and <= 100, got 'lots'"),
    ("p3_db_max_usage_pct", None, "got None"),
    ("p3_db_max_usage_pct", True, "got True"),
    ("p3_db_max_usage_pct", "nan", "got 'nan'"),
    ("p3_db_min_age_seconds", -1, "p3_db_min_age_seconds must be a number >= 0, got -1"),
    ("p3_db_max_count", 0, "p3_db_max_count must be an integer >= 1, got 0"),
    ("p3_db_max_count", 2.5, "p3_db_max_count must be an integer >= 1, got 2.5"),
    ("p3_db_timeout", 0, "p3_db_timeout must be a number > 0, got 0"),
    ("p3_db_restart_app", "sometimes", "p3_db_restart_app must be never, auto or always, got 'sometimes'"),
    ("p3_db_states", "active", "p3_db_states must be a non-empty list"),
    ("p3_db_states", [], "p3_db_states must be a non-empty list"),
    ("p3_db_states", ["active", "sleeping"], "p3_db_states: unknown state 'sleeping'"),
])
def test_bad_input_is_one_line_naming_the_variable(name, value, msg):
    errors = db.database_input_errors(dict(GOOD, **{name: value}))
    assert len(errors) == 1 and msg in errors[0] and "\n" not in errors[0], errors


def test_pool_arithmetic_over_the_ordinary_slots():
    b = db.pool_budget(3, 30, 100, 3, 0, 80, "server/pg-storage.ts and server/db.ts")
    assert (b["demand"], b["ordinary_slots"], b["demand_pct"], b["fits"]) == (90, 97, 90.0, True)
    assert "at or over the 80% alert" in b["recommendation"]
    b = db.pool_budget(4, 30, 100)
    assert b["fits"] is False and b["demand"] == 120
    assert "4 app instances x pool max 30 = 120 connections > 97 ordinary slots" in b["recommendation"]
    assert "at least 123" in b["recommendation"] and "would make it worse" in b["recommendation"]


def test_pool_arithmetic_when_the_pools_fit():
    b = db.pool_budget(1, 5, 20, 3, 0, 80)
    assert (b["demand"], b["ordinary_slots"], b["demand_pct"], b["fits"]) == (5, 17, 25.0, True)
    assert "the pools are not the cause" in b["recommendation"]


def test_pool_arithmetic_with_unknown_max_connections():
    b = db.pool_budget(2, 10, None)
    assert b["fits"] is None and b["demand"] == 20 and "max_connections unknown" in b["recommendation"]


def _report(**kw):
    base = dict(
        check_mode=False,
        checks=[dict(name="database", healthy=True, reason="connections 2/20 (10%) < 80% on h:1"),
                dict(name="health", healthy=True, reason="200 healthy")],
        before=dict(database=dict(reason="connections 18/20 (90%) >= 80% on h:1", target="h:1")),
        decision=dict(act=True, why="usage 90% >= 80%: terminate per policy"),
        actions=dict(terminate=dict(target="h:1", terminated=[1, 2], cancelled=[],
                                    selected=[dict(pid=1, application="leak"), dict(pid=2, application="leak")]),
                     restart=dict(hosts=[], why="app healthy again without a restart")),
        recommendation=dict(pool=dict(recommendation="1 x 5 = 5")),
    )
    base.update(kw)
    return base


def test_outcome_recovered():
    out = db.database_outcome(_report())
    assert out["healthy"] is True and out["changed"] is True
    assert out["reason"].startswith("recovered: terminated 2 backends on h:1 (leak: 2); database: connections 2/20")
    assert any(line.startswith("pools") for line in out["summary"])


def test_outcome_nothing_to_do_changes_nothing():
    out = db.database_outcome(_report(decision=dict(act=False, why="usage 10% < 80%: nothing to do"),
                                      actions=dict(terminate=dict(skipped=True), restart=dict(hosts=[]))))
    assert out["changed"] is False and out["healthy"] is True and out["reason"].startswith("nothing to do: ")


def test_outcome_check_mode_never_changed():
    out = db.database_outcome(_report(
        check_mode=True,
        checks=[dict(name="database", healthy=False, reason="connections 18/20 (90%) >= 80%")],
        actions=dict(terminate=dict(target="h:1", terminated=[], selected=[dict(pid=1, application="leak")]),
                     restart=dict(hosts=[]))))
    assert out["changed"] is False and out["healthy"] is False
    assert out["reason"].startswith("check mode: would terminate 1 backends on h:1 (leak: 1); nothing changed")


def test_outcome_not_recovered_names_what_is_red():
    out = db.database_outcome(_report(checks=[dict(name="database", healthy=True, reason="ok"),
                                              dict(name="health", healthy=False, reason="503: redis down")],
                                      actions=dict(terminate=dict(target="h:1", terminated=[1], selected=[dict(pid=1)]),
                                                   restart=dict(hosts=["app1"]))))
    assert out["healthy"] is False
    assert out["reason"].startswith("not recovered: health: 503: redis down; terminated 1 backends")
    assert "restarted app1" in out["reason"]


def test_outcome_when_nothing_matched_says_how_to_widen_the_policy():
    out = db.database_outcome(_report(
        checks=[dict(name="database", healthy=False, reason="connections 18/20 (90%) >= 80%")],
        actions=dict(terminate=dict(target="h:1", terminated=[], selected=[], msg="nothing to terminate on h:1: (17 too young)"),
                     restart=dict(hosts=[]))))
    assert out["healthy"] is False and out["changed"] is False
    assert "17 too young" in out["reason"] and "widen it (p3_db_min_age_seconds" in out["reason"]
