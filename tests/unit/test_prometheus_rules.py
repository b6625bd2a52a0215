"""The exported Prometheus alerting rules are valid and do what they say (issue 19 §2).

export_alerts.yml renders the rules with the role's production defaults into a temporary directory; then
`promtool check rules` must accept the file and `promtool test rules` runs tests/promtool/*.test.yml against it
(synthetic series per alert: fires above its threshold, silent at or below, not before `for:`). promtool comes from
Debian's `prometheus` package (scripts/setup.sh installs it).
"""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)
PROMTOOL_TESTS = os.path.join(ROOT, "tests", "promtool")
RULES = "p3-recovery.rules.yml"


def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/setup.sh does)")
    return path


def export(out, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               P3_INCIDENT_DIR=str(out / "incidents"), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "p3_alert_export_dir=%s" % out,
           os.path.join(ROOT, "playbooks", "export_alerts.yml")]
    for e in extra:
        cmd[-1:-1] = ["-e", e]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out / RULES


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export(tmp_path_factory.mktemp("alerts"))


def test_exported_rules_pass_promtool_check(exported):
    proc = subprocess.run([promtool(), "check", "rules", str(exported)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and "SUCCESS: 7 rules found" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_every_alert(exported):
    tests = sorted(f for f in os.listdir(PROMTOOL_TESTS) if f.endswith(".test.yml"))
    assert tests
    covered = set()
    for name in tests:
        shutil.copy(os.path.join(PROMTOOL_TESTS, name), str(exported.parent / name))
        with open(os.path.join(PROMTOOL_TESTS, name)) as fh:
            for case in yaml.safe_load(fh)["tests"]:
                for t in case.get("alert_rule_test") or []:
                    if t.get("exp_alerts"):
                        covered.add(t["alertname"])
    proc = subprocess.run([promtool(), "test", "rules"] + tests, cwd=str(exported.parent), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load(exported.read_text())["groups"][0]["rules"]
    # every exported alert has a test that sees it fire
    assert covered == set(r["alert"] for r in rules)


def test_rule_labels_are_constant_and_name_the_scenario(exported):
    """Labels make an alert's fingerprint: no value template in them; every rule names its scenario and the
    runbook section; memory pressure is its own scenario, not the Redis partition's."""
    rules = yaml.safe_load(exported.read_text())["groups"][0]["rules"]
    for r in rules:
        assert set(r["labels"]) == {"severity", "scenario"}, r
        assert not any("{{" in str(v) for v in r["labels"].values()), r
        assert r["annotations"]["runbook"], r
    scen = dict((r["alert"], r["labels"]["scenario"]) for r in rules)
    assert scen["redis_memory_high"] == "redis_memory" and scen["redis_node_down"] == "redis"
    assert len(set(scen.values())) == len(scen)


def test_lab_intervals_and_upstream_metric_gaps(tmp_path):
    """The lab's short settings go into the file (group interval, for:), and a rule whose metric does not exist
    (P3's own server: no auth-failure or peer metric, profiles/p3-upstream.yml) is left out, not written broken."""
    path = export(tmp_path, "p3_alert_for=5s", "p3_alert_down_for=3s", "p3_alert_eval_interval=1s",
                  "p3_alert_rate_window=30s", "@" + os.path.join(ROOT, "profiles", "p3-upstream.yml"))
    group = yaml.safe_load(path.read_text())["groups"][0]
    assert group["interval"] == "1s"
    names = [r["alert"] for r in group["rules"]]
    assert "mesh_peer_count_low" not in names and "session_auth_failure_rate" not in names
    assert {"database_connection_high", "app_down", "redis_node_down"} <= set(names)
    assert set(r["for"] for r in group["rules"]) == {"5s", "3s"}
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
