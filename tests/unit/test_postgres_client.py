"""module_utils/postgres_client.py: DSN secrets and redaction, libpq message cleaning, conninfo resolution."""
import socket
import time

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import postgres_client as pc
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

psycopg2 = pytest.importorskip("psycopg2")


@pytest.mark.parametrize("dsn,secret", [
    ("postgresql://p3admin:p3admin-lab-secret@127.0.0.1:17010/p3", "p3admin-lab-secret"),
    ("postgres://u:p%40ss@h/db", "p@ss"),
    ("host=h port=5432 password=kv-secret dbname=p3", "kv-secret"),
    ("host=h password='quoted secret' dbname=p3", "quoted secret"),
    ("postgresql://h/db?password=qsecret&sslmode=require", "qsecret"),
    ("postgresql://u:broken-port-secret@h:abc/db", "broken-port-secret"),
])
def test_dsn_secrets_and_redaction(dsn, secret):
    assert secret in pc.dsn_secrets(dsn)
    red = pc.redact_dsn(dsn)
    assert secret not in red and "%40" not in red.split("@")[0][-8:]


def test_redact_dsn_keeps_the_rest():
    assert pc.redact_dsn("host=h port=1 password=x dbname=p3") == "host=h port=1 password=******** dbname=p3"
    assert pc.redact_dsn("postgresql://u:pw@h:1/db") == "postgresql://u:********@h:1/db"
    assert pc.redact_dsn(None) is None


@pytest.mark.parametrize("raw,clean", [
    ('connection to server at "127.0.0.1", port 20010 failed: Connection refused\n\tIs the server running on that '
     'host and accepting TCP/IP connections?\n', "Connection refused"),
    ('connection to server at "127.0.0.1", port 20010 failed: FATAL:  password authentication failed for user '
     '"p3admin"\n', 'password authentication failed for user "p3admin"'),
    ('connection to server at "localhost" (::1), port 1 failed: Connection refused\n\tIs the server running...\n'
     'connection to server at "localhost" (127.0.0.1), port 1 failed: Connection refused\n\tIs the server running\n',
     "Connection refused"),
    ("FATAL:  remaining connection slots are reserved for non-replication superuser connections\n",
     "remaining connection slots are reserved for non-replication superuser connections"),
    ('ERROR:  relation "x" does not exist\nLINE 1: select * from x\n', 'relation "x" does not exist LINE 1: select * from x'),
])
def test_clean_pg_message(raw, clean):
    assert pc.clean_pg_message(raw) == clean


class FakePgError(Exception):
    pgerror = None


@pytest.mark.parametrize("raw,cause", [
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server running?', "connection refused"),
    ('connection to server at "10.9.9.9", port 5432 failed: timeout expired\n', "timed out after 5s"),
    ('could not translate host name "nohost.invalid" to address: Name or service not known\n',
     'name resolution failed (could not translate host name "nohost.invalid" to address: Name or service not known)'),
    ('connection to server at "h", port 1 failed: FATAL:  password authentication failed for user "u"',
     'password authentication failed for user "u"'),
    ("FATAL:  sorry, too many clients already", "sorry, too many clients already"),
    ('invalid dsn: missing "=" after "postgresql://u:s3cr3t@h" in connection info string',
     'invalid dsn: missing "=" after "postgresql://u:********@h" in connection info string'),
])
def test_describe_pg_error(raw, cause):
    assert pc.describe_pg_error(FakePgError(raw), timeout=5, secrets=["s3cr3t"]) == cause


def test_build_conninfo_parts_override_the_dsn():
    parsed = pc.parse_dsn("postgresql://u:pw@h:1/db?sslmode=require")
    ci = pc.build_conninfo(dict(db_host="other", db_port=2, db_user=None, db_password="", db_name=None,
                                db_sslmode="disable", connect_timeout=0.5), parsed)
    assert ci["host"] == "other" and ci["port"] == "2" and ci["user"] == "u" and ci["password"] == "pw"
    assert ci["sslmode"] == "disable" and ci["connect_timeout"] == "2" and ci["application_name"] == "p3-recovery"


def test_describe_target():
    assert pc.describe_target({"host": "127.0.0.1", "port": "17010"}) == "127.0.0.1:17010"
    assert pc.describe_target({}) == "local socket:5432"
    assert pc.describe_target({"host": "a,b", "port": "1,2"}) == "a,b port 1,2"


