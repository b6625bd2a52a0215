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


# database_decision / database_restart: golden cases of the Jinja they replaced (roles/database/vars/main.yml),
# checked against it over 8640 combinations (seen x force x include_users x restart mode x check mode x settle probe)
# rendered by ansible-core's Templar before the move.
database_decision = db.database_decision
database_restart = db.database_restart

DEC = dict(max_usage_pct=80, force=False, include_users=[])


def test_decision_over_max_connections_terminates_per_policy():
    d = database_decision(dict(healthy=False, usage_pct=93.3, limited=None, reason="x"), DEC)
    assert d == dict(exhausted=True, act=True, cause="max_connections", include_users=[], include_databases=[],
                     why="usage 93.3% >= 80%: terminate per policy")


def test_decision_healthy_is_nothing_to_do_and_force_acts_anyway():
    seen = dict(healthy=True, usage_pct=12.5, limited={"roles": [], "databases": []}, reason="ok")
    d = database_decision(seen, DEC)
    assert (d["act"], d["cause"], d["why"]) == (False, None, "usage 12.5% < 80%: nothing to do")
    d = database_decision(seen, dict(DEC, force="yes"))
    assert d["act"] is True and d["exhausted"] is False
    assert d["why"] == "usage 12.5% < 80%, p3_db_force: terminate per policy anyway"


def test_decision_a_limited_role_scopes_the_terminate_to_it():
    seen = dict(healthy=False, usage_pct=12.5, limited={"roles": ["app"], "databases": ["p3"]},
                reason="role app at 9/10 on 127.0.0.1:5432; more")
    d = database_decision(seen, DEC)
    assert d["cause"] == "connection_limit" and d["include_users"] == ["app"] and d["include_databases"] == []
    assert d["why"] == "role app at 9/10: terminate per policy, only backends of role app"
    # the operator's own list wins over the limited roles
    assert database_decision(seen, dict(DEC, include_users=["ops"]))["include_users"] == ["ops"]


def test_decision_a_limited_database_scopes_when_no_role_is_limited():
    seen = dict(healthy=False, usage_pct=12.5, limited={"roles": [], "databases": ["p3"]}, reason="database p3 full")
    d = database_decision(seen, DEC)
    assert d["include_databases"] == ["p3"] and d["include_users"] == []
    assert d["why"] == "database p3 full: terminate per policy, only backends of database p3"


def test_decision_over_max_wins_over_a_limited_role():
    seen = dict(healthy=False, usage_pct=80, limited={"roles": ["app"], "databases": []}, reason="r")
    d = database_decision(seen, DEC)
    assert d["cause"] == "max_connections" and d["include_users"] == [] and d["include_databases"] == []


RST = dict(restart_app="auto", check_mode=False, settle_timeout=20)
ACT = dict(act=True)


def test_restart_auto_only_when_the_app_is_still_unhealthy():
    r = database_restart(ACT, {"healthy": False, "reason": "still 500"}, RST)
    assert r == dict(wanted=True, app_after_terminate=False,
                     why="app still unhealthy 20 s after the terminate: still 500")
    r = database_restart(ACT, {"healthy": True, "reason": "ok"}, RST)
    assert r == dict(wanted=False, app_after_terminate=True, why="app healthy again without a restart")
    r = database_restart(ACT, {"skipped": True}, RST)
    assert r == dict(wanted=False, app_after_terminate=None, why="app health not checked (p3_db_app_check=false)")


def test_restart_never_always_nothing_done_and_check_mode():
    unhealthy = {"healthy": False, "reason": "x"}
    assert database_restart(ACT, unhealthy, dict(RST, restart_app="never")) == dict(
        wanted=False, app_after_terminate=False, why="p3_db_restart_app=never")
    assert database_restart(ACT, {"healthy": True}, dict(RST, restart_app="always"))["wanted"] is True
    assert database_restart(dict(act=False), unhealthy, dict(RST, restart_app="always"))["why"] == "nothing was done"
    r = database_restart(ACT, unhealthy, dict(RST, check_mode=True))
    assert r["wanted"] is False and r["why"] == "check mode"


def test_decision_filters_registered():
    filters = db.FilterModule().filters()
    assert filters["database_decision"] is database_decision and filters["database_restart"] is database_restart
