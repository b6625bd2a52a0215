"""Total deadlines of pure client code: an HTTP body dribbled one byte at a time, a backtracking pattern.
(The integration tests in tests/integration/test_deadlines.py run the modules against the same peers and a
frozen postmaster.) Bounds here are hang guards far above the deadline, never exact timings."""
import re
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


# ------------------------------------------------------------------------------------------ the Deadline object

from ansible_collections.p3.recovery.plugins.module_utils import common  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc  # noqa: E402


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_deadline_arithmetic():
    clock = Clock()
    d = common.Deadline(5, "redis_deadline", clock=clock)
    assert d.remaining() == 5 and not d.expired
    assert d.bound(2) == 2 and d.bound(None) == 5
    clock.now += 4
    assert d.bound(2) == pytest.approx(1.0)  # min(per-operation timeout, time left)
    assert d.cut(clock.now + 30) == pytest.approx(105.0) and d.cut(clock.now + 0.5) == pytest.approx(104.5)
    d.check("h:1")
    clock.now += 1
    assert d.expired and d.remaining() == 0 and d.bound(2) == 0
    with pytest.raises(common.DeadlineExceeded) as e:
        d.check("10.0.0.1:7001")
    assert str(e.value) == "10.0.0.1:7001 deadline of 5s exceeded (redis_deadline)"


def test_no_deadline_keeps_each_timeout():
    d = common.Deadline(None)
    assert d.remaining() is None and not d.expired
    assert d.bound(2) == 2 and d.cut(7.0) == 7.0
    d.check("anything")


def test_redis_deadline_default_leaves_room_for_the_modules_waits():
    assert rc.deadline_seconds(dict(redis_deadline=4)) == 4
    assert rc.deadline_seconds(dict()) == rc.DEFAULT_DEADLINE
    assert rc.deadline_seconds(dict(wait_timeout=30, confirm_timeout=5)) == rc.DEFAULT_DEADLINE + 35
    with pytest.raises(common.P3Error):
        rc.deadline_seconds(dict(redis_deadline=0))
    s = rc.resolve_redis_settings(dict(redis_url="redis://127.0.0.1:1", redis_deadline=3))
    assert s.deadline.seconds == 3 and s.deadline.name == "redis_deadline"


@pytest.fixture
def silent():
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
    for c in conns:
        c.close()


def test_many_redis_operations_on_a_silent_node_cost_the_deadline(silent):
    """Ten operations, each with its own 0.5 s timeout, against a node that never answers: once the 1.2 s deadline
    has passed, no operation starts (the old code paid 0.5 s per operation, 5 s here)."""
    s = rc.resolve_redis_settings(dict(redis_url="redis://127.0.0.1:%d" % silent, redis_socket_timeout=0.5,
                                       redis_connect_timeout=0.5, redis_deadline=1.2))
    client = rc.node_client(s, "127.0.0.1", silent)
    errors = []
    t0 = time.monotonic()
    for dummy in range(10):
        try:
            client.ping()
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)
    took = time.monotonic() - t0
    assert took < 3.5  # hang guard, not a timing claim (old code: 5 s)
    assert len(errors) == 10
    cut = [e for e in errors if isinstance(e, common.DeadlineExceeded)]
    assert cut, errors
    assert rc.describe_redis_error(cut[-1], s) == "127.0.0.1:%d deadline of 1.2s exceeded (redis_deadline)" % silent
    client.close()


# ------------------------------------------------------------------------------------------ PostgreSQL host names

from ansible_collections.p3.recovery.plugins.module_utils import postgres_client as pc  # noqa: E402


def test_pg_name_resolution_is_bounded_by_the_connect_timeout():
    """A resolver that blocks (a dead DNS server): libpq would wait for it with no bound; the client stops at the
    deadline and names the host."""
    release = threading.Event()

    def blocking(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    client = pc.PostgresClient(dict(host="db.example.internal", port="5432", user="u", dbname="d"), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(common.P3Error) as e:
        pc.resolve_hosts(client.conninfo, time.monotonic() + 0.5, resolver=blocking, target=client.target)
    release.set()
    assert time.monotonic() - t0 < 5  # hang guard
    # the time left of the 0.5 s deadline when resolving started (a loaded machine spends a few ms before it)
    m = re.match(r"cannot connect to db\.example\.internal:5432: name resolution of db\.example\.internal "
                 r"timed out after ([0-9.]+)s$", e.value.msg)
    assert m and 0.3 <= float(m.group(1)) <= 0.5, e.value.msg


def test_pg_hosts_resolved_to_hostaddr_keeping_host():
    def resolver(name, port, family, kind):
        table = {"db1": ["::1", "127.0.0.1", "127.0.0.1"], "db2": ["10.0.0.2"]}
        return [(None, kind, 6, "", (a, port)) for a in table[name]]

    one = pc.resolve_hosts(dict(host="db1", port="6432", sslmode="verify-full"), time.monotonic() + 5, resolver)
    assert one == dict(host="db1,db1", hostaddr="::1,127.0.0.1", port="6432", sslmode="verify-full")
    two = pc.resolve_hosts(dict(host="db1,/run/pg,db2", port="1,2,3"), time.monotonic() + 5, resolver)
    assert two["host"] == "db1,db1,/run/pg,db2"
    assert two["hostaddr"] == "::1,127.0.0.1,,10.0.0.2" and two["port"] == "1,1,2,3"
    # a socket directory alone, or a hostaddr given by the operator: unchanged
    assert pc.resolve_hosts(dict(host="/run/pg"), time.monotonic() + 5, resolver) == dict(host="/run/pg")
    given = dict(host="db1", hostaddr="10.9.9.9")
    assert pc.resolve_hosts(given, time.monotonic() + 5, resolver) == given


def test_pg_unknown_host_fails_naming_it():
    def resolver(*args):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(common.P3Error) as e:
        pc.resolve_hosts(dict(host="nohost.invalid", port="5432"), time.monotonic() + 5, resolver)
    assert e.value.msg == "cannot connect to nohost.invalid:5432: name resolution failed (Name or service not known)"


def test_http_name_resolution_is_inside_the_deadline(monkeypatch):
    """urllib resolves the host before any socket timeout applies: a resolver that blocks is cut at the total
    deadline (the exchange runs in a thread abandoned there)."""
    release = threading.Event()
    real = socket.getaddrinfo

    def blocking(host, *args, **kwargs):
        if host == "slow-dns.example":
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", blocking)
    t0 = time.monotonic()
    r = hc.request("http://slow-dns.example:8080/health", timeout=0.5)
    release.set()
    assert time.monotonic() - t0 < 5  # hang guard
    assert r["status"] is None and r["error"] == "timed out after 0.5s", r
