"""drift_check.yml (the runbook's monitoring alerts) and export_alerts.yml against the real lab."""
import os

import yaml

from p3harness import LAB_SECRETS_HINT, ROOT, lab_fault, lab_status, run_playbook, run_with_report

ALERTS = ["session_auth_failure_rate", "mesh_peer_count_low", "anchor_queue_backup", "database_connection_high",
          "redis_memory_high"]


def drift(report_dir, **extra):
    extravars = {"p3_report_dir": report_dir, "p3_drift_auth_window_seconds": 1}
    extravars.update(extra)
    return run_with_report(run_playbook("drift_check.yml", extravars=extravars), report_dir, "drift_check")


def by_name(report):
    return dict((a["name"], a) for a in report["alerts"])


def test_healthy_lab_no_alert_and_real_values(healthy_lab, report_dir):
    run, report = drift(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["healthy"] is True and report["firing"] == [] and report["unknown"] == []
    alerts = by_name(report)
    assert list(alerts) == ALERTS
    status = lab_status()
    assert alerts["mesh_peer_count_low"]["value"] == status["mesh"]["peers"] >= 10
    assert alerts["anchor_queue_backup"]["value"] == status["anchor"]["waiting"]
    assert 0 < alerts["database_connection_high"]["value"] < 80
    assert 0 < alerts["redis_memory_high"]["value"] < 90
    assert 0 <= alerts["session_auth_failure_rate"]["value"] <= 5
    assert run.stats["p3_drift"]["healthy"] is True
    assert not any(run.changed.values())


def test_mesh_down_fires_its_alert_and_fails_the_scheduled_job(healthy_lab, report_dir):
    lab_fault("mesh-down")
    run, report = drift(report_dir)
    assert run.rc != 0  # a scheduled job that finds a firing alert fails, so it is noticed
    assert report["firing"] == ["mesh_peer_count_low"] and report["severity"] == "SEV-3"
    assert by_name(report)["mesh_peer_count_low"]["value"] == 0
    assert report["next"] == ["p3.recovery.recover_mesh"]
    assert "FIRING SEV-3: mesh_peer_count_low" in run.result("Fail when an alert fires or cannot be measured (as asked)")["msg"]
    run, report = drift(report_dir, p3_drift_fail_on_firing=False)
    assert run.rc == 0 and report["firing"] == ["mesh_peer_count_low"]


def test_db_exhaustion_fires_database_connection_high(healthy_lab, report_dir):
    lab_fault("db-exhaustion")
    status = lab_status()
    run, report = drift(report_dir, p3_drift_fail_on_firing=False,
                        p3_drift_alerts=["database_connection_high", "redis_memory_high"])
    assert run.rc == 0
    alerts = by_name(report)
    assert list(alerts) == ["database_connection_high", "redis_memory_high"]  # only what was asked
    assert alerts["database_connection_high"]["firing"] is True
    assert alerts["database_connection_high"]["value"] >= 100.0 * (status["db"]["connections"]) / status["db"]["max_connections"] - 5


def test_thresholds_are_variables(healthy_lab, report_dir):
    # the real Redis memory use is small but not zero: a tiny threshold makes it fire with the measured value
    run, report = drift(report_dir, p3_alert_max_redis_memory_pct=0.000001, p3_alert_min_mesh_peers=1000,
                        p3_drift_fail_on_firing=False)
    alerts = by_name(report)
    assert alerts["redis_memory_high"]["firing"] is True and alerts["redis_memory_high"]["value"] > 0
    assert alerts["mesh_peer_count_low"]["firing"] is True and alerts["mesh_peer_count_low"]["threshold"] == 1000
    assert report["severity"] == "SEV-2"


def test_unreachable_endpoints_are_unknown_not_ok(lab_up, report_dir):
    run, report = drift(report_dir, p3_app_url="http://127.0.0.1:1", p3_redis_nodes=["127.0.0.1:1"],
                        p3_database_url="postgresql://p3admin:x@127.0.0.1:1/p3", p3_http_timeout=2,
                        p3_redis_timeout=2, p3_db_connect_timeout=2)
    assert run.rc != 0 and "Traceback" not in run.stdout
    assert sorted(report["unknown"]) == sorted(ALERTS) and report["firing"] == []
    for alert in report["alerts"]:
        assert alert["reason"].startswith("unknown: ") and "127.0.0.1:1" in alert["reason"], alert
    for secret in LAB_SECRETS_HINT:
        assert secret not in run.stdout


def test_export_follows_the_thresholds(lab_up, tmp_path):
    out = tmp_path / "alerts"
    run = run_playbook("export_alerts.yml", extravars={"p3_alert_export_dir": str(out), "p3_alert_min_mesh_peers": 7})
    assert run.rc == 0, run.stdout[-2000:]
    rules = yaml.safe_load((out / "p3-recovery.rules.yml").read_text())["groups"][0]["rules"]
    # the five drift alerts, then the scrape-only ones (a target that stopped answering)
    assert [r["alert"] for r in rules] == ALERTS + ["app_down", "redis_node_down"]
    exprs = dict((r["alert"], r["expr"]) for r in rules)
    assert exprs["mesh_peer_count_low"].endswith(" < 7") and exprs["anchor_queue_backup"].endswith(" > 1000")
    assert dict((r["alert"], r["labels"]["severity"]) for r in rules)["redis_memory_high"] == "SEV-2"
    rulebook = yaml.safe_load((out / "p3-recovery-rulebook.yml").read_text())
    for rule in rulebook[0]["rules"]:
        playbook = rule["action"]["run_playbook"]["name"]
        assert os.path.exists(os.path.join(ROOT, "playbooks", playbook.split(".")[-1] + ".yml")), playbook
    again = run_playbook("export_alerts.yml", extravars={"p3_alert_export_dir": str(out), "p3_alert_min_mesh_peers": 7})
    assert again.rc == 0 and not any(again.changed.values())
    check = run_playbook("export_alerts.yml", extravars={"p3_alert_export_dir": str(tmp_path / "never")}, check=True)
    assert check.rc == 0 and not (tmp_path / "never").exists()


def test_exported_rulebook_hands_every_alert_to_eda_respond(lab_up, tmp_path):
    """Issue 19 §3: the exported rulebook is the shipped one (one rule per alert status, throttled per episode), and
    what an alert may do is decided at run time by eda_respond (p3_alert_eda_allow); an unknown allowed name is
    still refused at export."""
    out = tmp_path / "alerts"
    run = run_playbook("export_alerts.yml", extravars={"p3_alert_export_dir": str(out)})
    assert run.rc == 0, run.stdout[-2000:]
    exported = (out / "p3-recovery-rulebook.yml").read_text()
    assert exported == open(os.path.join(ROOT, "extensions", "eda", "rulebooks", "p3_recovery.yml")).read()

    bad = run_playbook("export_alerts.yml", extravars={"p3_alert_export_dir": str(tmp_path / "bad"),
                                                        "p3_alert_eda_allow": ["no_such_alert"]})
    assert bad.rc != 0 and "no_such_alert" in bad.stdout
