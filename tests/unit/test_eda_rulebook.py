"""Issue 19 §3: the shipped rulebooks are the export of roles/drift_check/templates/eda-rulebook.yml.j2 with the
role's defaults (one source), valid for ansible-rulebook, wired to the collection's own source and eda_respond, with
a throttle per alert episode; and each alert's response fits its cause (memory pressure -> a memory report, never a
failover)."""
import os

import jinja2
import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RULEBOOKS = os.path.join(ROOT, "extensions", "eda", "rulebooks")
DEFAULTS = yaml.safe_load(open(os.path.join(ROOT, "roles", "drift_check", "defaults", "main.yml")))


def render(action):
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    text = open(os.path.join(ROOT, "roles", "drift_check", "templates", "eda-rulebook.yml.j2")).read()
    values = dict((k, v) for k, v in DEFAULTS.items() if k.startswith("p3_alert_eda_"))
    values["p3_alert_eda_action"] = action
    return env.from_string(text).render(**values)


@pytest.mark.parametrize("name, action", [("p3_recovery.yml", "run_playbook"),
                                          ("p3_recovery_controller.yml", "run_job_template")])
def test_the_shipped_rulebooks_are_the_export_of_the_template(name, action):
    assert open(os.path.join(RULEBOOKS, name)).read() == render(action), (
        "extensions/eda/rulebooks/%s differs from the template: re-export it (docs/eda.md)" % name)


@pytest.mark.parametrize("name", ["p3_recovery.yml", "p3_recovery_controller.yml"])
def test_the_rulebooks_are_valid_and_safe(name):
    from ansible_rulebook.validators import Validate

    book = yaml.safe_load(open(os.path.join(RULEBOOKS, name)))
    Validate.rulebook(book)  # ansible-rulebook's own schema
    [ruleset] = book
    [source] = ruleset["sources"]
    assert list(source) == ["p3.recovery.alertmanager"]
    rules = dict((r["condition"], r) for r in ruleset["rules"])
    firing = rules['event.alert.status == "firing"']
    assert firing["throttle"]["group_by_attributes"] == ["event.alert.fingerprint", "event.alert.startsAt"]
    assert firing["throttle"]["once_within"] == "%d seconds" % DEFAULTS["p3_alert_eda_window"]
    assert 'event.alert.status == "resolved"' in rules and "throttle" not in rules['event.alert.status == "resolved"']
    for rule in ruleset["rules"]:
        [(kind, action)] = rule["action"].items()
        if kind == "run_playbook":
            assert action["name"] == "p3.recovery.eda_respond"
            assert os.path.exists(os.path.join(ROOT, "playbooks", "eda_respond.yml"))
            extra = action["extra_vars"]
        else:
            assert kind == "run_job_template" and action["name"] == DEFAULTS["p3_alert_eda_job_template"]
            extra = action["job_args"]["extra_vars"]
        assert "event.alert.fingerprint" in extra["p3_incident_id"]


def test_the_source_is_where_ansible_rulebook_looks_for_it():
    assert os.path.exists(os.path.join(ROOT, "extensions", "eda", "plugins", "event_source", "alertmanager.py"))


def test_memory_pressure_gets_a_memory_report_never_a_failover():
    """Issue 19: redis_memory_high was mapped to recover_redis, which fails over and frees no memory."""
    rules = dict((r["name"], r) for r in DEFAULTS["p3_alert_rules"])
    assert rules["redis_memory_high"]["playbook"] == "p3.recovery.redis_memory_report"
    assert "p3.recovery.redis_memory_report" in DEFAULTS["p3_alert_eda_read_only"]
    play = open(os.path.join(ROOT, "playbooks", "redis_memory_report.yml")).read()
    assert "failover" not in yaml.safe_dump(yaml.safe_load(play)).lower().replace("never a failover", "")
    for rule in rules.values():  # every mapped response exists
        assert os.path.exists(os.path.join(ROOT, "playbooks", rule["playbook"].split(".")[-1] + ".yml")), rule


def test_nothing_destructive_is_allowed_unattended_by_default():
    assert DEFAULTS["p3_alert_eda_allow"] == []
    read_only = set(DEFAULTS["p3_alert_eda_read_only"])
    assert read_only <= {"p3.recovery.redis_memory_report", "p3.recovery.diagnose"}
