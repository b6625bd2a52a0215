"""module_utils/pg_activity.py and the two modules' pure parts: ages, guards, the terminate policy, the signal SQL,
blocking chains, usage; postgres_terminate's flow against a fake client (check mode sends no signal)."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import pg_activity as pa
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

SETTINGS = dict(server_version="15.18", server_version_num=150018, max_connections=20,
                superuser_reserved_connections=3, reserved_connections=0, in_recovery=False, user="p3admin",
                database="p3", superuser=True, signal_backend=True)


def row(pid, state="active", app="p3-lab-leak", user="p3app", age=10.0, **kw):
    r = dict(pid=pid, backend_start="2026-11-28 13:00:%02d.000001+00" % (pid % 60), backend_type="client backend",
             usename=user, application_name=app, client_addr="127.0.0.1", datname="p3", state=state,
             wait_event_type=None, wait_event=None, xact_age=age, query_age=age, state_age=age,
             query="SELECT pg_sleep(3600)", query_chars=21, superuser=False, own=False, blocked_by=[], can_signal=True)
    r.update(kw)
    return r


def policy(**kw):
    params = dict(min_age_seconds=5, states=list(pa.DEFAULT_STATES), include_applications=[], exclude_applications=[],
                  include_users=[], exclude_users=[], include_superusers=False, max_count=50,
                  cancel_grace_seconds=2, wait_seconds=5)
    params.update(kw)
    return pa.validate_policy(params)


# ------------------------------------------------------------------------------------------------ ages and guards

def test_age_is_the_statement_age_when_active_and_the_state_age_otherwise():
    assert pa.backend_age(row(1, "active", query_age=30, state_age=2)) == 30
    assert pa.backend_age(row(1, "idle in transaction", query_age=300, state_age=40)) == 40
    assert pa.backend_age(row(1, "idle", query_age=None, state_age=None)) == 0.0
    assert pa.backend_age(row(1, "active", query_age=-0.001)) == 0.0  # clock skew never makes it negative


@pytest.mark.parametrize("kw,reason", [
    (dict(own=True, superuser=True), "own"),
    (dict(backend_type="walsender"), "not_client"),
    (dict(backend_type="autovacuum worker", usename=None), "not_client"),
    (dict(backend_type="background worker"), "not_client"),
    (dict(superuser=True), "superuser"),
    (dict(can_signal=False), "not_permitted"),
    ({}, None),
])
def test_protection(kw, reason):
    assert pa.protection(row(7, **kw)) == reason


def test_superusers_only_when_asked_and_never_our_own_backend():
    assert pa.protection(row(7, superuser=True), include_superusers=True) is None
    assert pa.protection(row(7, superuser=True, own=True), include_superusers=True) == "own"


# ------------------------------------------------------------------------------------------------ policy

def test_policy_filters_in_order():
    p = policy(exclude_applications=["p3-nightly-*"], include_users=["p3app"])
    assert pa.policy_verdict(row(1), p) is None
    assert pa.policy_verdict(row(1, state="idle"), p) == "state"
    assert pa.policy_verdict(row(1, age=4.9), p) == "age"
    assert pa.policy_verdict(row(1, app="p3-nightly-report"), p) == "application"
    assert pa.policy_verdict(row(1, user="reporting"), p) == "user"


def test_include_lists_and_empty_application_name():
    p = policy(include_applications=["p3-*"])
    assert pa.policy_verdict(row(1, app="p3-protocol"), p) is None
    assert pa.policy_verdict(row(1, app="psql"), p) == "application"
    assert pa.policy_verdict(row(1, app=""), p) == "application"
    assert pa.policy_verdict(row(1, app=None), policy(include_applications=[""])) is None
    assert pa.policy_verdict(row(1, user="P3APP"), policy(exclude_users=["p3app"])) is None  # case-sensitive


def test_select_takes_the_oldest_first_up_to_max_count_and_counts_the_rest():
    rows = [row(1, age=10), row(2, age=50), row(3, age=30), row(4, own=True, user="p3admin", superuser=True),
            row(5, backend_type="walsender"), row(6, superuser=True, user="postgres"), row(7, state="idle"),
            row(8, age=1), row(9, app="p3-nightly-report")]
    out = pa.select_backends(rows, policy(max_count=2, exclude_applications=["p3-nightly-report"]))
    assert [r["pid"] for r in out["selected"]] == [2, 3]
    assert out["matched"] == 3 and out["capped"] == 1
    assert out["protected"] == dict(own=1, not_client=1, superuser=1, not_permitted=0)
    assert out["excluded"] == dict(state=1, age=1, application=1, user=0, database=0)


def test_zero_min_age_selects_regardless_of_age_but_still_never_ourselves():
    rows = [row(1, age=0), row(2, own=True)]
    assert [r["pid"] for r in pa.select_backends(rows, policy(min_age_seconds=0))["selected"]] == [1]


@pytest.mark.parametrize("kw,msg", [
    (dict(min_age_seconds=-1), "min_age_seconds must be >= 0"),
    (dict(states=[]), "states must name at least one"),
    (dict(max_count=0), "max_count must be >= 1"),
    (dict(exclude_users=[None]), "exclude_users must not contain a null pattern"),
    (dict(cancel_grace_seconds=-0.5), "cancel_grace_seconds must be >= 0"),
    (dict(wait_seconds=-1), "wait_seconds must be >= 0"),
])
def test_validate_policy_rejects_nonsense_with_one_line(kw, msg):
    with pytest.raises(P3Error) as e:
        policy(**kw)
    assert msg in e.value.msg and "\n" not in e.value.msg


def test_still_matches_needs_the_same_backend_still_old_enough_in_a_selected_state():
    p = policy()
    t = dict(pid=1, backend_start=row(1)["backend_start"])
    assert pa.still_matches(row(1), t, p)
    assert not pa.still_matches(None, t, p)
    assert not pa.still_matches(row(1, backend_start="2026-11-28 13:59:00+00"), t, p)  # pid reused
    assert not pa.still_matches(row(1, state="idle"), t, p)  # statement ended
    assert not pa.still_matches(row(1, age=0.2), t, p)  # a new statement


# ------------------------------------------------------------------------------------------------ signal SQL

def test_signal_sql_names_backends_by_pid_and_start_and_rechecks_every_guard():
    targets = [dict(pid=11, backend_start="2026-11-28 13:00:11+00"), dict(pid=12, backend_start="2026-11-28 13:00:12+00")]
    sql, params = pa.build_signal_sql("pg_terminate_backend", targets, policy(min_age_seconds=60, states=["active"]))
    assert params == dict(pids=[11, 12], starts=["2026-11-28 13:00:11+00", "2026-11-28 13:00:12+00"],
                          states=["active"], min_age=60.0)
    for guard in ("a.backend_type = 'client backend'", "a.pid <> pg_backend_pid()", "a.state = ANY(%(states)s)",
                  "NOT COALESCE(r.rolsuper, false)", "x.backend_start = a.backend_start", ">= %(min_age)s"):
        assert guard in sql, guard
    assert "MATERIALIZED" in sql and sql.rstrip().endswith("SELECT pid, pg_terminate_backend(pid) AS signalled FROM t")
    # psycopg2-style placeholders only: no stray % left for the driver to trip on
    assert sql.replace("%(pids)s", "").replace("%(starts)s", "").replace("%(states)s", "").replace("%(min_age)s", "").count("%") == 0


def test_signal_sql_materialized_keyword_only_from_postgresql_12():
    t = [dict(pid=1, backend_start="x")]
    assert "WITH t AS MATERIALIZED (" in pa.build_signal_sql("pg_terminate_backend", t, policy(), 150018)[0]
    assert "WITH t AS (" in pa.build_signal_sql("pg_terminate_backend", t, policy(), 110022)[0]


def test_signal_sql_superusers_only_when_asked_and_only_known_functions():
    sql, dummy = pa.build_signal_sql("pg_cancel_backend", [dict(pid=1, backend_start="x")], policy(include_superusers=True))
    assert "rolsuper" not in sql and "pg_cancel_backend(pid)" in sql
    with pytest.raises(ValueError):
        pa.build_signal_sql("pg_reload_conf", [], policy())


def test_age_sql_is_the_twin_of_backend_age():
    assert "'active', 'fastpath function call'" in pa.AGE_SQL and "query_start" in pa.AGE_SQL and "state_change" in pa.AGE_SQL
    assert set(pa.RUNNING_STATES) == {"active", "fastpath function call"}


# ------------------------------------------------------------------------------------------------ evidence

def test_usage_and_reserved_slot():
    rows = [row(i) for i in range(17)] + [row(99, own=True, superuser=True)]
    u = pa.usage(rows + [row(500, backend_type="checkpointer")], SETTINGS)
    assert (u["used"], u["max"], u["ordinary_max"], u["available"], u["usage_pct"]) == (18, 20, 17, 0, 90.0)
    assert u["via_reserved_slot"] is True
    assert pa.usage([row(1, own=True)], SETTINGS)["via_reserved_slot"] is False


def test_long_running_names_why_and_skips_our_own():
    rows = [row(1, age=400), row(2, "idle in transaction", query_age=900, state_age=350, xact_age=900),
            row(3, "idle", xact_age=None, state_age=5000), row(4, own=True, age=1000), row(5, age=10, xact_age=301)]
    lr = dict((r["pid"], why) for r, why in pa.long_running(rows, 300))
    assert lr == {1: ["query", "transaction"], 2: ["transaction", "idle_in_transaction"], 5: ["transaction"]}


def test_blocking_chains_find_the_root_and_count_everyone_behind_it():
    rows = [row(1, state="idle in transaction"), row(2, blocked_by=[1]), row(3, blocked_by=[2]), row(4, blocked_by=[1]),
            row(5)]
    waits, roots = pa.blocking_chains(rows)
    assert [(r["pid"], b) for r, b in waits] == [(2, [1]), (3, [2]), (4, [1])]
    assert roots == [(1, 3)]


def test_blocking_cycle_members_are_roots():
    rows = [row(1, blocked_by=[2]), row(2, blocked_by=[1])]
    roots = pa.blocking_chains(rows)[1]
    assert sorted(r[0] for r in roots) == [1, 2]


def test_evidence_marks_a_cut_query_and_hides_it_on_request():
    r = row(1, query="SELECT " + "x" * 10, query_chars=500)
    assert pa.evidence(r, 17)["query"].endswith("...")
    assert pa.evidence(r, 0)["query"] is None
    assert pa.evidence(row(1, query="SELECT\n  1"), 200)["query"] == "SELECT 1"


def test_connect_hint_says_to_use_a_superuser():
    msg = "cannot connect to h:1: remaining connection slots are reserved for non-replication superuser connections"
    assert "connect as a superuser" in pa.connect_hint(msg)
    assert pa.connect_hint("cannot connect to h:1: connection refused") == "cannot connect to h:1: connection refused"


def test_activity_analysis_is_one_verdict():
    params = dict(max_usage_pct=80, long_running_seconds=1, query_length=200, max_items=2)
    rows = [row(i, age=3) for i in range(17)] + [row(99, own=True, superuser=True, user="p3admin", app="p3-recovery")]
    res = pa.analyse_activity(rows, SETTINGS, params, "127.0.0.1:5432")
    assert res["healthy"] is False and res["changed"] is False
    assert res["reason"].startswith("connections 18/20 (90%) >= 80% on 127.0.0.1:5432; 17 long-running")
    assert "superuser-reserved slot" in res["reason"]
    assert len(res["long_running"]) == 2 and res["long_running_count"] == 17
    assert res["connections"]["by_application"] == {"p3-lab-leak": 17, "p3-recovery": 1}
    healthy = pa.analyse_activity(rows[:2] + rows[-1:], SETTINGS, params, "h:1")
    assert healthy["healthy"] is True and "3/20 (15%) < 80%" in healthy["reason"]


@pytest.mark.parametrize("kw,msg", [
    (dict(max_usage_pct=0), "max_usage_pct must be in (0, 100]"),
    (dict(max_usage_pct=150), "max_usage_pct must be in (0, 100]"),
    (dict(long_running_seconds=-1), "long_running_seconds must be >= 0"),
    (dict(query_length=-1), "query_length must be >= 0"),
])
def test_activity_rejects_nonsense(kw, msg):
    params = dict(max_usage_pct=80, long_running_seconds=300, query_length=200, max_items=20)
    params.update(kw)
    with pytest.raises(P3Error) as e:
        pa.validate_activity_params(params)
    assert msg in e.value.msg


# ------------------------------------------------------------------------------------------------ terminate flow

class FakeClient(object):
    """Answers the module's queries from a list of rows; records every statement; signals remove backends."""

    def __init__(self, rows):
        self.rows = rows
        self.statements = []

    def connect(self):
        return self

    def close(self):
        pass

    def query(self, sql, args=None, timeout=None):
        self.statements.append(sql)
        if sql is pa.SETTINGS_SQL:
            return [dict(SETTINGS)]
        if sql is pa.BACKENDS_SQL:
            return [dict(r) for r in self.rows]
        if sql is pa.TARGETS_SQL:
            return [dict(r) for r in self.rows if r["pid"] in args["pids"]]
        if "pg_terminate_backend(pid)" in sql or "pg_cancel_backend(pid)" in sql:
            hit = [r for r in self.rows if r["pid"] in args["pids"]]
            self.rows = [r for r in self.rows if r not in hit]
            return [dict(pid=r["pid"], signalled=True) for r in hit]
        raise AssertionError("unexpected SQL: %s" % sql)

    def scalar(self, sql, args=None, timeout=None):
        self.statements.append(sql)
        assert sql is pa.USAGE_SQL
        return len([r for r in self.rows if r["backend_type"] == "client backend"])


