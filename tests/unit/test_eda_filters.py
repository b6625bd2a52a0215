"""Issue 19 §3-§4: the EDA loop's pure transforms - what a response run did (from ansible-playbook's output), the
outcome in words, the Slack-compatible notification - and the memory report's aggregation."""
import json

from ansible_collections.p3.recovery.plugins.filter.eda import (eda_notification, eda_outcome, eda_response,
                                                                eda_run_summary, memory_lines)
from ansible_collections.p3.recovery.plugins.module_utils.redis_memory import aggregate, key_prefix, shown_key

CHECK_RUN = """
PLAY [Recover sessions] ********************************************************

TASK [p3.recovery.session_bridge : Diagnose - census] **************************
ok: [localhost]

TASK [p3.recovery.session_bridge : Act - purge sessions (SCAN per master, bounded pages, backup of every removed key)] ***
changed: [localhost] => {
    "changed": true,
    "msg": "would purge 20 corrupt sessions"
}

TASK [p3.recovery.session_bridge : Show what was seen, done and verified] *****
ok: [localhost] => {
    "msg": [
        "decision: 20 corrupt sessions > 0: purge them",
        "restart: check mode"
    ]
}

TASK [Something optional] *****************************************************
fatal: [localhost]: FAILED! => {"changed": false, "msg": "boom"}
...ignoring

PLAY [Incident record - publish this run's record for AWX (set_stats p3_incident)] ***

TASK [p3.recovery.incident_record : Show the incident record] ******************
ok: [localhost] => {
    "msg": "incident none (none)"
}

PLAY RECAP *********************************************************************
localhost                  : ok=5    changed=1    unreachable=0    failed=0    skipped=0    rescued=0    ignored=1
"""

FAILED_RUN = """
TASK [p3.recovery.database : Act - terminate] ***
fatal: [localhost]: FAILED! => {"changed": false, "msg": "database 127.0.0.1:5432: connection refused"}

PLAY RECAP *********************************************************************
localhost                  : ok=3    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
"""


def guard(decision, **kw):
    a = dict(name="recover_me", fingerprint="f00d", status="firing", startsAt="2026-12-06T19:00:00Z")
    g = dict(decision=decision, act=decision == "act", check=decision == "plan", changed=True,
             reason="the guard's reason", alert=a,
             breaker=dict(resource="p3.recovery.recover_sessions", recent=1, max=3, window=1800, open=False))
    g.update(kw)
    return g


def test_a_check_run_gives_its_plan():
    s = eda_run_summary(CHECK_RUN)
    assert s["parsed"] and s["ok"] and s["changed"] and not s["failed"]
    assert [t["task"] for t in s["changed_tasks"]] == [
        "p3.recovery.session_bridge : Act - purge sessions (SCAN per master, bounded pages, backup of every removed key)"]
    assert s["changed_tasks"][0]["msg"] == "would purge 20 corrupt sessions"
    assert s["summary"] == "decision: 20 corrupt sessions > 0: purge them; restart: check mode"  # not the record's
    assert s["failed_tasks"][0]["msg"] == "boom" and s["stats"]["localhost"]["changed"] == 1


def test_a_failed_run_and_no_output_are_failures():
    s = eda_run_summary(FAILED_RUN)
    assert s["failed"] and not s["ok"] and "connection refused" in s["failed_tasks"][0]["msg"]
    assert eda_run_summary("")["parsed"] is False and not eda_run_summary(None)["ok"]


def test_the_outcome_of_a_plan_names_what_would_change_and_is_notified():
    o = eda_outcome(guard("plan"), eda_response({"name": "x", "playbook": "p3.recovery.recover_sessions"}),
                    {"rc": 0, "stdout": CHECK_RUN, "stderr": ""})
    assert o["ran"] == "check" and o["notify"] and o["plan"][0]["task"].endswith("backup of every removed key)")
    assert "not allowed to act unattended" in o["text"] and "Act - purge sessions" in o["text"]
    body = eda_notification(o, "#oncall")
    assert body["text"].startswith("[p3.recovery EDA] recover_me planned")
    assert body["channel"] == "#oncall" and body["attachments"][0]["color"] == "warning"
    assert body["annotations"]["summary"] and body["annotations"]["description"] == o["text"]
    assert body["p3_eda"]["decision"] == "plan" and body["p3_eda"]["plan"]
    json.dumps(body)  # JSON as it is posted


def test_refusals_and_failures_are_told_duplicates_are_not():
    o = eda_outcome(guard("refused", reason="circuit breaker open for x: 3 responses"), {"playbook": "p"}, None)
    assert o["notify"] and o["text"].endswith("REFUSED - circuit breaker open for x: 3 responses")
    assert eda_notification(o)["attachments"][0]["color"] == "danger"
    assert not eda_outcome(guard("duplicate", changed=False), {"playbook": "p"}, None)["notify"]
    failed = eda_outcome(guard("act"), {"playbook": "p3.recovery.recover_database"}, {"rc": 2, "stdout": FAILED_RUN})
    assert failed["failed"] and "FAILED" in failed["text"] and "connection refused" in failed["text"]
    unmapped = eda_outcome(guard("act"), {}, None)
    assert "no response is mapped" in unmapped["text"] and unmapped["ran"] == "none"


def test_the_response_of_a_rule_defaults_its_resource_to_the_playbook():
    assert eda_response({"name": "a", "playbook": "p3.recovery.recover_mesh"}) == {
        "playbook": "p3.recovery.recover_mesh", "resource": "p3.recovery.recover_mesh"}
    assert eda_response({"playbook": "p", "resource": "redis-memory"})["resource"] == "redis-memory"


def test_memory_is_summed_by_prefix_and_key_names_are_hashed():
    samples = [("n1", "session:aaa", 100), ("n1", "session:bbb", 300), ("n2", "{bull}:anchor:1", 50),
               ("n2", "plain", 1000)]
    top, prefixes = aggregate(samples, top=2)
    assert [(p["prefix"], p["keys"], p["bytes"], p["max_bytes"]) for p in prefixes] == [
        ("plain", 1, 1000, 1000), ("session", 2, 400, 300)]
    assert top[0] == {"key": "plain", "bytes": 1000, "node": "n1".replace("1", "2")}
    assert top[1]["key"].startswith("session:#") and "bbb" not in top[1]["key"]
    assert aggregate(samples, top=1, show_keys=True)[0][0]["key"] == "plain"
    assert key_prefix("{bull}:anchor:1", depth=2) == "{bull}:anchor" and key_prefix("a") == "a"
    assert shown_key("session:x", show=True) == "session:x"
    lines = memory_lines({"reason": "r", "nodes": [{"address": "n1", "used_memory": 1048576, "maxmemory": 0,
                                                   "keys": 2, "sampled": 2}],
                          "prefixes": prefixes, "top_keys": top})
    assert lines[0] == "r" and "unlimited" in lines[1] and any("session" in x for x in lines)
