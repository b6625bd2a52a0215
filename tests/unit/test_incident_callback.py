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
