# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL plumbing of p3.recovery: shared options (doc fragment p3.recovery.postgres), DSN resolution and
redaction, libpq error mapping, and a client whose every step (connect, each query) has a hard deadline.

The client uses psycopg2's asynchronous mode and waits on the socket itself, so a dead, firewalled or frozen
server costs at most the timeout; libpq's own connect_timeout is passed too.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import math
import os
import re
import select
import socket
import time
import traceback

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error,
    describe_error,
    describe_text,
    env,
    hostport,
    num_text,
    one_line,
    redact_text,
    register_secrets,
    run_parallel,
    text_secrets,
)

PSYCOPG2_IMP_ERR = None
try:
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras
    HAS_PSYCOPG2 = True
except ImportError:  # pragma: no cover - depends on the environment
    PSYCOPG2_IMP_ERR = traceback.format_exc()
    HAS_PSYCOPG2 = False

SSLMODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
APPLICATION_NAME = "p3-recovery"
MAXFD = 65536
CANCEL_GRACE = 0.5  # seconds a query timeout waits for the server to take the cancel request, at most

# The options of doc fragment p3.recovery.postgres, defined once.
POSTGRES_ARGUMENT_SPEC = dict(
    dsn=dict(type="str", no_log=True, fallback=env("DATABASE_URL")),
    db_host=dict(type="str"),
    db_port=dict(type="int"),
    db_user=dict(type="str"),
    db_password=dict(type="str", no_log=True),
    db_name=dict(type="str"),
    db_sslmode=dict(type="str", choices=SSLMODES),
    db_sslrootcert=dict(type="path"),
    db_sslcert=dict(type="path"),
    db_sslkey=dict(type="path", no_log=False),
    connect_timeout=dict(type="float", default=5.0),
)

_PART_TO_KEY = dict(db_host="host", db_port="port", db_user="user", db_password="password", db_name="dbname",
                    db_sslmode="sslmode", db_sslrootcert="sslrootcert", db_sslcert="sslcert", db_sslkey="sslkey")


def postgres_argument_spec(**extra):
    spec = dict(POSTGRES_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


# ---------------------------------------------------------------------------------------------------------------
# DSN handling (pure)
# ---------------------------------------------------------------------------------------------------------------

def dsn_secrets(dsn):
    """Passwords found in a DSN (URI userinfo, ?password=, or password=... keyword), even when it is malformed
    (an unencoded @ or an unquoted space in the password: every fragment libpq might quote counts)."""
    if not dsn:
        return []
    return text_secrets(dsn)


# libpq quotes fragments of a malformed DSN in its message ('missing "=" after "word" in connection info
# string'); a fragment may be part of the password, so only these quoted words are kept.
_SAFE_QUOTED = frozenset(["=", "]", "[", "host", "hostaddr", "port", "dbname", "user", "password", "sslmode",
                          "connect_timeout", "application_name", "options", "target_session_attrs"])


def _unquote_fragments(text):
    return re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in _SAFE_QUOTED else '"..."', text)


def redact_dsn(dsn):
    """A DSN (URI or keyword form) with its password masked, for messages."""
    if dsn is None:
        return None
    return redact_text(dsn, dsn_secrets(dsn))


def parse_dsn(dsn):
    """DSN -> dict of libpq keywords (via libpq itself). Raises P3Error with a redacted message when malformed."""
    if not HAS_PSYCOPG2:
        raise P3Error("the psycopg2 Python library is required (pip install psycopg2-binary)")
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except Exception as e:
        text = _unquote_fragments(clean_pg_message(str(e), dsn_secrets(dsn)))
        if text.lower().startswith("invalid dsn:"):
            text = text[len("invalid dsn:"):].strip()
        raise P3Error("invalid dsn: %s" % text)
    port = parsed.get("port")
    if port is not None and not re.match(r"^\d+(,\d*)*$", str(port)):
        raise P3Error("invalid dsn: port %r is not a number" % str(port))
    return parsed


