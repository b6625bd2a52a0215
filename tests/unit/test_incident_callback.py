"""Unit tests of the postmortem rendering of the incident callback (pure function)."""
import importlib.util
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "callback", "incident.py")
_spec = importlib.util.spec_from_file_location("p3_incident", _PATH)
incident = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(incident)


def _e(ts, run, **kw):
    d = {"ts": "2026-11-28T10:%s:00Z" % ts, "run": run, "host": "h", "task": kw.pop("task", "probe"), "status": "ok"}
    d.update(kw)
    return d


def test_restored_only_when_a_later_run_is_all_healthy():
    entries = [
        _e("00", "a", kind="probe", healthy=False, reason="db down", task="Probe db"),
        _e("00", "a", kind="probe", healthy=True, reason="redis ok"),
        _e("00", "a", kind="triage", severity="SEV-1"),
        _e("05", "b", kind="action", changed=True, task="Terminate", timeline=[
            {"ts": "2026-11-28T10:05:00Z", "action": "terminate", "target": "pid 42", "detail": "idle 600s"}]),
        _e("07", "c", kind="probe", healthy=True),
        _e("07", "c", kind="probe", healthy=True),
    ]
    pm = incident.render_postmortem(entries)
    assert "**Severity:** SEV-1" in pm
    assert "- 10:00:00 - Issue detected (Probe db)" in pm
    assert "- 10:05:00 - Terminate on h: ok" in pm and "terminate pid 42 idle 600s" in pm
    assert "- 10:07:00 - Service restored (all probes healthy)" in pm
    assert "0 hours 7 minutes 0 seconds" in pm


def test_not_restored_while_the_last_run_is_red():
    entries = [_e("00", "a", kind="probe", healthy=False, reason="x"),
               _e("01", "a", kind="probe", healthy=True),
               _e("02", "b", kind="probe", healthy=True), _e("02", "b", kind="probe", healthy=False, reason="y")]
    pm = incident.render_postmortem(entries)
    assert "Service not yet verified healthy" in pm and "Service restored" not in pm


def test_a_task_with_several_probe_verdicts_gives_one_probe_entry_each():
    import types
    cb = incident.CallbackModule()
    res = {"changed": False, "healthy": False, "reason": "1 of 2 probes unhealthy - app: refused",
           "verdicts": [{"probe": "app", "module": "p3.recovery.app_probe", "healthy": False, "reason": "refused"},
                        {"probe": "redis", "module": "p3.recovery.redis_probe", "healthy": True, "reason": "6 nodes"}]}
    task = types.SimpleNamespace(resolved_action="p3.recovery.quick_diagnostics", name="Quick diagnostics")
    result = types.SimpleNamespace(result=res, task=task, host=types.SimpleNamespace(name="localhost"))
    cb.v2_runner_on_ok(result)
    assert [(e["action"], e["healthy"], e["reason"], e["kind"], e["via"], e["task"]) for e in cb._entries] == [
        ("p3.recovery.app_probe", False, "refused", "probe", "p3.recovery.quick_diagnostics", "Quick diagnostics [app]"),
        ("p3.recovery.redis_probe", True, "6 nodes", "probe", "p3.recovery.quick_diagnostics",
         "Quick diagnostics [redis]"),
    ]
    cb._entries = []
    cb.v2_runner_on_ok(types.SimpleNamespace(result=dict(res, censored="hidden"), task=task,
                                             host=types.SimpleNamespace(name="localhost")))
    assert len(cb._entries) == 1 and cb._entries[0]["censored"] is True and "reason" not in cb._entries[0]


def test_prune_deletes_only_old_incident_files_and_never_the_current_ones(tmp_path):
    now = 1_800_000_000
    day = 86400
    files = {"incident-old.jsonl": 40, "postmortem-old.md": 40, "incident-recent.jsonl": 5, "incident-cur.jsonl": 90,
             "postmortem-cur.md": 90, "report-old.json": 40, "notes.md": 40}
    for name, age in files.items():
        path = tmp_path / name
        path.write_text("x")
        os.utime(str(path), (now - age * day, now - age * day))
    keep = (str(tmp_path / "incident-cur.jsonl"), str(tmp_path / "postmortem-cur.md"))
    assert incident.prune(str(tmp_path), 0, now, keep) == []
    assert len(os.listdir(str(tmp_path))) == len(files)
    removed = incident.prune(str(tmp_path), 30, now, keep)
    assert sorted(os.path.basename(r) for r in removed) == ["incident-old.jsonl", "postmortem-old.md"]
    assert sorted(os.listdir(str(tmp_path))) == sorted(set(files) - {"incident-old.jsonl", "postmortem-old.md"})


# -- issue 14 §4: private files, whole lines under concurrency, no path escape, no SQL text / session ids -------------

def _writer(directory, incident_id=None, **options):
    import types
    cb = incident.CallbackModule()
    opts = dict(directory=str(directory), incident_id=incident_id, keep_days=0, include_sensitive=False)
    opts.update(options)
    warnings = []
    cb.get_option = opts.get
    cb._display = types.SimpleNamespace(display=lambda *a, **k: None, warning=warnings.append)
    cb.warnings = warnings
    return cb