class FakeTarget(object):
    target = "127.0.0.1:5432"

    def __init__(self, client):
        self._client = client

    def client(self, query_timeout=None):
        return self._client


class FakeModule(object):
    def __init__(self, check_mode, **params):
        self.check_mode = check_mode
        self.params = dict(query_length=200, cancel_first=False, cancel_grace_seconds=0.2, wait_seconds=1)
        self.params.update(params)
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)


def _terminate(module, target, policy):
    """What postgres_terminate's main() does with its parsed options."""
    return pa.terminate(target.client(), target.target, policy, check_mode=module.check_mode, warn=module.warn,
                        **module.params)


def _rows():
    return ([row(i, age=10 + i) for i in range(1, 6)] + [row(50, app="p3-nightly-report", age=900)]
            + [row(99, own=True, superuser=True, user="p3admin")])


def test_check_mode_reports_exactly_the_selection_and_sends_no_signal():
    client = FakeClient(_rows())
    res = _terminate(FakeModule(True), FakeTarget(client), policy(exclude_applications=["p3-nightly-*"]))
    assert res["changed"] is True and res["check_mode"] is True
    assert [b["pid"] for b in res["selected"]] == [5, 4, 3, 2, 1]
    assert res["terminated"] == [] and res["connections_after"] is None
    assert not any("pg_terminate_backend(" in s or "pg_cancel_backend(" in s for s in client.statements)
    assert res["msg"].startswith("would terminate 5 backends on 127.0.0.1:5432 (p3-lab-leak: 5)")


