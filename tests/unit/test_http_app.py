"""module_utils/http_client.py and app_health.py: URL checks, request() on loopback, health and pulse verdicts."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import app_health as ah
from ansible_collections.p3.recovery.plugins.module_utils import http_client as hc
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "https://app.example/base/", " http://h "])
def test_check_url_accepts(url):
    assert hc.check_url(url) == url.strip()


@pytest.mark.parametrize("url,fragment", [
    ("not a url", "scheme must be http:// or https://"),
    ("127.0.0.1:5000", "scheme"),
    ("http://", "no host"),
    ("http://h:port", "Port could not be cast"),
    ("ftp://h", "scheme"),
    ("", "is required"),
])
def test_check_url_rejects(url, fragment):
    with pytest.raises(P3Error) as e:
        hc.check_url(url)
    assert fragment in e.value.msg


def test_check_url_hides_credentials():
    with pytest.raises(P3Error) as e:
        hc.check_url("http://u:hidden-pw@h:x")
    assert "hidden-pw" not in e.value.msg


def test_join_url():
    assert hc.join_url("http://h:1", "/health") == "http://h:1/health"
    assert hc.join_url("http://h:1/base/", "api/x") == "http://h:1/base/api/x"
    assert hc.join_url("http://h:1", "http://other/x") == "http://other/x"
    assert hc.join_url("http://h:1", "") == "http://h:1"


def test_decode_body_and_truncate():
    assert hc.decode_body(b'{"a": 1}') == ({"a": 1}, '{"a": 1}')
    assert hc.decode_body(b"<html>", "text/html") == (None, "<html>")
    assert hc.decode_body(b"{broken", "application/json")[0] is None
    assert hc.truncate("x" * 10, 4) == "xxxx... (10 bytes, truncated)"


def test_is_secret_header():
    for name in ("Authorization", "X-Api-Key", "Cookie", "X-Auth-Token", "x-secret"):
        assert hc.is_secret_header(name)
    for name in ("Accept", "X-Forwarded-Proto", "Content-Type"):
        assert not hc.is_secret_header(name)


# ---------------------------------------------------------------- request() against a loopback server

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/health503":
            body = json.dumps({"status": "unhealthy", "failing": ["redis"],
                               "checks": {"database": "ok", "redis": "127.0.0.1:17001: connection refused"}})
            code, ctype = 503, "application/json"
        elif self.path == "/echo-auth":
            body, code, ctype = "you sent %s" % self.headers.get("Authorization"), 401, "text/plain"
        else:
            body, code, ctype = json.dumps({"status": "healthy"}), 200, "application/json"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever)
    t.daemon = True
    t.start()
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()


def test_request_ok(server):
    r = hc.request(server + "/health", timeout=2)
    assert r["ok"] and r["status"] == 200 and r["json"] == {"status": "healthy"} and r["error"] is None


def test_request_reads_error_bodies(server):
    r = hc.request(server + "/health503", timeout=2)
    assert r["status"] == 503 and not r["ok"] and r["json"]["failing"] == ["redis"]
    v = ah.health_verdict(r)
    assert v["healthy"] is False and v["failing"] == ["redis"]
    assert v["reason"] == "GET %s/health503 -> 503: redis: 127.0.0.1:17001: connection refused" % server


def test_request_masks_secrets_in_the_body(server):
    r = hc.request(server + "/echo-auth", timeout=2, headers={"Authorization": "Bearer tok-12345"},
                   secrets=["tok-12345"])
    assert r["status"] == 401 and "tok-12345" not in r["text"]


def test_request_timeout_and_refused(server):
    t0 = time.monotonic()
    r = hc.request(server + "/slow", timeout=0.5)
    assert time.monotonic() - t0 < 2
    assert r["status"] is None and r["error"] == "timed out after 0.5s"
    assert hc.describe_response(r) == "GET %s/slow failed: timed out after 0.5s" % server
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = hc.request("http://u:pw-in-url@127.0.0.1:%d/x" % port, timeout=1, secrets=["pw-in-url"])
    assert r["error"] == "connection refused" and r["url"] == "http://127.0.0.1:%d/x" % port


# ---------------------------------------------------------------- health / pulse verdicts (pure)

def resp(status, body=None, text=None, error=None, ctype="application/json", url="http://a/p"):
    raw = json.dumps(body).encode() if body is not None else (text or "").encode()
    return dict(url=url, method="GET", status=status, ok=error is None and status is not None and 200 <= status < 300,
                latency_ms=3.2, content_type=ctype, raw=raw, json=body, text=raw.decode(), error=error)


def test_failing_components_variants():
    assert ah.failing_components({"failing": ["database"], "checks": {"database": "pool timeout", "redis": "ok"}}) == \
        [("database", "pool timeout")]
    assert ah.failing_components({"status": "degraded", "database": {"status": "unhealthy", "error": "x"}}) == \
        [("database", "x")]
    assert ah.failing_components({"checks": {"memory": {"status": "degraded"}, "db": {"status": "healthy"}}}) == \
        [("memory", "degraded")]
    assert ah.failing_components({"checks": {"redis": False}}) == [("redis", "failing")]
    assert ah.failing_components("text") == []
    assert ah.failing_components({"status": "healthy", "checks": {"database": "ok", "redis": "ok"}}) == []


def test_health_verdicts():
    ok = ah.health_verdict(resp(200, {"status": "healthy", "checks": {"database": "ok"}}))
    assert ok["healthy"] and ok["reason"] == "GET http://a/p -> 200 status=healthy in 3 ms"
    degraded = ah.health_verdict(resp(200, {"status": "degraded", "database": {"status": "unhealthy"}}))
    assert not degraded["healthy"] and degraded["reason"] == "GET http://a/p -> 200 but status=degraded: database: unhealthy"
    plain = ah.health_verdict(resp(500, text="Internal Server Error", ctype="text/plain"))
    assert plain["reason"] == "GET http://a/p -> 500: Internal Server Error" and plain["body"] == "Internal Server Error"
    down = ah.health_verdict(resp(None, error="connection refused"))
    assert down["reason"] == "GET http://a/p failed: connection refused" and down["status"] is None


def test_pulse_verdicts():
    lab = {"ok": True, "status": {"active": True, "relay": "up", "subscribers": 12, "lastBroadcast": 1}}
    v = ah.pulse_verdict(resp(200, lab), min_peers=1)
    assert v["healthy"] and v["peers"] == 12 and v["relay"] == "up"
    assert v["reason"] == "GET http://a/p -> 200: relay up, 12 peers >= 1"
    down = {"ok": True, "status": {"active": False, "relay": "down", "subscribers": 0}}
    v = ah.pulse_verdict(resp(200, down))
    assert not v["healthy"] and v["reason"] == "GET http://a/p -> 200: relay down, peers 0 < 1"
    p3 = {"ok": True, "status": {"active": True, "subscribers": 0}}  # P3 as coded: no relay field
    v = ah.pulse_verdict(resp(200, p3), min_peers=0)
    assert v["healthy"] and v["relay"] == "up"
    v = ah.pulse_verdict(resp(200, text="<html>", ctype="text/html; charset=utf-8"))
    assert v["reason"] == "GET http://a/p -> 200: body is not JSON (text/html)"
    v = ah.pulse_verdict(resp(403, {"ok": False, "error": "Pulse diagnostics disabled in production"}))
    assert v["reason"] == "GET http://a/p -> 403: Pulse diagnostics disabled in production"
    v = ah.pulse_verdict(resp(200, {"ok": True, "status": {"active": True}}), min_peers=1)
    assert v["reason"].endswith("no peer count in the answer")


def test_app_verdict():
    h = {"healthy": True, "reason": "h ok"}
    assert ah.app_verdict(h, ah.skipped_pulse()) == (True, "health ok; pulse skipped")
    bad = {"healthy": False, "reason": "pulse bad"}
    assert ah.app_verdict({"healthy": False, "reason": "health bad"}, bad) == (False, "health bad; pulse bad")


def test_p3_system_health_body_is_healthy():
    """P3's GET /api/system/health, exactly as its server answers (server/routes/system.ts): every answer carries a
    `receipt` object from createReceipt('success'); that is not a failing component."""
    body = {"status": "ok", "database": {"status": "healthy", "latencyMs": 0},
            "server": {"uptimeSeconds": 41, "memoryUsage": {"heapUsedMB": 114, "heapTotalMB": 145, "rssMB": 274}},
            "tasks": {"activeCount": 0}, "receipt": {"status": "success", "timestamp": "2026-12-06T12:54:56.161Z"}}
    assert ah.failing_components(body) == []
    assert ah.health_verdict(resp(200, body))["healthy"]
    degraded = dict(body, status="degraded", database={"status": "unhealthy", "latencyMs": 0})
    assert ah.failing_components(degraded) == [("database", "unhealthy")]


# ---------------------------------------------------------------- HTTPS with a private CA (ca_path)

def _openssl(*args):
    import subprocess

    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A loopback HTTPS server whose certificate (IP 127.0.0.1) is signed by a private CA; a second CA signs nothing."""
    import ssl

    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-new", *ec, "-keyout", str(d / (name + ".key")), "-out", str(d / (name + ".crt")),
                 "-days", "2", "-subj", "/CN=p3-unit-%s" % name)
    _openssl("req", "-new", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-out", str(d / "server.crt"), "-days", "2", "-extfile", str(d / "ext"))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(d / "server.crt"), str(d / "server.key"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever)
    t.daemon = True
    t.start()
    yield dict(url="https://127.0.0.1:%d" % srv.server_address[1], ca=str(d / "ca.crt"), other=str(d / "other.crt"))
    srv.shutdown()


def test_https_with_the_private_ca_validates(tls_server):
    r = hc.request(tls_server["url"] + "/health", timeout=3, ca_path=tls_server["ca"])
    assert r["ok"] and r["status"] == 200 and r["json"] == {"status": "healthy"}, r


def test_https_with_a_wrong_ca_or_the_system_store_fails_in_one_line(tls_server):
    for ca in (tls_server["other"], None):
        r = hc.request(tls_server["url"] + "/health", timeout=3, ca_path=ca)
        assert not r["ok"] and r["status"] is None, r
        assert "certificate verification failed" in r["error"] and "\n" not in r["error"], r["error"]
    # validation off accepts any certificate (what validate_certs=false is for)
    r = hc.request(tls_server["url"] + "/health", timeout=3, validate_certs=False, ca_path=tls_server["other"])
    assert r["ok"], r


def test_an_unreadable_ca_path_is_one_line_naming_the_file(tls_server, tmp_path):
    missing = str(tmp_path / "nope.crt")
    r = hc.request(tls_server["url"] + "/health", timeout=3, ca_path=missing)
    assert not r["ok"] and r["error"].startswith("cannot load ca_path %s" % missing) and "\n" not in r["error"], r
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(P3Error) as e:
        hc.tls_context(tls_server["url"], True, str(junk))
    assert str(junk) in e.value.msg and "\n" not in e.value.msg


class _Module(object):
    def __init__(self, **params):
        self.params = dict(dict((k, v.get("default")) for k, v in hc.HTTP_ARGUMENT_SPEC.items()), **params)
        self.no_log_values = set()

    def fail_json(self, msg, **kw):
        raise AssertionError("fail_json: " + msg)


def test_http_target_uses_ca_path_for_every_request(tls_server):
    t = hc.HttpTarget(_Module(url=tls_server["url"], ca_path=tls_server["ca"], timeout=3))
    assert [r["status"] for r in t.get_many(["/health", "/other"])] == [200, 200]
    with pytest.raises(AssertionError, match=r"fail_json: https://127\.0\.0\.1:\d+: cannot load ca_path /nonexistent"):
        hc.HttpTarget(_Module(url=tls_server["url"], ca_path="/nonexistent/ca.crt"))
