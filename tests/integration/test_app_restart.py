"""The app_restart role against the lab's real supervisord."""
import urllib.request

from p3harness import lab_fault, lab_status, run_playbook


def health_status(url):
    try:
        return urllib.request.urlopen(url, timeout=3).status
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy"
        return getattr(e, "code", None)


def test_restart_role_brings_a_killed_app_back(healthy_lab):
    before = healthy_lab["services"]["app"]["pid"]
    lab_fault("app-down")
    st = lab_status()
    assert not st["services"]["app"]["up"] and not st["app"]["healthy"]
    run = run_playbook("restart_app.yml")
    assert run.rc == 0, run.stdout[-3000:]
    st = lab_status()
    assert st["app"]["healthy"] is True
    assert st["services"]["app"]["up"] and st["services"]["app"]["pid"] not in (None, before)
    url = "http://127.0.0.1:%d/health" % st["services"]["app"]["port"]
    assert health_status(url) == 200


def test_restart_role_check_mode_restarts_nothing(healthy_lab):
    before = healthy_lab["services"]["app"]["pid"]
    run = run_playbook("restart_app.yml", check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert lab_status()["services"]["app"]["pid"] == before


def test_restart_role_fails_clearly_when_the_app_stays_unhealthy(healthy_lab):
    run = run_playbook("restart_app.yml", extravars={
        "p3_app_health_url": "http://127.0.0.1:1/health", "p3_restart_timeout": 3})
    assert run.rc != 0
    msg = run.result("Fail clearly when the app did not come back")["msg"]
    assert "not healthy" in msg and "127.0.0.1:1/health" in msg and "p3-lab-app" in msg


def test_restart_role_command_backend(healthy_lab):
    """The plain-command backend (here: supervisorctl as an argv list, as a site without supervisor support would
    call its own restart script)."""
    import yaml
    from p3harness import INVENTORY
    with open(INVENTORY) as f:
        host = yaml.safe_load(f)["all"]["children"]["p3_app"]["hosts"]["p3-lab-app"]
    before = healthy_lab["services"]["app"]["pid"]
    run = run_playbook("restart_app.yml", extravars={
        "p3_restart_force": True,  # the app is healthy: restart_app.yml leaves it alone unless forced
        "p3_restart_backend": "command",
        "p3_restart_command": [host["p3_supervisorctl"], "-c", host["p3_supervisor_conf"], "restart", host["p3_supervisor_program"]]})
    assert run.rc == 0, run.stdout[-3000:]
    st = lab_status()
    assert st["app"]["healthy"] and st["services"]["app"]["pid"] not in (None, before)
