"""Total deadlines of pure client code: an HTTP body dribbled one byte at a time, a backtracking pattern.
(The integration tests in tests/integration/test_deadlines.py run the modules against the same peers and a
frozen postmaster.) Bounds here are hang guards far above the deadline, never exact timings."""
import socket
import threading
import time

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import http_client as hc
from ansible_collections.p3.recovery.plugins.modules import app_log_scan


@pytest.fixture
def dribbler():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def handle(conn):
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b" ")
                time.sleep(0.2)
        except OSError:
            pass

    def serve():
        while not stop.is_set():
            try:
                conn, dummy = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield "http://127.0.0.1:%d" % srv.getsockname()[1]
    stop.set()
    srv.close()


def test_dribbled_body_costs_one_timeout(dribbler):
    t0 = time.monotonic()
    r = hc.request(dribbler + "/slow", timeout=0.6)
    assert time.monotonic() - t0 < 5  # hang guard: the old per-read timeout took 200 s for this body
    assert r["status"] == 200 and not r["ok"]
    assert r["error"] == "reading the body failed: timed out after 0.6s"


@pytest.mark.skipif(not app_log_scan.HAS_REGEX, reason="the regex package bounds each match")
def test_backtracking_pattern_stops_at_the_deadline(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("fine\n" + "a" * 64 + "b\n")
    regex = app_log_scan.regex_lib.compile("(a|aa)+$")
    t0 = time.monotonic()
    with pytest.raises(app_log_scan.ScanTimeout) as e:
        app_log_scan.scan_file(str(log), regex, 1 << 20, 5, time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 10  # hang guard: hours with the stdlib re
    assert str(e.value).endswith("line 2")
