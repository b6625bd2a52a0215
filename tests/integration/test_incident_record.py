"""Issue 18 §4: the incident record survives the job - set_stats in the runner artifacts, a directory sink and a
PostgreSQL sink (rows read back with psycopg2), several runs of one incident grouped without an incident id, who ran
it (awx_* job variables, OS user, host), a root cause in words, and no secret in any sink. Pass b (default lab)."""
import getpass
import json
import os
import socket
import uuid

import psycopg2

from p3harness import FUNDING_KEY, LAB_SECRETS_HINT, V, lab_fault, lab_status, run_playbook

AWX = {"awx_job_id": 4711, "awx_job_template_name": "P3 - diagnose", "awx_user_name": "oncall-alice",
       "tower_workflow_job_id": 99}


def _rows(dsn, table):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT incident_id, run_id, target, playbook, state, healthy, changed, root_cause, who, record, "
                    "postmortem FROM %s ORDER BY id" % table)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def _drop(dsn, table):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS %s" % table)


def _no_secret(text):
    for secret in list(LAB_SECRETS_HINT) + [FUNDING_KEY[2:]]:
        assert secret not in text, secret


def test_runs_of_one_incident_are_grouped_recorded_in_both_sinks_and_published_with_set_stats(healthy_lab, tmp_path):
    dsn = V["p3_database_url"]
    table = "p3_incident_test_%s" % uuid.uuid4().hex[:8]
    target = "lab-%s" % uuid.uuid4().hex[:6]  # this test's own incidents, whatever other runs wrote before
    # the sink as an AWX credential would inject it (an environment variable); no incident id: derived
    env = {"P3_INCIDENT_DIR": str(tmp_path), "P3_INCIDENT_DATABASE_URL": dsn, "P3_INCIDENT_TABLE": table}
    extra = dict(AWX, p3_incident_target=target, p3_report_dir=str(tmp_path / "reports"))
    try:
        lab_fault("app-down")
        first = run_playbook("diagnose.yml", extravars=extra, env=env)
        assert first.rc == 0, first.stdout[-3000:]
        rec1 = first.stats["p3_incident"]
        assert rec1["incident_id"].startswith("inc-") and rec1["state"] == "open" and rec1["healthy"] is False
        assert rec1["who"]["awx_job_id"] == "4711" and rec1["who"]["awx_user_name"] == "oncall-alice"
        assert rec1["who"]["awx_job_template_name"] == "P3 - diagnose" and rec1["who"]["awx_workflow_job_id"] == "99"
        assert rec1["who"]["os_user"] == getpass.getuser() and rec1["who"]["host"] == socket.gethostname()
        assert any(e.get("probe") == "app" and e["healthy"] is False for e in rec1["timeline"])
        assert "Broken: " in rec1["root_cause"] and "refused" in rec1["root_cause"]

        second = run_playbook("restart_app.yml", extravars=dict(extra, awx_job_id=4712), env=env)
        assert second.rc == 0, second.stdout[-3000:]
        assert lab_status()["app"]["healthy"] is True
        rec2 = second.stats["p3_incident"]
        # one incident: the open incident of the same target is reused by the restart run, whose health gate
        # verifies the service restored
        assert rec2["incident_id"] == rec1["incident_id"], (rec1, rec2)
        assert rec2["state"] == "resolved" and rec2["changed"] is True
        assert "Fixed by: " in rec2["root_cause"] and "service restored at" in rec2["root_cause"], rec2["root_cause"]

        # a later healthy run finds no open incident: it belongs to none (and says so)
        third = run_playbook("diagnose.yml", extravars=dict(extra, awx_job_id=4713), env=env)
        assert third.rc == 0, third.stdout[-3000:]
        rec3 = third.stats["p3_incident"]
        assert rec3["incident_id"] is None and rec3["state"] == "none" and rec3["healthy"] is True, rec3
        assert list(tmp_path.glob("runs-*.jsonl"))

        # PostgreSQL sink: one row per run, read back from the database
        rows = _rows(dsn, table)
        assert [r["who"]["awx_job_id"] for r in rows] == ["4711", "4712", "4713"]
        assert [r["incident_id"] for r in rows] == [rec1["incident_id"]] * 2 + [None]
        assert {r["target"] for r in rows} == {target}
        assert [r["state"] for r in rows] == ["open", "resolved", "none"]
        assert [r["playbook"] for r in rows] == ["diagnose", "restart_app", "diagnose"]
        assert rows[1]["postmortem"] and "Service restored" in rows[1]["postmortem"]
        assert rows[1]["record"]["run"] == rec2["run"] and rows[2]["postmortem"] is None

        # directory sink: one log and one postmortem for the incident, not one per day or per run
        log = tmp_path / ("incident-%s.jsonl" % rec1["incident_id"])
        pm = tmp_path / ("postmortem-%s.md" % rec1["incident_id"])
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert len({e["run"] for e in entries}) == 2 and {e["incident"] for e in entries} == {rec1["incident_id"]}
        assert sorted(p.name for p in tmp_path.glob("postmortem-*.md")) == [pm.name]
        text = pm.read_text()
        assert "## Root Cause" in text and "Broken: " in text and "Fixed by: " in text
        assert "Service restored (all probes healthy)" in text
        # the root cause is stated in words, not as the list of task names
        root = text.split("## Root Cause", 1)[1].split("##", 1)[0]
        assert "Probe the app" not in root, root

        # no secret in any sink or artifact
        dump = json.dumps(_rows(dsn, table), default=str)
        for path in tmp_path.rglob("*"):
            if path.is_file():
                dump += path.read_text(errors="replace")
        for run in (first, second, third):
            dump += json.dumps(run.stats) + run.stdout
        _no_secret(dump)
        assert "P3_INCIDENT_DATABASE_URL" not in json.dumps([r["record"] for r in _rows(dsn, table)])
    finally:
        _drop(dsn, table)


def test_an_unwritable_database_sink_is_one_warning_and_the_run_goes_on(healthy_lab, tmp_path):
    bad = "postgresql://p3admin:wrong-Secret-99@127.0.0.1:1/p3"
    env = {"P3_INCIDENT_DIR": str(tmp_path), "P3_INCIDENT_DATABASE_URL": bad}
    run = run_playbook("diagnose.yml", extravars={"p3_report_dir": str(tmp_path / "reports"),
                                                  "p3_incident_target": "lab-bad-sink"}, env=env)
    assert run.rc == 0, run.stdout[-3000:]
    assert "database sink p3_incident_runs: cannot connect to 127.0.0.1:1" in run.stdout, run.stdout[-3000:]
    assert "wrong-Secret-99" not in run.stdout and "wrong-Secret-99" not in json.dumps(run.stats)
    assert run.stats["p3_incident"]["sinks"]["database"].startswith("p3_incident_runs (127.0.0.1:1")
    assert list(tmp_path.glob("runs-*.jsonl")) or list(tmp_path.glob("incident-*.jsonl"))