def test_terminate_then_a_second_run_changes_nothing():
    client = FakeClient(_rows())
    p = policy(exclude_applications=["p3-nightly-*"])
    res = _terminate(FakeModule(False), FakeTarget(client), p)
    assert res["changed"] is True and res["terminated"] == [1, 2, 3, 4, 5] and res["still_alive"] == []
    assert res["connections_before"]["used"] == 7 and res["connections_after"]["used"] == 2
    assert "connections 7 -> 2 of 20" in res["msg"]
    again = _terminate(FakeModule(False), FakeTarget(client), p)
    assert again["changed"] is False and again["selected"] == [] and again["terminated"] == []
    assert again["msg"].startswith("nothing to terminate on 127.0.0.1:5432")
    assert "1 application filter" in again["msg"]


def test_cancel_first_counts_what_the_cancel_ended():
    client = FakeClient(_rows())
    res = _terminate(FakeModule(False, cancel_first=True), FakeTarget(client), policy(max_count=2))
    # the fake's cancel ends the backends, so nothing is left to terminate
    assert res["cancelled"] == [5, 50] and res["terminated"] == [] and res["changed"] is True
    assert any("pg_cancel_backend(" in s for s in client.statements)


# ------------------------------------------------------------------------------- per-role / per-database limits

def test_a_role_at_its_own_connection_limit_is_unhealthy_and_named():
    limit_rows = [dict(kind="role", name="p3app", limit=2, used=2), dict(kind="database", name="p3", limit=-1, used=5),
                  dict(kind="role", name="reporting", limit=10, used=1)]
    items = pa.connection_limits(limit_rows, 80)
    assert [(i["kind"], i["name"], i["state"]) for i in items] == [
        ("role", "p3app", "at_limit"), ("role", "reporting", "ok")]
    assert pa.limits_reason(items) == "role p3app at its CONNECTION LIMIT 2 (2/2)"
    near = pa.connection_limits([dict(kind="database", name="p3", limit=10, used=8)], 80)
    assert near[0]["state"] == "near_limit"
    assert pa.limits_reason(near) == "database p3 near its CONNECTION LIMIT 10 (8/10, 80%)"
    assert pa.limits_reason(pa.connection_limits([dict(kind="role", name="x", limit=10, used=7)], 80)) == ""
    # CONNECTION LIMIT 0 is a deliberate lock-out, not exhaustion
    assert pa.connection_limits([dict(kind="role", name="off", limit=0, used=0)], 80)[0]["state"] == "ok"


