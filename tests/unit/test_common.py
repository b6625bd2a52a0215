"""module_utils/common.py: one-line text, secret redaction, error mapping, the probe result."""
import errno
import socket
import ssl
from urllib.error import URLError

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import common as c


def test_one_line_collapses_and_truncates():
    assert c.one_line("a\n\tb   c\r\n") == "a b c"
    assert c.one_line(None) == ""
    assert c.one_line(b"x\ny") == "x y"
    long = c.one_line("x" * 1000, 50)
    assert len(long) == 50 and long.endswith("...")


@pytest.mark.parametrize("text,secret,leak", [
    ("redis://:s3cret@127.0.0.1:6379/0", None, "s3cret"),
    ("postgresql://admin:p%40ss@db:5432/p3 failed", None, "p%40ss"),
    ("host=db port=5432 password=hunter2 dbname=p3", None, "hunter2"),
    ("host=db password='with space' dbname=p3", None, "with space"),
    ("GET http://h/x?token=1&password=abc123 -> 500", None, "abc123"),
    ("the server said: hunter2 is wrong", "hunter2", "hunter2"),
    ("quoted p%40ss and raw p@ss", "p@ss", "p@ss"),
])
def test_redact_text_removes_credentials(text, secret, leak):
    out = c.redact_text(text, [secret] if secret else [])
    assert leak not in out
    assert c.MASK in out


def test_redact_text_keeps_user_and_host():
    out = c.redact_text("connect postgresql://admin:pw@db.example:5432/p3")
    assert out == "connect postgresql://admin:********@db.example:5432/p3"


def test_redact_url_drops_userinfo_and_password_query():
    assert c.redact_url("https://u:p@host:8443/path?a=1&password=x") == "https://host:8443/path?a=1&password=********"
    assert c.redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert c.redact_url(None) is None
    assert c.redact_url("not a url password=pw") == "not a url password=********"


def test_url_secrets_finds_quoted_and_plain_forms():
    found = c.url_secrets("redis://user:p%40ss@h:1?password=q%20w")
    assert "p%40ss" in found and "p@ss" in found and "q w" in found
    assert c.url_secrets("http://h") == []
    assert c.url_secrets(None) == []


def test_secret_variants_longest_first():
    v = c.secret_variants("a b")
    assert v[0] == "a%20b" and "a b" in v
    assert c.secret_variants("") == []


def test_hostport_brackets_ipv6():
    assert c.hostport("127.0.0.1", 1) == "127.0.0.1:1"
    assert c.hostport("::1", 6379) == "[::1]:6379"


@pytest.mark.parametrize("exc,cause", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (socket.timeout("timed out"), "timed out after 2s"),
    (socket.gaierror(-2, "Name or service not known"), "name resolution failed (Name or service not known)"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host"),
    (URLError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), "connection refused"),
    (URLError(socket.timeout("timed out")), "timed out after 2s"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS error"),
    (ValueError("something odd\nhappened"), "something odd happened"),
])
def test_describe_error_maps_library_exceptions(exc, cause):
    assert c.describe_error(exc, timeout=2.0).startswith(cause)


def test_describe_error_follows_the_exception_chain():
    class LibError(Exception):
        pass
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError:
            raise LibError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    except LibError as e:
        assert c.describe_error(e) == "connection refused"


def test_describe_error_recognises_messages_and_redacts():
    assert c.describe_error(Exception("Connection refused by peer")) == "connection refused"
    assert c.describe_error(Exception("read timeout"), timeout=1.5) == "timed out after 1.5s"
    out = c.describe_error(Exception("bad dsn postgresql://u:topsecret@h/db"), secrets=["topsecret"])
    assert "topsecret" not in out


def test_target_error_is_one_line():
    msg = c.target_error("127.0.0.1:17001", ConnectionRefusedError(errno.ECONNREFUSED, "x"))
    assert msg == "127.0.0.1:17001 connection refused"


def test_probe_result_shape():
    r = c.probe_result(False, "broken\nbadly", nodes=[1])
    assert r == {"changed": False, "healthy": False, "reason": "broken badly", "nodes": [1]}


class FakeModule(object):
    def __init__(self, **params):
        self.params = params
        self.no_log_values = set()
        self.exited = None
        self.failed = None

    def exit_json(self, **kw):
        self.exited = kw
        raise SystemExit(0)

    def fail_json(self, **kw):
        self.failed = kw
        raise SystemExit(1)


def test_exit_probe_fails_only_when_asked():
    m = FakeModule(fail_on_unhealthy=False)
    with pytest.raises(SystemExit):
        c.exit_probe(m, c.probe_result(False, "down"))
    assert m.exited["healthy"] is False and m.failed is None
    m = FakeModule(fail_on_unhealthy=True)
    with pytest.raises(SystemExit):
        c.exit_probe(m, c.probe_result(False, "down"))
    assert m.failed["msg"] == "down" and m.failed["healthy"] is False
    m = FakeModule(fail_on_unhealthy=True)
    with pytest.raises(SystemExit):
        c.exit_probe(m, c.probe_result(True, "fine"))
    assert m.exited["healthy"] is True


def test_register_secrets_adds_variants_but_not_tiny_values():
    m = FakeModule()
    c.register_secrets(m, ["p@ss word", "ab", None])
    assert "p@ss word" in m.no_log_values and "p%40ss%20word" in m.no_log_values
    assert "ab" not in m.no_log_values


def test_run_parallel_results_errors_and_late():
    import threading
    from ansible_collections.p3.recovery.plugins.module_utils.common import run_parallel
    release = threading.Event()
    started = []

    def slow():
        started.append(1)
        release.wait(5)
        return "slow"

    def boom():
        raise ValueError("bad input")
    results, errors, late = run_parallel(dict(a=lambda: 1, b=boom, c=slow), deadline=0.2)
    still_running = not release.is_set() and started == [1]  # the deadline, not the slow call, ended the wait
    release.set()
    assert still_running
    assert results == {"a": 1} and list(errors) == ["b"] and isinstance(errors["b"], ValueError)
    assert late == ["c"] and started == [1]
    results, errors, late = run_parallel(dict(x=lambda: "x", y=lambda: "y"))
    assert results == {"x": "x", "y": "y"} and errors == {} and late == []