def build_conninfo(params, parsed_dsn=None):
    """Merge the DSN keywords with the explicit parts (parts win) and our fixed settings."""
    conninfo = dict(parsed_dsn or {})
    for part, key in _PART_TO_KEY.items():
        value = params.get(part)
        if value is not None and value != "":
            conninfo[key] = str(value)
    timeout = params.get("connect_timeout")
    if timeout is not None:
        # libpq takes whole seconds (and treats 1 as 2); the client enforces the exact deadline itself.
        conninfo["connect_timeout"] = str(max(2, int(math.ceil(float(timeout)))))
    conninfo.setdefault("application_name", APPLICATION_NAME)
    return conninfo


def describe_target(conninfo):
    """host:port (db NAME, user NAME) without the password; sockets shown as their directory."""
    host = conninfo.get("host") or conninfo.get("hostaddr") or "local socket"
    port = conninfo.get("port") or "5432"
    if "," in str(host) or "," in str(port):
        target = "%s port %s" % (host, port)
    else:
        target = hostport(host, port)
    return target


# ---------------------------------------------------------------------------------------------------------------
# Error mapping (pure)
# ---------------------------------------------------------------------------------------------------------------

_CONN_PREFIX = re.compile(r'connection to server (?:at|on) [^,]*(?:, port \d+)? failed:\s*', re.I)
_HINTS = re.compile(r'\s*(Is the server running[^\n]*|HINT:[^\n]*|DETAIL:[^\n]*)', re.I)
_LEVEL = re.compile(r'^(FATAL|ERROR|PANIC):\s*', re.I)


def clean_pg_message(text, secrets=()):
    """One line from a libpq / server message: no 'connection to server ... failed:' noise, no hints, no secrets."""
    text = redact_text(text or "", secrets)
    text = _HINTS.sub("", text)
    lines = []
    for chunk in _CONN_PREFIX.split(text):
        chunk = one_line(_LEVEL.sub("", chunk.strip()))
        if chunk and chunk not in lines:
            lines.append(chunk)
    return one_line("; ".join(lines), 300) or "unknown error"


def describe_pg_error(exc, timeout=None, secrets=()):
    """The cause of a psycopg2 / socket exception: 'connection refused', 'password authentication failed for ...'."""
    if isinstance(exc, P3Error):
        return exc.msg
    text = getattr(exc, "pgerror", None) or str(exc)
    if not text.strip():
        return describe_error(exc, timeout=timeout, secrets=secrets)
    cleaned = clean_pg_message(text, secrets)
    lowered = cleaned.lower()
    if "timeout expired" in lowered:
        return "timed out after %ss" % timeout if timeout else "timed out"
    network = describe_text(cleaned, timeout)
    if network and "authentication" not in lowered:
        if network == "name resolution failed":
            return "name resolution failed (%s)" % cleaned
        return network
    return cleaned


# ---------------------------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------------------------

class PgTimeout(Exception):
    pass


def _is_socket_dir(host):
    return not host or host.startswith("/") or host.startswith("@") or (len(host) > 1 and host[1] == ":")


