"""Unit tests of the alert filters (drift_check): rule evaluation, summary, Redis memory observation."""
import pytest

from ansible_collections.p3.recovery.plugins.filter.alerts import (
    alert_summary,
    alert_table,
    evaluate_alerts,
    observation,
    redis_memory_usage,
)

RULES = [
    {"name": "mesh_peer_count_low", "observe": "peer_count", "op": "<", "threshold": "10", "unit": "", "severity": "SEV-3"},
    {"name": "anchor_queue_backup", "observe": "queue_depth", "op": ">", "threshold": 1000, "unit": "", "severity": "SEV-2"},
    {"name": "database_connection_high", "observe": "db_pct", "op": ">", "threshold": 80, "unit": "%", "severity": "SEV-3"},
]


def test_firing_ok_and_unknown():
    alerts = evaluate_alerts(RULES, {
        "peer_count": {"value": 3, "source": "pulse"},
        "queue_depth": {"value": 1000, "source": "bullmq"},  # not above the threshold: equal is ok
        "db_pct": {"value": None, "source": "connection refused"},
    })
    assert [(a["name"], a["firing"]) for a in alerts] == [
        ("mesh_peer_count_low", True), ("anchor_queue_backup", False), ("database_connection_high", None)]
    assert alerts[0]["reason"] == "3 FIRING (peer_count < 10) from pulse" and alerts[0]["threshold"] == 10.0
    assert alerts[2]["reason"] == "unknown: connection refused"
    summary = alert_summary(alerts)
    assert summary == {"healthy": False, "firing": ["mesh_peer_count_low"], "unknown": ["database_connection_high"],
                       "severity": "SEV-3"}
    assert alert_table(alerts)[1].split()[:3] == ["mesh_peer_count_low", "FIRING", "SEV-3"]
    assert alert_table(alerts)[3].split()[:2] == ["database_connection_high", "UNKNOWN"]


def test_worst_severity_and_all_clear():
    alerts = evaluate_alerts(RULES, {"peer_count": {"value": 0}, "queue_depth": {"value": 5000}, "db_pct": {"value": 12.5}})
    assert alert_summary(alerts)["severity"] == "SEV-2"
    clear = evaluate_alerts(RULES, {"peer_count": {"value": 12}, "queue_depth": {"value": 0}, "db_pct": {"value": 5}})
    assert alert_summary(clear) == {"healthy": True, "firing": [], "unknown": [], "severity": None}
    assert evaluate_alerts(RULES[:1], {})[0]["firing"] is None  # never measured is unknown, not ok


def test_bad_operator_is_refused():
    with pytest.raises(ValueError, match="op must be one of"):
        evaluate_alerts([dict(RULES[0], op="~")], {})


def test_redis_memory_against_maxmemory_or_the_host():
    topo = {"nodes": [
        {"address": "a:1", "reachable": True, "used_memory": 50 * 1048576, "maxmemory": 100 * 1048576},
        {"address": "b:2", "reachable": True, "used_memory": 10 * 1048576, "maxmemory": 0, "total_system_memory": 1024 * 1048576},
        {"address": "c:3", "reachable": False, "used_memory": None, "maxmemory": None},
    ]}
    assert redis_memory_usage(topo) == {"value": 50.0, "source": "a:1: 50.0 MiB of maxmemory 100.0 MiB"}
    topo["nodes"][0]["used_memory"] = 524288  # 0.5 % of its maxmemory
    usage = redis_memory_usage(topo)  # b:2 now uses the most: 10 MiB of a 1 GiB host (no maxmemory)
    assert usage["value"] == 0.98 and usage["source"] == "b:2: 10.0 MiB of system memory (maxmemory 0) 1024.0 MiB"
    failed = redis_memory_usage({"failed": True, "msg": "no Redis node answered:\n 127.0.0.1:1 refused"})
    assert failed == {"value": None, "source": "no Redis node answered: 127.0.0.1:1 refused"}


def test_observation_from_probe_results():
    assert observation({"skipped": True}, "peers") == {}
    assert redis_memory_usage({"skipped": True}) == {}
    assert observation({"healthy": True, "peers": 12, "reason": "12 peers"}, "peers") == {"value": 12, "source": "12 peers"}
    # a healthy probe without a value: the stand-in; an unhealthy one stays unknown with its reason
    assert observation({"healthy": True, "failure_pct": None, "reason": "no request"}, "failure_pct", 0)["value"] == 0
    failed = observation({"healthy": False, "failure_pct": None, "msg": "GET x failed:\n refused"}, "failure_pct", 0)
    assert failed == {"value": None, "source": "GET x failed: refused"}
