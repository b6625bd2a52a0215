"""Unit tests of the triage with the diagnose role's own maps (roles/diagnose/defaults/main.yml): every scenario
playbook is the recommendation when its check is the root cause, dependencies suppress consequences, and the
severity follows the runbook's incident table (SEV-1 database down / all auth failing; SEV-2 mesh relay down /
payments failing; SEV-3 slow queries; SEV-4 minor). Also the pure verdicts of the new signals."""
import importlib.util
import os

import pytest
import yaml

from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
_spec = importlib.util.spec_from_file_location("p3_verdicts_t", os.path.join(ROOT, "plugins", "filter", "verdicts.py"))
verdicts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verdicts)

with open(os.path.join(ROOT, "roles", "diagnose", "defaults", "main.yml")) as f:
    DEFAULTS = yaml.safe_load(f)
with open(os.path.join(ROOT, "roles", "diagnose", "vars", "main.yml")) as f:
    VARS = yaml.safe_load(f)

# The checks in the order the role lists them (vars/main.yml), read from the role itself.
ORDER = [line.split("to_check('")[1].split("'")[0] for line in VARS["__p3_diag_checks"]]


def triage(*red, **reasons):
    checks = [{"name": n, "healthy": n not in red, "reason": reasons.get(n, "ok" if n not in red else "bad")}
              for n in ORDER]
    return verdicts.triage(checks, DEFAULTS["p3_check_severity"], DEFAULTS["p3_check_scenario"],
                           DEFAULTS["p3_check_depends"])


def test_the_role_lists_every_check_in_the_runbooks_recovery_order():
    assert ORDER == ["database", "slow_queries", "redis", "health", "handshake", "sessions", "auth", "pulse", "mesh",
                     "metrics", "anchor_worker", "wallet", "anchor_queue"]
    for name in ORDER:
        assert name in DEFAULTS["p3_check_severity"], name


def test_every_scenario_playbook_can_be_recommended():
    scenarios = set(DEFAULTS["p3_check_scenario"].values())
    playbooks = set("p3.recovery." + p[:-4] for p in os.listdir(os.path.join(ROOT, "playbooks")))
    assert scenarios <= playbooks
    for name in ("recover_database", "recover_redis", "recover_sessions", "recover_mesh", "recover_anchor",
                 "restart_app"):
        assert "p3.recovery." + name in scenarios, name


