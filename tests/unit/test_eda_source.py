"""Issue 19 §3: the collection's Alertmanager event source (extensions/eda/plugins/event_source/alertmanager.py) -
token check, Alertmanager v4 payload -> one event per alert; and the real process rejecting a request without the
token (401, nothing queued)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE = os.path.join(ROOT, "extensions", "eda", "plugins", "event_source", "alertmanager.py")
FIRING = os.path.join(ROOT, "tests", "unit", "data", "alertmanager-firing.json")
sys.path.insert(0, os.path.dirname(SOURCE))
import alertmanager  # noqa: E402


def test_the_token_is_required_and_compared_exactly():
    assert alertmanager.authorized("Bearer s3cret", "s3cret")
    assert alertmanager.authorized("bearer   s3cret ", "s3cret")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearer"):
        assert not alertmanager.authorized(header, "s3cret"), header
    assert alertmanager.authorized(None, None)  # allow_unauthenticated


def test_the_token_comes_from_args_then_file_then_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text("  from-file\n")
    assert alertmanager.resolve_token({"token": "arg", "token_file": str(f)}, {"P3_EDA_TOKEN": "env"}) == "arg"
    assert alertmanager.resolve_token({"token_file": str(f)}, {"P3_EDA_TOKEN": "env"}) == "from-file"
    assert alertmanager.resolve_token({"token_file": ""}, {"P3_EDA_TOKEN": "env"}) == "env"
    assert alertmanager.resolve_token({}, {}) is None


def test_one_event_per_alert_with_fingerprint_status_labels_annotations():
    body = json.load(open(FIRING))
    second = dict(body["alerts"][0], fingerprint="0123456789abcdef", status="resolved",
                  labels={"alertname": "mesh_peer_count_low"})
    body["alerts"].append(second)
    events = alertmanager.parse_notification(json.dumps(body).encode())
    assert [e["alert"]["fingerprint"] for e in events] == ["5f2a6c0e1d9b3a47", "0123456789abcdef"]
    first = events[0]["alert"]
    assert first["status"] == "firing" and first["labels"]["alertname"] == "redis_memory_high"
    assert first["annotations"]["summary"] and first["startsAt"] == "2026-12-06T19:00:00.000Z"
    assert events[1]["alert"]["status"] == "resolved"
    assert events[0]["notification"]["receiver"] == "p3-eda" and events[0]["notification"]["groupKey"]


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"{}", "no 'alerts' list"),
    (json.dumps({"version": "3", "alerts": []}).encode(), "version 3"),
    (json.dumps({"version": "4", "alerts": [{"status": "firing"}]}).encode(), "no fingerprint"),
    (json.dumps({"version": "4", "alerts": [{"fingerprint": "x", "status": "pending"}]}).encode(), "firing/resolved"),
])
def test_a_body_that_is_not_a_v4_notification_is_refused(body, why):
    with pytest.raises(alertmanager.PayloadError) as e:
        alertmanager.parse_notification(body)
    assert why in str(e.value)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _post(port, data, token=None):
    req = urllib.request.Request("http://127.0.0.1:%d/alerts" % port, data=data, method="POST")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_real_receiver_rejects_a_webhook_without_the_secret():
    """The source running as a process (its __main__ prints each queued event): 401 for no token and a wrong one,
    logged without the header value, nothing queued; the right token queues the alert."""
    port = _free_port()
    env = dict(os.environ, P3_EDA_TOKEN="t0ken-for-the-test")
    proc = subprocess.Popen([sys.executable, SOURCE, str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.1)
        body = open(FIRING, "rb").read()
        assert _post(port, body)[0] == 401
        assert _post(port, body, token="wrong-token-value")[0] == 401
        status, answer = _post(port, body, token="t0ken-for-the-test")
        assert (status, answer) == (200, {"queued": 1})
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [e["alert"]["fingerprint"] for e in events] == ["5f2a6c0e1d9b3a47"]  # only the authorized one
    assert err.count("401 missing or wrong token") == 2
    assert "wrong-token-value" not in err and "t0ken-for-the-test" not in err


def test_the_source_refuses_to_start_without_a_token(monkeypatch):
    import asyncio

    monkeypatch.delenv("P3_EDA_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:  # ansible-rulebook stops with this one line, exit status 1
        asyncio.run(alertmanager.main(None, {"port": _free_port()}))
    assert "no token" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args, names", [
    ({"port": "50x1"}, ["port", "'50x1'"]),
    ({"port": 70000}, ["port", "70000"]),
    ({"port": 0}, ["port", "1-65535"]),
    ({"port": 5001.5}, ["port", "5001.5"]),
    ({"port": True}, ["port"]),
    ({"port": [5001]}, ["port"]),
    ({"host": "127.0.0.1 5001"}, ["host"]),
    ({"host": 12}, ["host"]),
    ({"path": "alerts"}, ["path", "start with /"]),
    ({"max_body_bytes": "big"}, ["max_body_bytes"]),
    ({"token": 12345}, ["token", "string"]),
    ({"token_file": "/nonexistent/p3-token"}, ["token_file", "/nonexistent/p3-token", "No such file"]),
    ({"allow_unauthenticated": "maybe"}, ["allow_unauthenticated"]),
    ({"prot": 5001}, ["unknown argument", "prot"]),
])
def test_a_malformed_argument_is_one_line_naming_it(args, names):
    given = dict({"token": "s3cret"}, **args) if "token" not in args and "token_file" not in args else dict(args)
    with pytest.raises(alertmanager.ArgumentError) as e:
        alertmanager.check_args(given, {})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("p3.recovery.alertmanager: ")
    for name in names:
        assert name in msg, msg
    assert "s3cret" not in msg


def test_well_formed_arguments_are_read_with_their_defaults(tmp_path):
    f = tmp_path / "token"
    f.write_text("tok\n")
    cfg = alertmanager.check_args({"host": "", "port": "5011", "token_file": str(f), "eda_feedback_queue": None}, {})
    assert cfg == dict(host="127.0.0.1", port=5011, path="/alerts", token="tok", max_body_bytes=1048576)
    cfg = alertmanager.check_args({"port": 6000, "allow_unauthenticated": "true"}, {})
    assert cfg["port"] == 6000 and cfg["token"] is None


def _rulebook(tmp_path, port, extra_env=None):
    """The real ansible-rulebook with the shipped rulebook and p3_eda_port=port; (exit status, output)."""
    java = os.environ.get("JAVA_HOME") or "/usr/lib/jvm/java-17-openjdk-amd64"
    assert os.path.exists(os.path.join(java, "bin", "java")), "Java 17 missing (scripts/setup.sh installs it)"
    (tmp_path / "inv.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    (tmp_path / "vars.yml").write_text("p3_eda_host: 127.0.0.1\np3_eda_port: %s\n" % json.dumps(port))
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, JAVA_HOME=java, P3_EDA_TOKEN="t0ken-for-the-test", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""), **(extra_env or {}))
    proc = subprocess.run([os.path.join(bindir, "ansible-rulebook"), "-i", str(tmp_path / "inv.yml"),
                           "-r", "p3.recovery.p3_recovery", "--vars", str(tmp_path / "vars.yml")],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=90,
                          check=False)
    return proc.returncode, proc.stdout


def test_the_real_rulebook_with_a_bad_port_stops_with_one_line_and_no_traceback(tmp_path):
    rc, out = _rulebook(tmp_path, "50x1")
    assert rc == 1, out
    assert out.rstrip().splitlines()[-1] == "p3.recovery.alertmanager: port must be an integer 1-65535, got '50x1'", out
    assert ".py:" not in out and "Traceback" not in out, out  # no frame list (file:line), no Python traceback
    assert "t0ken-for-the-test" not in out


def test_the_real_rulebook_on_a_port_in_use_names_host_and_port(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        rc, out = _rulebook(tmp_path, port)
    finally:
        s.close()
    assert rc == 1, out
    assert out.rstrip().splitlines()[-1].startswith("p3.recovery.alertmanager: cannot listen on 127.0.0.1:%d" % port), out
    assert ".py:" not in out and "Traceback" not in out, out
