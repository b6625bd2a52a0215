"""lab/p3lablib/monitoring.py: the generated Prometheus/Alertmanager/supervisor configuration and the rule check
(pure; the real processes run in tests/integration/test_alert_loop.py)."""
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))

from p3lablib import monitoring as mon  # noqa: E402
from p3lablib.common import REDIS_PASSWORD, Lab, LabError  # noqa: E402


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("P3LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("P3LAB_BASE_PORT", "15000")
    L = Lab()
    mon.remember(L, {"webhook_url": "http://127.0.0.1:15057/alerts", "token_file": str(tmp_path / "tok")})
    return Lab()


def test_ports_and_mode(lab):
    assert lab.monitoring
    assert mon.program_ports(lab) == [15050, 15051, 15052, 15058]
    assert set(mon.program_ports(lab)) <= set(lab.all_ports())
    # set_mode (up --app/--app-instances) keeps the monitoring setting
    lab.set_mode("lab", "working", 2)
    assert lab.monitoring and lab.app_instances == 2
    mon.remember(lab, None)
    assert not Lab().monitoring and 15050 not in Lab().all_ports()


def test_prometheus_scrapes_app_every_redis_node_and_postgres(lab):
    conf = yaml.safe_load(mon.prometheus_config(lab, mon.Paths(lab)))
    jobs = dict((j["job_name"], j) for j in conf["scrape_configs"])
    assert jobs["p3-app"]["static_configs"][0]["targets"] == ["127.0.0.1:15030"]
    redis = jobs["redis"]
    assert redis["metrics_path"] == "/scrape"
    assert redis["static_configs"][0]["targets"] == ["redis://127.0.0.1:%d" % p for p in range(15001, 15007)]
    # one exporter, many nodes: the target becomes ?target= and the node's instance label, the address the exporter
    relabel = redis["relabel_configs"]
    assert {"source_labels": ["__address__"], "target_label": "__param_target"} in relabel
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in relabel
    assert {"target_label": "__address__", "replacement": "127.0.0.1:15052"} in relabel
    assert jobs["postgres"]["static_configs"][0]["targets"] == ["127.0.0.1:15058"]
    assert conf["rule_files"] == [os.path.join(mon.Paths(lab).rules_dir, "*.rules.yml")]
    assert conf["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:15051"]
    assert conf["global"]["evaluation_interval"] == "1s"


def test_alertmanager_posts_every_alert_with_the_token_from_a_file(lab, tmp_path):
    conf = yaml.safe_load(mon.alertmanager_config(lab, mon.settings(lab)))
    assert conf["route"]["group_by"] == ["..."]  # one notification group per alert
    hook = conf["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:15057/alerts" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(tmp_path / "tok")}


def test_no_secret_on_a_command_line(lab):
    text = mon.program_sections(lab)
    commands = [ln for ln in text.splitlines() if ln.startswith("command=")]
    assert len(commands) == 4
    for c in commands:
        assert REDIS_PASSWORD not in c and "p3admin-lab-secret" not in c and "127.0.0.1:" in c
    assert "--cluster.listen-address=" in text  # no Alertmanager HA port on 9094


def test_token_file_is_made_once_private_and_a_given_one_must_hold_a_token(lab, tmp_path):
    paths = mon.Paths(lab)
    os.makedirs(paths.dir)
    path = mon.token_file(paths)
    first = open(path).read()
    assert len(first.strip()) >= 32 and os.stat(path).st_mode & 0o077 == 0
    assert mon.token_file(paths) == path and open(path).read() == first
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(LabError, match="empty"):
        mon.token_file(paths, str(empty))
    with pytest.raises(LabError, match="No such file"):
        mon.token_file(paths, str(tmp_path / "missing"))


def test_a_bad_rules_file_is_refused_in_one_line_naming_file_and_cause(tmp_path):
    bad = tmp_path / "bad.rules.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: broken\n        expr: sum(rate(x[5m])\n")
    with pytest.raises(LabError) as e:
        mon.check_rules(str(bad))
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "promtool" in msg and "parse error" in msg, msg
    with pytest.raises(LabError, match="does not exist"):
        mon.check_rules(str(tmp_path / "nope.yml"))
    good = tmp_path / "good.rules.yml"
    good.write_text("groups:\n  - name: x\n    rules:\n      - alert: fine\n        expr: up == 0\n")
    assert "1 rules found" in mon.check_rules(str(good))


def test_an_unreachable_prometheus_is_one_line_naming_it(lab):
    """Nothing listens on the lab's Prometheus port here: the reload fails in one line with the URL and the cause."""
    with pytest.raises(LabError) as e:
        mon.reload_prometheus(lab, timeout=1.0)
    msg = str(e.value)
    assert "\n" not in msg and "http://127.0.0.1:15050" in msg and "refused" in msg.lower(), msg
    assert mon.rules_loaded(lab) == {} and mon.targets(lab) == []