def test_activity_at_20_percent_of_max_connections_is_unhealthy_when_a_role_hits_its_limit():
    params = dict(max_usage_pct=80, long_running_seconds=300, query_length=200, max_items=5)
    rows = [row(1), row(2), row(3, user="p3admin", own=True, superuser=True)]
    res = pa.analyse_activity(rows, SETTINGS, params, "h:1", limits=[dict(kind="role", name="p3app", limit=2, used=2)])
    assert res["healthy"] is False and res["usage_pct"] == 15.0
    assert res["reason"].startswith("role p3app at its CONNECTION LIMIT 2 (2/2) on h:1; connections 3/20 (15%)")
    assert res["limits"] == [dict(kind="role", name="p3app", limit=2, used=2, usage_pct=100.0, state="at_limit")]
    assert res["limited"] == dict(roles=["p3app"], databases=[])


def test_connect_hint_names_a_role_or_database_limit():
    hint = pa.connect_hint('cannot connect to h:1: FATAL: too many connections for role "p3app"')
    assert "role p3app is at its CONNECTION LIMIT" in hint and "connect as a superuser" not in hint
    hint = pa.connect_hint('cannot connect to h:1: FATAL: too many connections for database "p3"')
    assert "database p3 is at its CONNECTION LIMIT" in hint