def test_parse_dsn_errors_never_show_the_password():
    for bad in ("postgresql://u:topsecret@[broken", "host=h password=topsecret garbage", "postgresql://u:topsecret@h:x/db"):
        with pytest.raises(P3Error) as e:
            pc.parse_dsn(bad)
        assert e.value.msg.startswith("invalid dsn: ") and "topsecret" not in e.value.msg, e.value.msg


def test_resolve_conninfo(monkeypatch):
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    base = dict(dsn=None, db_host=None, db_port=None, db_user=None, db_password=None, db_name=None, db_sslmode=None,
                connect_timeout=5)
    ci, secrets = pc.resolve_conninfo(dict(base, dsn="postgresql://u:dsnpw@h:1/db", db_password="partpw"))
    assert ci["password"] == "partpw" and "dsnpw" in secrets and "partpw" in secrets
    with pytest.raises(P3Error, match="no PostgreSQL target"):
        pc.resolve_conninfo(base)
    with pytest.raises(P3Error, match="out of range"):
        pc.resolve_conninfo(dict(base, db_host="h", db_port=70000))
    with pytest.raises(P3Error, match="connect_timeout"):
        pc.resolve_conninfo(dict(base, db_host="h", connect_timeout=0))


def test_client_connect_has_a_hard_deadline():
    """A server that accepts TCP and never answers costs the timeout, not libpq's whole retry dance."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    try:
        ci = {"host": "127.0.0.1", "port": str(hole.getsockname()[1]), "user": "u", "password": "deadline-pw",
              "dbname": "d", "connect_timeout": "2"}
        client = pc.PostgresClient(ci, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(P3Error) as e:
            client.connect()
        took = time.monotonic() - t0
    finally:
        hole.close()
    assert took < 1.5, took
    assert e.value.msg == "cannot connect to %s: timed out after 0.5s" % client.target


def test_client_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = pc.PostgresClient({"host": "127.0.0.1", "port": str(port), "password": "refused-pw"}, timeout=2)
    with pytest.raises(P3Error) as e:
        client.connect()
    assert e.value.msg == "cannot connect to 127.0.0.1:%d: connection refused" % port


class _ReadyConn(object):
    closed = 0

    def poll(self):
        return psycopg2.extensions.POLL_OK

    def fileno(self):
        return -1

    def close(self):
        pass


def test_connect_retries_while_every_slot_is_taken_by_connection_attempts(monkeypatch):
    """"sorry, too many clients already" is PostgreSQL out of every slot, the superuser-reserved ones included: an app
    whose pools keep retrying during db-exhaustion holds them for moments (each attempt is a backend until refused),
    so a superuser's connect gets in a moment later (measured on P3's own server). It is retried within the
    deadline; the non-superuser's "reserved for superuser" refusal is not (it does not pass by itself)."""
    calls = []

    def fake_connect(**kw):
        calls.append(kw)
        if len(calls) < 3:
            raise psycopg2.OperationalError('connection to server at "127.0.0.1", port 1 failed: FATAL:  sorry, too '
                                            'many clients already\n')
        return _ReadyConn()

    monkeypatch.setattr(pc, "resolve_hosts", lambda conninfo, deadline, target=None: conninfo)
    monkeypatch.setattr(pc.psycopg2, "connect", fake_connect)
    client = pc.PostgresClient({"host": "127.0.0.1", "port": 1}, timeout=5).connect()
    assert isinstance(client.conn, _ReadyConn) and len(calls) == 3

    calls[:] = []

    def reserved(**kw):
        calls.append(kw)
        raise psycopg2.OperationalError('connection to server at "127.0.0.1", port 1 failed: FATAL:  remaining '
                                        'connection slots are reserved for non-replication superuser connections\n')

    monkeypatch.setattr(pc.psycopg2, "connect", reserved)
    with pytest.raises(P3Error) as e:
        pc.PostgresClient({"host": "127.0.0.1", "port": 1}, timeout=5).connect()
    assert len(calls) == 1 and "reserved" in e.value.msg

    calls[:] = []

    def always_full(**kw):
        calls.append(kw)
        raise psycopg2.OperationalError("FATAL:  sorry, too many clients already")

    monkeypatch.setattr(pc.psycopg2, "connect", always_full)
    t0 = time.monotonic()
    with pytest.raises(P3Error) as e:
        pc.PostgresClient({"host": "127.0.0.1", "port": 1}, timeout=1).connect()
    assert time.monotonic() - t0 < 1.5 and len(calls) >= 2 and "too many clients" in e.value.msg