def resolve_hosts(conninfo, deadline, resolver=None, target=None):
    """conninfo with every host name resolved before libpq sees it, within the deadline (libpq resolves names
    itself before its asynchronous connect starts, with no bound): each name is looked up in a daemon thread that
    is abandoned at the deadline. A name with several addresses becomes one host entry per address (host kept, for
    TLS verification and .pgpass; hostaddr the address), so libpq still tries each in turn. Raises P3Error naming
    the host. Unix socket directories and a conninfo that already has hostaddr pass unchanged."""
    resolver = resolver or socket.getaddrinfo
    host = conninfo.get("host")
    if not host or conninfo.get("hostaddr"):
        return conninfo
    hosts = str(host).split(",")
    ports = str(conninfo.get("port") or "").split(",")
    if len(ports) not in (1, len(hosts)):
        return conninfo  # libpq reports the mismatch itself
    target = target or describe_target(conninfo)

    def lookup(name, port):
        def call():
            infos = resolver(name, int(port) if port else 5432, 0, socket.SOCK_STREAM)
            out = []
            for info in infos:
                if info[4][0] not in out:
                    out.append(info[4][0])
            return out
        return call

    calls = dict((i, lookup(h, ports[i] if len(ports) > 1 else ports[0]))
                 for i, h in enumerate(hosts) if not _is_socket_dir(h))
    if not calls:
        return conninfo
    left = max(0.0, deadline - time.monotonic())
    results, errors, late = run_parallel(calls, deadline=left, name="pg-dns")
    for i in sorted(calls):
        if i in late:
            raise P3Error("cannot connect to %s: name resolution of %s timed out after %ss" % (
                target, hosts[i], num_text(round(left, 3))), target=target)
        if i in errors:
            raise P3Error("cannot connect to %s: %s" % (target, describe_error(errors[i])), target=target)
        if not results.get(i):
            raise P3Error("cannot connect to %s: name resolution of %s returned no address" % (target, hosts[i]),
                          target=target)
    out_hosts, out_addrs, out_ports = [], [], []
    for i, h in enumerate(hosts):
        port = ports[i] if len(ports) > 1 else ports[0]
        for addr in results.get(i) or [""]:
            out_hosts.append(h)
            out_addrs.append(addr)
            out_ports.append(port)
    resolved = dict(conninfo, host=",".join(out_hosts), hostaddr=",".join(out_addrs))
    if len(ports) > 1:
        resolved["port"] = ",".join(out_ports)
    return resolved


_ALL_SLOTS_TAKEN = re.compile(r"too many clients already", re.I)