# scenario: (failing checks, the root causes, recommended playbooks, severity)
SCENARIOS = {
    # SEV-1 "database down": everything that needs the database fails with it; only the database is fixed first.
    "database down": (["database", "slow_queries", "health", "handshake", "auth", "anchor_queue"], ["database"],
                      ["recover_database"], "SEV-1"),
    # database exhaustion: the runbook's scenario 4; the long-running statements are part of it.
    "database exhaustion": (["database", "slow_queries"], ["database"], ["recover_database"], "SEV-1"),
    # SEV-3 "slow queries": the database answers, a statement runs too long.
    "slow queries": (["slow_queries"], ["slow_queries"], ["recover_database"], "SEV-3"),
    "redis master down": (["redis"], ["redis"], ["recover_redis"], "SEV-2"),
    # Redis down takes the app's health and the sessions with it: one fix (the handshake failing is SEV-1).
    "redis down, auth failing": (["redis", "health", "handshake", "sessions", "pulse", "anchor_worker"], ["redis"],
                                 ["recover_redis"], "SEV-1"),
    "app down": (["health", "handshake", "auth", "pulse", "metrics", "anchor_worker"], ["health"], ["restart_app"],
                 "SEV-1"),
    # SEV-1 "all auth failing": the app and its stores answer, nobody can log in.
    "all auth failing": (["handshake", "auth"], ["handshake"], ["recover_sessions"], "SEV-1"),
    "sessions corrupt": (["sessions", "auth"], ["sessions"], ["recover_sessions"], "SEV-2"),
    "auth failure rate": (["auth"], ["auth"], ["recover_sessions"], "SEV-2"),
    # SEV-2 "mesh relay down".
    "mesh relay down": (["pulse"], ["pulse"], ["recover_mesh"], "SEV-2"),
    # P3 as coded (probe mesh): a message relayed through its global relay does not come back.
    "mesh relay not delivering": (["mesh"], ["mesh"], ["recover_mesh"], "SEV-2"),
    # P3's API frozen (every /api/* request waits on the database): the relay fails with the health endpoint.
    "api frozen": (["health", "handshake", "mesh"], ["health"], ["restart_app"], "SEV-1"),
    # SEV-2 "payments failing": the anchor backlog with a worker present, the wallet empty, no worker at all.
    "anchor backlog": (["anchor_queue"], ["anchor_queue"], ["recover_anchor"], "SEV-2"),
    "wallet empty": (["wallet", "anchor_queue"], ["wallet"], ["recover_anchor"], "SEV-2"),
    "anchor worker absent": (["anchor_worker", "anchor_queue"], ["anchor_worker"], ["restart_app"], "SEV-2"),
    # SEV-4 minor: the metrics endpoint alone; nothing to run.
    "metrics broken": (["metrics"], ["metrics"], [], "SEV-4"),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_root_cause_recommendation_and_severity(name):
    red, roots, playbooks, severity = SCENARIOS[name]
    t = triage(*red)
    assert t["failing"] == [n for n in ORDER if n in red]
    assert t["root_causes"] == roots, t
    assert sorted(t["consequences"]) == sorted(set(red) - set(roots))
    assert t["scenarios"] == ["p3.recovery." + p for p in playbooks], t
    assert t["severity"] == severity
    assert t["response_time"] == {"SEV-1": "Immediate", "SEV-2": "15 minutes", "SEV-3": "1 hour",
                                  "SEV-4": "4 hours"}[severity]


def test_two_independent_root_causes_come_in_recovery_order():
    t = triage("anchor_queue", "pulse", "slow_queries")
    assert t["root_causes"] == ["slow_queries", "pulse", "anchor_queue"]
    assert t["scenarios"] == ["p3.recovery.recover_database", "p3.recovery.recover_mesh", "p3.recovery.recover_anchor"]
    assert t["severity"] == "SEV-2"


def test_root_causes_are_named_with_their_reason():
    why = "anchor worker absent: queue anchor-batch:us has no worker (no BullMQ worker connection on 10.0.0.5:6379)"
    t = triage("anchor_worker", "anchor_queue", anchor_worker=why)
    [cause] = t["causes"]
    assert cause["check"] == "anchor_worker" and cause["reason"] == why
    assert cause["scenario"] == "p3.recovery.restart_app" and cause["severity"] == "SEV-2"
    assert cause["line"] == "anchor_worker (SEV-2): %s -> p3.recovery.restart_app" % why
    assert triage("metrics")["causes"][0]["line"] == "metrics (SEV-4): bad"


def test_skipped_checks_are_neither_failing_nor_dependencies():
    checks = [{"name": "database", "healthy": None, "reason": "skipped"},
              {"name": "health", "healthy": False, "reason": "500"}]
    t = verdicts.triage(checks, DEFAULTS["p3_check_severity"], DEFAULTS["p3_check_scenario"],
                        DEFAULTS["p3_check_depends"])
    assert t["root_causes"] == ["health"] and t["scenarios"] == ["p3.recovery.restart_app"]


# ---- the pure verdicts of the new signals

def test_worker_verdict_names_the_queue_when_no_worker_serves_it():
    v = d.worker_verdict("anchor-batch:us", 0, "127.0.0.1:6379")
    assert v["healthy"] is False
    assert v["reason"].startswith("anchor worker absent: queue anchor-batch:us has no worker")
    assert d.worker_verdict("anchor", 2)["healthy"] is True
    unknown = d.worker_verdict("anchor", None)
    assert unknown["healthy"] is True and "not known" in unknown["reason"]


def _row(pid, state, query_age, app="p3app", query="SELECT pg_sleep(600)", own=False, xact_age=None):
    return dict(pid=pid, backend_type="client backend", state=state, query_age=query_age, state_age=query_age,
                xact_age=xact_age, application_name=app, usename="p3app", query=query, query_chars=len(query),
                own=own, backend_start="2026-01-01")


def test_slow_queries_are_running_statements_past_the_threshold():
    rows = [_row(1, "active", 12.0), _row(2, "active", 1.0), _row(3, "idle", 500.0),
            _row(4, "idle in transaction", 900.0, xact_age=900.0), _row(5, "active", 99.0, own=True),
            _row(6, "active", 30.0, query="UPDATE t SET x = 1")]
    v = d.slow_queries_verdict(rows, 10, "db:5432")
    assert v["healthy"] is False and v["count"] == 2
    assert [q["pid"] for q in v["queries"]] == [6, 1]
    assert v["reason"].startswith("2 statements running >= 10s on db:5432 (oldest 30.0s, pid 6, p3app: UPDATE")
    ok = d.slow_queries_verdict(rows, 100, "db:5432")
    assert ok["healthy"] is True and ok["count"] == 0


AUTH_METRICS = """# TYPE api_requests_total counter
api_requests_total{method="POST",endpoint="/api/x",status="200"} 90
api_requests_total{method="GET",endpoint="/api/y",status="401"} 10
"""


def test_auth_rate_counts_401s_of_the_requests_metric_when_no_failure_counter():
    failures, requests = d.auth_counts(AUTH_METRICS, failures_metric="")
    assert (failures, requests) == (10, 100)
    v = d.auth_rate_verdict(failures, requests, 5)
    assert v["healthy"] is False and v["failure_pct"] == 10.0
    assert d.auth_rate_verdict(0, 0, 5)["healthy"] is True
    with pytest.raises(d.P3Error, match="p3_auth_failures_total not exposed"):
        d.auth_counts(AUTH_METRICS)


def test_census_verdict():
    res = dict(nodes=[{}, {}, {}], by_reason={"not-json": 5, "no-ttl": 5}, corrupt=10, keys=60, unreadable=[],
               errors=[])
    v = d.census_verdict(res, 0)
    assert v["healthy"] is False and v["reason"] == "10 corrupt of 60 sessions on 3 masters (no-ttl 5, not-json 5) > 0"
    assert d.census_verdict(dict(res, corrupt=0, by_reason={}), 0)["healthy"] is True


class _Clients(object):
    def __init__(self, names, error=None):
        self.names, self.error = names, error

    def client_list(self):
        if self.error:
            raise self.error
        return [{"id": str(i), "name": n} for i, n in enumerate(self.names)]


def test_worker_connections_follow_bullmqs_getworkers_for_the_upstream_queue_name():
    from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue

    # P3 as coded: queue anchor-batch:us, prefix bull. Node BullMQ names a worker's connections
    # <prefix>:<base64 of the queue>, or with a worker name <prefix>:<base64>:w:<name>; QueueEvents uses :qe and a
    # Queue names nothing: neither is a worker (queue-getters.js getWorkers of bullmq 6.7.0).
    q = BullQueue(None, "anchor-batch:us", "bull")
    b64 = "bull:YW5jaG9yLWJhdGNoOnVz"
    q.client = _Clients([b64, b64 + ":w:anchor-1", b64 + ":qe", "bull:YW5jaG9y", "", "bull:anchor-batch:us:x"])
    assert q.worker_names() == [b64, b64 + ":w:anchor-1"]
    q.client = _Clients([b64 + ":qe", ""])
    assert q.worker_names() == []
    # The Python bullmq names them <prefix>:<queue>, as the lab app's worker does.
    lab = BullQueue(None, "anchor", "{bull}")
    lab.client = _Clients(["{bull}:anchor", "{bull}:anchor", "{bull}:anchorx"])
    assert len(lab.worker_names()) == 2
    lab.client = _Clients([], error=Exception("NOPERM this user has no permissions to run the 'client|list' command"))
    assert lab.worker_names() is None