def test_policy_can_be_scoped_to_databases():
    p = policy(include_databases=["p3"])
    assert pa.policy_verdict(row(1, datname="other"), p) == "database"
    assert pa.policy_verdict(row(1, datname="p3"), p) is None


class BreaksAfterTerminate(FakeClient):
    """The connection drops right after the terminate was sent (reading the targets again fails)."""

    def query(self, sql, args=None, timeout=None):
        if sql is pa.TARGETS_SQL and any("pg_terminate_backend(" in s for s in self.statements):
            raise P3Error("query on 127.0.0.1:5432 failed: server closed the connection unexpectedly")
        return super(BreaksAfterTerminate, self).query(sql, args, timeout)


def test_terminations_followed_by_an_error_still_report_changed_and_what_was_terminated():
    client = BreaksAfterTerminate(_rows())
    with pytest.raises(P3Error) as err:
        _terminate(FakeModule(False), FakeTarget(client), policy(exclude_applications=["p3-nightly-*"]))
    assert err.value.details["changed"] is True
    assert err.value.details["terminated"] == [1, 2, 3, 4, 5]
    assert "after terminating 5 backends" in err.value.msg


def test_quick_diagnostics_postgres_probe_judges_role_limits():
    from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d

    class Client(object):
        def connect(self):
            return self

        def close(self):
            pass

        def scalar(self, sql, args=None, timeout=None):
            return 1

        def query(self, sql, args=None, timeout=None):
            if sql is d.PG_SETTINGS_SQL:
                return [dict(SETTINGS)]
            if sql is d.PG_ACTIVITY_SQL:
                return [dict(state="active", application_name="app", usename="p3app", n=2, longest_active_seconds=3.0),
                        dict(state="active", application_name="p3", usename="p3admin", n=1,
                             longest_active_seconds=None)]
            if sql is pa.LIMITS_SQL:
                return [dict(kind="role", name="p3app", limit=2, used=2)]
            raise AssertionError(sql)

    class Target(object):
        target = "h:1"

        def client(self):
            return Client()

    res = d.postgres_probe(Target(), 80)
    assert res["healthy"] is False and res["usage_pct"] == 15.0
    assert res["reason"].startswith("role p3app at its CONNECTION LIMIT 2 (2/2) on h:1")
    assert res["limited"] == dict(roles=["p3app"], databases=[])


def test_the_postgres_modules_are_thin():
    """Issue 16 §4: the PostgreSQL logic lives in module_utils/pg_activity.py; the modules parse options and call it."""
    import ast
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "modules")
    for name in ("postgres_activity", "postgres_terminate"):
        tree = ast.parse(open(os.path.join(root, name + ".py")).read())
        assert [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))] == ["main"], name