def test_incident_log_and_postmortem_are_private_whatever_the_umask(tmp_path):
    cb = _writer(tmp_path / "reports", "inc1")
    cb._entries = [_e("00", "a", kind="probe", healthy=False, reason="db down")]
    old = os.umask(0)
    try:
        cb.v2_playbook_on_stats(None)
    finally:
        os.umask(old)
    assert os.stat(str(tmp_path / "reports")).st_mode & 0o777 == 0o700
    for name in ("incident-inc1.jsonl", "postmortem-inc1.md"):
        assert os.stat(str(tmp_path / "reports" / name)).st_mode & 0o777 == 0o600, name


def _append_many(directory, n, tag):
    cb = _writer(directory, "shared")
    for i in range(n):
        cb._entries = [_e("00", tag, kind="action", changed=True, msg="%s-%d-%d-" % (tag, i, j) + tag * (2000 + 97 * j))
                       for j in range(60)]
        cb._write()


def test_two_runs_appending_at_once_never_interleave_lines(tmp_path):
    import json
    import multiprocessing
    procs = [multiprocessing.Process(target=_append_many, args=(str(tmp_path), 10, tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    with open(str(tmp_path / "incident-shared.jsonl")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1200
    for line in lines:
        entry = json.loads(line)  # a torn or interleaved line does not parse
        assert set(entry["msg"].split("-")[-1]) == {entry["run"]}


import pytest  # noqa: E402


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "x/../../y"])
def test_incident_id_cannot_escape_the_directory(tmp_path, bad):
    cb = _writer(tmp_path / "reports", bad)
    cb._entries = [_e("00", "a", kind="probe", healthy=False, reason="db down")]
    cb.v2_playbook_on_stats(None)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [] and cb.warnings and "incident_id must" in cb.warnings[0]


def test_timeline_sql_text_and_session_ids_are_not_recorded(tmp_path):
    import types
    cb = _writer(tmp_path, "inc2")
    res = {"changed": True, "timeline": [{"action": "terminate", "target": "pid 7", "detail": "x",
                                          "query": "SELECT * FROM users WHERE token = 'tok-secret-1'"}],
           "session_id": "0b7e0c5d-aaaa-bbbb-cccc-123456789abc",
           "invocation": {"module_args": {"dsn": "postgresql://u:pw@h/db"}}}
    task = types.SimpleNamespace(resolved_action="p3.recovery.postgres_terminate", name="Terminate")
    cb.v2_runner_on_ok(types.SimpleNamespace(result=res, task=task, host=types.SimpleNamespace(name="h")))
    cb._write()
    with open(str(tmp_path / "incident-inc2.jsonl")) as f:
        text = f.read()
    assert "tok-secret-1" not in text and "pw@h" not in text and "fingerprint:" in text


def test_a_decision_probe_marked_p3_incident_skip_is_not_a_verdict_of_the_incident():
    """restart_app's read-only "is this instance already healthy?" probe decides whether to restart; it is not
    evidence of the incident (diagnose recorded the broken state): a red one would become the run's last red verdict
    and a single green gate after the restart could no longer verify the restore (the incident stayed open)."""
    import types
    cb = incident.CallbackModule()
    res = {"changed": False, "healthy": False, "reason": "GET /health failed: connection refused"}
    host = types.SimpleNamespace(name="p3-lab-app")
    decide = types.SimpleNamespace(resolved_action="p3.recovery.app_probe", name="Decide",
                                   vars={"p3_incident_skip": True})
    cb.v2_runner_on_ok(types.SimpleNamespace(result=res, task=decide, host=host))
    assert cb._entries == []
    gate = types.SimpleNamespace(resolved_action="p3.recovery.app_probe", name="Gate", vars={})
    cb.v2_runner_on_ok(types.SimpleNamespace(result=res, task=gate, host=host))
    assert [e["task"] for e in cb._entries] == ["Gate"]


def test_a_held_incident_log_lock_is_waited_for_a_bound_then_the_run_is_kept_in_a_fallback_file(tmp_path):
    """Another process holds the incident log's flock past lock_timeout: a real playbook run with the callback ends,
    warns in one line naming the log and the wait, and its entries are on disk in the fallback file it names."""
    import fcntl
    import json
    import subprocess
    import sys

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    "    - name: Change something\n      ansible.builtin.debug:\n        msg: done\n"
                    "      changed_when: true\n")
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o700)
    log = reports / "incident-held.jsonl"
    log.write_text(json.dumps({"ts": "2026-12-07T00:00:00Z", "run": "other", "task": "x"}) + "\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"), P3_INCIDENT_DIR=str(reports),
               P3_INCIDENT_ID="held", P3_INCIDENT_LOCK_TIMEOUT="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(root, ".state", "unit-path"))
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=" + sys.executable, str(play)]
    with open(str(log), "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = " ".join((run.stdout + run.stderr).split())
    assert "still locked by another run after 1s" in out and str(log) in out, out[-2000:]
    # the log itself is untouched; the run's entries are whole in the one fallback file the warning names
    assert log.read_text().count("\n") == 1
    fallback = [p for p in os.listdir(str(reports)) if p.startswith("locked-out-")]
    assert len(fallback) == 1 and str(reports / fallback[0]) in out, (fallback, out[-2000:])
    path = reports / fallback[0]
    assert os.stat(str(path)).st_mode & 0o777 == 0o600
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["task"] for e in entries] == ["Change something"] and entries[0]["incident"] == "held"