def _wait(conn, deadline):
    """Drive an asynchronous psycopg2 connection until it is ready, or raise PgTimeout at the deadline."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PgTimeout()
        if state == psycopg2.extensions.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], remaining)
        else:  # pragma: no cover - psycopg2 documents only these states
            raise psycopg2.OperationalError("bad poll state %r" % state)


class PostgresClient(object):
    """One connection with a deadline on every step.

    Usage::

        client = PostgresClient(conninfo, timeout=5, secrets=[...])
        client.connect()                 # raises P3Error('cannot connect to host:port: cause')
        rows = client.query("SELECT 1")  # list of dicts
        client.close()
    """

    def __init__(self, conninfo, timeout=5, query_timeout=None, secrets=()):
        self.conninfo = dict(conninfo)
        self.timeout = float(timeout or 5)
        self.query_timeout = float(query_timeout or self.timeout)
        self.secrets = [s for s in secrets if s]
        if self.conninfo.get("password"):
            self.secrets.append(self.conninfo["password"])
        self.target = describe_target(self.conninfo)
        self.conn = None

    def connect(self):
        if not HAS_PSYCOPG2:
            raise P3Error("the psycopg2 Python library is required (pip install psycopg2-binary)")
        deadline = time.monotonic() + self.timeout
        conn = None
        conninfo = resolve_hosts(self.conninfo, deadline, target=self.target)
        pause = 0.1
        try:
            while True:
                try:
                    conn = psycopg2.connect(async_=True, **conninfo)
                    _wait(conn, deadline)
                    break
                except psycopg2.OperationalError as e:
                    # every slot taken, the superuser-reserved ones too: an app whose pools keep retrying holds
                    # them for moments (each attempt is a backend until refused); a moment later one is free
                    if not _ALL_SLOTS_TAKEN.search(str(e)) or time.monotonic() + pause >= deadline:
                        raise
                    self._close(conn)
                    conn = None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.8)
        except PgTimeout:
            self._close(conn)
            raise P3Error("cannot connect to %s: timed out after %ss" % (self.target, num_text(self.timeout)),
                          target=self.target)
        except Exception as e:
            self._close(conn)
            raise P3Error("cannot connect to %s: %s" % (self.target, describe_pg_error(e, num_text(self.timeout), self.secrets)),
                          target=self.target)
        self.conn = conn
        return self

    def query(self, sql, args=None, timeout=None):
        """Run one statement; returns a list of dicts (empty for statements without rows)."""
        if self.conn is None:
            self.connect()
        timeout = float(timeout or self.query_timeout)
        deadline = time.monotonic() + timeout
        cur = self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        try:
            cur.execute(sql, args)
            _wait(self.conn, deadline)
            if cur.description is None:
                return []
            return [dict(r) for r in cur.fetchall()]
        except PgTimeout:
            self._cancel()
            self.close()
            raise P3Error("query on %s timed out after %ss" % (self.target, num_text(timeout)), target=self.target)
        except P3Error:
            raise
        except Exception as e:
            raise P3Error("query on %s failed: %s" % (self.target, describe_pg_error(e, num_text(timeout), self.secrets)),
                          target=self.target)
        finally:
            try:
                cur.close()
            except Exception:
                pass

    def scalar(self, sql, args=None, timeout=None):
        rows = self.query(sql, args, timeout)
        if not rows:
            return None
        return list(rows[0].values())[0]

    def _cancel(self, grace=CANCEL_GRACE):
        """Ask the server to cancel the running statement without waiting for it. psycopg2's cancel() opens a
        new connection to the postmaster and blocks, holding the GIL, with no deadline (a frozen postmaster held
        it for as long as it was frozen; a thread cannot bound it), so it runs in a forked child that is
        abandoned after grace seconds."""
        conn = self.conn
        if conn is None or not hasattr(os, "fork"):
            return
        try:
            pid = os.fork()
        except OSError:
            return  # best effort: closing the connection ends the statement when the server next writes
        if pid == 0:  # child: send the cancel request, never return into the module
            try:
                # no inherited descriptor (the module's stdout above all) may outlive the module in this child,
                # or Ansible would wait for the child; cancel() needs none of them
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.closerange(3, MAXFD)
                conn.cancel()
            finally:
                os._exit(0)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            try:
                done, dummy = os.waitpid(pid, os.WNOHANG)
            except OSError:
                return
            if done:
                return
            time.sleep(0.01)
        # abandoned: the child ends when the postmaster answers, or with the module's process group

    @staticmethod
    def _close(conn):
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self):
        self._close(self.conn)
        self.conn = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()
        return False


def resolve_conninfo(params):
    """Module params -> (conninfo dict, secrets list). Raises P3Error for a malformed DSN."""
    dsn = params.get("dsn")
    secrets = dsn_secrets(dsn) if dsn else []
    parsed = parse_dsn(dsn) if dsn else {}
    if parsed.get("password"):
        secrets.append(parsed["password"])
    if params.get("db_password"):
        secrets.append(params["db_password"])
    conninfo = build_conninfo(params, parsed)
    port = params.get("db_port")
    if port is not None and not 0 < int(port) < 65536:
        raise P3Error("db_port %s out of range" % port)
    timeout = params.get("connect_timeout")
    if timeout is not None and float(timeout) <= 0:
        raise P3Error("connect_timeout must be > 0, got %s" % timeout)
    if "host" not in conninfo and "hostaddr" not in conninfo and not dsn \
            and not (os.environ.get("PGHOST") or os.environ.get("PGSERVICE")):
        # No target at all: libpq would silently try the default local socket; say so instead.
        raise P3Error("no PostgreSQL target: set dsn (or DATABASE_URL) or db_host")
    return conninfo, secrets


class PostgresTarget(object):
    """What modules use: resolves the shared options once, registers every secret as no_log, makes clients."""

    def __init__(self, module):
        self.module = module
        if not HAS_PSYCOPG2:
            from ansible.module_utils.basic import missing_required_lib
            module.fail_json(msg=missing_required_lib("psycopg2 (psycopg2-binary)"), exception=PSYCOPG2_IMP_ERR)
        dsn = module.params.get("dsn")
        register_secrets(module, dsn_secrets(dsn) if dsn else [])
        try:
            self.conninfo, self.secrets = resolve_conninfo(module.params)
        except P3Error as e:
            module.fail_json(msg=e.msg)
        register_secrets(module, self.secrets)
        self.timeout = module.params.get("connect_timeout") or 5
        self.target = describe_target(self.conninfo)

    def client(self, query_timeout=None):
        return PostgresClient(self.conninfo, timeout=self.timeout, query_timeout=query_timeout, secrets=self.secrets)
