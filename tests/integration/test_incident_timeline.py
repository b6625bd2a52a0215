"""The p3.recovery.incident callback: a real incident (app killed), diagnosed, recovered, diagnosed again."""
import json
import os
import time

from p3harness import LAB_SECRETS_HINT, lab_fault, lab_nodes, lab_status, no_replica_failover, run_playbook


def test_timeline_and_postmortem_follow_a_real_incident(healthy_lab, tmp_path):
    env = {"P3_INCIDENT_DIR": str(tmp_path), "P3_INCIDENT_ID": "lab-app-down", "P3_INCIDENT_KEEP_DAYS": "30"}
    reports = {"p3_report_dir": str(tmp_path / "reports")}
    old, recent = tmp_path / "incident-20260901.jsonl", tmp_path / "postmortem-20261120.md"
    for path, age_days in ((old, 60), (recent, 8)):
        path.write_text("{}\n")
        t = time.time() - age_days * 86400
        os.utime(str(path), (t, t))
    lab_fault("app-down")
    assert run_playbook("diagnose.yml", extravars=reports, env=env).rc == 0
    assert run_playbook("restart_app.yml", env=env).rc == 0
    assert lab_status()["app"]["healthy"] is True
    assert run_playbook("diagnose.yml", extravars=reports, env=env).rc == 0

    log = tmp_path / "incident-lab-app-down.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    runs = []
    for e in entries:
        if e["run"] not in runs:
            runs.append(e["run"])
    assert len(runs) == 3  # three playbook runs appended to one incident log
    first = [e for e in entries if e["run"] == runs[0]]
    assert any(e["action"] == "p3.recovery.app_probe" and e["healthy"] is False and "refused" in e["reason"] for e in first)
    assert any(e["kind"] == "triage" and e["severity"] == "SEV-1" for e in first)
    restart = [e for e in entries if e["run"] == runs[1]]
    assert any(e["changed"] and e["host"] == "p3-lab-app" and "supervisor" in e["task"] for e in restart)
    last = [e for e in entries if e["run"] == runs[2] and e["kind"] == "probe"]
    assert last and all(e["healthy"] for e in last)
    text = log.read_text()
    for secret in LAB_SECRETS_HINT:
        assert secret not in text

    pm = (tmp_path / "postmortem-lab-app-down.md").read_text()
    assert "## Incident Summary" in pm and "**Severity:** SEV-1" in pm
    assert "Issue detected" in pm and "Restart the app with supervisor on p3-lab-app" in pm
    assert "Service restored (all probes healthy)" in pm
    detected = [line for line in pm.splitlines() if "Issue detected" in line][0][2:10]
    restored = [line for line in pm.splitlines() if "Service restored" in line][0][2:10]
    assert detected <= restored
    assert os.path.getsize(str(log)) > 0
    assert not old.exists() and recent.exists()  # P3_INCIDENT_KEEP_DAYS=30


def test_a_failed_run_reports_each_timeline_entry_once_and_the_recap_counts_the_change(healthy_lab, tmp_path):
    """recover_redis whose failover acted (FORCE promotion) and then failed (convergence wait far too short): the
    failed run's report lists each action once, says changed, and PLAY RECAP counts that change too."""
    import glob
    import re

    # Redis must not promote the replica by itself (it would, about 1 s after the cluster flags the master
    # failed): with cluster-replica-no-failover the run's own FORCE promotion is what acts. The run waits for the
    # cluster's verdict (confirm timeout), then its convergence wait is far too short.
    with no_replica_failover(lab_nodes()):
        lab_fault("redis-master-down")
        env = {"P3_INCIDENT_DIR": str(tmp_path), "P3_INCIDENT_ID": "redis-failed"}
        run = run_playbook("recover_redis.yml", extravars={"p3_report_dir": str(tmp_path / "reports"),
                                                           "p3_redis_confirm_timeout": 60,
                                                           "p3_redis_wait_timeout": 0.001}, env=env)
    assert run.rc != 0, run.stdout[-3000:]
    [path] = glob.glob(str(tmp_path / "reports" / "recover_redis-*.json"))
    with open(path) as f:
        report = json.load(f)
    assert report["healthy"] is False and report["changed"] is True, report
    assert report["failed_task"] == "Act - promote the best replica of each failed master", report
    keys = [json.dumps(t, sort_keys=True) for t in report["timeline"]]
    assert keys and len(keys) == len(set(keys)), report["timeline"]
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", run.stdout, re.M)
    assert recap and any(int(changed) >= 1 for _host, changed in recap), run.stdout[-1500:]
    # the incident log and postmortem are private
    for name in ("incident-redis-failed.jsonl", "postmortem-redis-failed.md"):
        assert os.stat(str(tmp_path / name)).st_mode & 0o777 == 0o600
