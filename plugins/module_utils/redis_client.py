# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis plumbing of p3.recovery: shared options (doc fragment p3.recovery.redis), settings resolution,
one short-timeout client per node, CLUSTER NODES parsing, slot arithmetic and the cluster-wide probe.

Every node is probed with its own redis.Redis connection (never through a cluster client that could retry or
follow redirects for seconds), in parallel threads, each bounded by the connect and socket timeouts, with a hard
overall deadline on top so a frozen (SIGSTOPped) node can never hang the caller.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import threading
import time
import traceback

from urllib.parse import unquote, urlsplit

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    Deadline,
    DeadlineExceeded,
    P3Error,
    close_quietly,
    describe_error,
    env,
    hostport,
    num_text,
    one_line,
    redact_url,
    register_secrets,
)

REDIS_IMP_ERR = None
try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    HAS_REDIS = True
except ImportError:  # pragma: no cover - depends on the environment
    REDIS_IMP_ERR = traceback.format_exc()
    HAS_REDIS = False

CLUSTER_SLOTS = 16384
DEFAULT_PORT = 6379

# The options of doc fragment p3.recovery.redis, defined once.
REDIS_ARGUMENT_SPEC = dict(
    # Not no_log as a whole (messages name the host); the password inside is registered as a no_log value.
    redis_url=dict(type="str", no_log=False, fallback=env("REDIS_URL")),
    redis_nodes=dict(type="list", elements="str", fallback=env("REDIS_CLUSTER_NODES")),
    redis_username=dict(type="str", fallback=env("REDIS_USERNAME")),
    redis_password=dict(type="str", no_log=True, fallback=env("REDIS_PASSWORD")),
    redis_tls=dict(type="bool", default=False),
    redis_ca_cert=dict(type="path"),
    redis_validate_certs=dict(type="bool", default=True),
    redis_socket_timeout=dict(type="float", default=2.0),
    redis_connect_timeout=dict(type="float", default=2.0),
    redis_deadline=dict(type="float"),
)

# redis_deadline when not set: this many seconds plus the module's own waits (WAIT_OPTIONS).
DEFAULT_DEADLINE = 300.0
# Options of some Redis modules that make them wait on purpose; the default total deadline leaves room for them.
WAIT_OPTIONS = ("wait_timeout", "confirm_timeout", "subscriber_wait", "wait")


def redis_argument_spec(**extra):
    spec = dict(REDIS_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------

class RedisSettings(object):
    """Where and how to connect: the seed nodes plus credentials, TLS and timeouts."""

    def __init__(self, seeds, username=None, password=None, tls=False, ca_cert=None, validate_certs=True,
                 socket_timeout=2.0, connect_timeout=2.0, db=0, source=None, deadline=None):
        self.seeds = list(seeds)
        self.username = username or None
        self.password = password or None
        self.tls = bool(tls)
        self.ca_cert = ca_cert
        self.validate_certs = validate_certs
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(connect_timeout)
        self.db = int(db or 0)
        self.source = source
        # The total deadline of the whole call: every connection made from these settings carries it.
        self.deadline = deadline if deadline is not None else Deadline(None, "redis_deadline")

    @property
    def secrets(self):
        return [s for s in (self.password,) if s]

    @property
    def seed_addresses(self):
        return [hostport(h, p) for h, p in self.seeds]


def parse_address(text, default_port=DEFAULT_PORT):
    """'host:port', '[v6]:port', 'host' or 'redis://host:port' -> (host, port). Raises ValueError."""
    text = (text or "").strip()
    if not text:
        raise ValueError("empty node address")
    if "://" in text:
        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError("no host in %r" % redact_url(text))
        return parts.hostname, parts.port or default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("unbalanced [ in %r" % text)
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:  # bare IPv6 as CLUSTER NODES prints it: last colon is the port
        host, port = text.rsplit(":", 1)
    else:
        host, port = text, ""
    if not host:
        raise ValueError("no host in %r" % text)
    if port == "":
        return host, default_port
    try:
        port = int(port)
    except ValueError:
        raise ValueError("invalid port %r in %r" % (port, text))
    if not 0 < port < 65536:
        raise ValueError("port %d out of range in %r" % (port, text))
    return host, port


def parse_redis_url(url):
    """redis://[user[:password]@]host[:port][/db] (or rediss://) -> dict(host, port, username, password, tls, db)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError("%s (%s)" % (e, redact_url(url)))
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("scheme must be redis:// or rediss://, got %r (%s)" % (parts.scheme or "", redact_url(url)))
    if not parts.hostname:
        raise ValueError("no host in %s" % redact_url(url))
    db = 0
    path = (parts.path or "").strip("/")
    if path:
        try:
            db = int(path)
        except ValueError:
            raise ValueError("database %r is not a number (%s)" % (path, redact_url(url)))
    return dict(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
        db=db,
    )


def _env_nodes():
    raw = os.environ.get("REDIS_CLUSTER_NODES")
    return [n.strip() for n in raw.split(",") if n.strip()] if raw else None


def _pick_source(url, nodes):
    """Which of redis_url / redis_nodes to use when both are set (one may come from the environment)."""
    env_url = os.environ.get("REDIS_URL")
    url_from_env = url is not None and url == env_url
    nodes_from_env = nodes is not None and nodes == _env_nodes()
    if url_from_env and not nodes_from_env:
        return "nodes"
    if nodes_from_env and not url_from_env:
        return "url"
    if url_from_env and nodes_from_env:
        return "nodes"  # both from the environment: the cluster seed list is the more specific
    raise P3Error("parameters are mutually exclusive: redis_url|redis_nodes")


def resolve_redis_settings(params):
    """Module params (after argument_spec validation, env fallbacks applied) -> RedisSettings. Raises P3Error."""
    url = params.get("redis_url")
    nodes = [n.strip() for n in (params.get("redis_nodes") or []) if n and n.strip()] or None
    source = None
    if url and nodes:
        source = _pick_source(url, nodes)
    elif url:
        source = "url"
    elif nodes:
        source = "nodes"
    else:
        raise P3Error("no Redis target: set redis_url or redis_nodes (or REDIS_URL / REDIS_CLUSTER_NODES)")

    username, password, tls, db = None, None, False, 0
    seeds = []
    if source == "url":
        try:
            u = parse_redis_url(url)
        except ValueError as e:
            raise P3Error("invalid redis_url: %s" % one_line(e))
        seeds = [(u["host"], u["port"])]
        username, password, tls, db = u["username"], u["password"], u["tls"], u["db"]
    else:
        creds = []
        for node in nodes:
            try:
                if "://" in node:
                    # redis://user:password@host:port: the credentials are used, not dropped
                    u = parse_redis_url(node)
                    seeds.append((u["host"], u["port"]))
                    tls = tls or u["tls"]
                    if u["username"] or u["password"]:
                        creds.append((u["username"], u["password"]))
                    db = db or u["db"]
                else:
                    seeds.append(parse_address(node))
            except ValueError as e:
                raise P3Error("invalid redis_nodes entry: %s" % one_line(e))
        if len(set(creds)) > 1:
            raise P3Error("redis_nodes entries carry different credentials; one user and password serve the cluster")
        if creds:
            username, password = creds[0]
    if params.get("redis_username"):
        username = params["redis_username"]
    if params.get("redis_password"):
        password = params["redis_password"]
    timeouts = {}
    for key in ("redis_socket_timeout", "redis_connect_timeout"):
        value = params.get(key)
        value = 2.0 if value is None else float(value)
        if value <= 0:
            raise P3Error("%s must be > 0, got %s" % (key, value))
        timeouts[key] = value
    return RedisSettings(
        deadline=Deadline(deadline_seconds(params), "redis_deadline"),
        seeds=_unique(seeds),
        username=username,
        password=password,
        tls=tls or bool(params.get("redis_tls")),
        ca_cert=params.get("redis_ca_cert"),
        validate_certs=params.get("redis_validate_certs", True) is not False,
        socket_timeout=timeouts["redis_socket_timeout"],
        connect_timeout=timeouts["redis_connect_timeout"],
        db=db,
        source=source,
    )


def deadline_seconds(params):
    """The total deadline of a module call: redis_deadline, else DEFAULT_DEADLINE plus the module's own waits."""
    value = params.get("redis_deadline")
    if value is not None:
        value = float(value)
        if value <= 0:
            raise P3Error("redis_deadline must be > 0, got %s" % num_text(value))
        return value
    waits = 0.0
    for name in WAIT_OPTIONS:
        try:
            waits += max(0.0, float(params.get(name) or 0))
        except (TypeError, ValueError):
            pass
    return DEFAULT_DEADLINE + waits


def _unique(items):
    out = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------------------------------
# CLUSTER NODES and slots (pure)
# ---------------------------------------------------------------------------------------------------------------

def parse_cluster_nodes(text):
    """Parse CLUSTER NODES output into a list of dicts.

    Each: id, address (host:port or None for noaddr), host, port, cport, hostname, flags (list, without
    'myself'), myself, role (master|replica|unknown), master_id, ping_sent, pong_recv, config_epoch, link_state,
    slots (list of [start, end]), migrating, importing.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, addr, flags, master, ping_sent, pong_recv, epoch, link = fields[:8]
        flag_list = [f for f in flags.split(",") if f and f != "noflags"]
        hostname = None
        if "," in addr:
            addr, hostname = addr.split(",", 1)
        cport = None
        if "@" in addr:
            addr, cport = addr.split("@", 1)
        host, port = None, None
        try:
            host, port = parse_address(addr, default_port=0)
        except ValueError:
            pass
        address = hostport(host, port) if host and port else None
        if "noaddr" in flag_list:
            address = None
        slots, migrating, importing = [], [], []
        for token in fields[8:]:
            if token.startswith("["):
                body = token.strip("[]")
                if "->-" in body:
                    slot, target = body.split("->-", 1)
                    migrating.append({"slot": int(slot), "node": target})
                elif "-<-" in body:
                    slot, source = body.split("-<-", 1)
                    importing.append({"slot": int(slot), "node": source})
                continue
            if "-" in token:
                a, b = token.split("-", 1)
                slots.append([int(a), int(b)])
            else:
                slots.append([int(token), int(token)])
        if "master" in flag_list:
            role = "master"
        elif "slave" in flag_list or "replica" in flag_list:
            role = "replica"
        else:
            role = "unknown"
        out.append(dict(
            id=node_id,
            address=address,
            host=host,
            port=port,
            cport=int(cport) if cport and cport.isdigit() else None,
            hostname=hostname or None,
            flags=[f for f in flag_list if f != "myself"],
            myself="myself" in flag_list,
            role=role,
            master_id=None if master == "-" else master,
            ping_sent=_int(ping_sent),
            pong_recv=_int(pong_recv),
            config_epoch=_int(epoch),
            link_state=link,
            slots=slots,
            migrating=migrating,
            importing=importing,
        ))
    return out


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_info(text):
    """INFO / CLUSTER INFO text -> dict of str (already parsed dicts pass through)."""
    if isinstance(text, dict):
        return dict(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        out[k] = v
    return out


def slots_from_ranges(ranges):
    """[[a, b], ...] -> set of slot numbers."""
    out = set()
    for a, b in ranges or ():
        out.update(range(int(a), int(b) + 1))
    return out


def compress_slots(slots):
    """Iterable of slot numbers -> sorted list of [start, end] ranges."""
    out = []
    for s in sorted(set(slots)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def format_ranges(ranges):
    """[[0, 5460], [7000, 7000]] -> ['0-5460', '7000']."""
    return ["%d-%d" % (a, b) if a != b else "%d" % a for a, b in ranges]


def uncovered_ranges(covered, total=CLUSTER_SLOTS):
    """The ranges of slots in [0, total) that are not in covered (a set of ints)."""
    return compress_slots(s for s in range(total) if s not in covered)


# ---------------------------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------------------------

_CLIENT_KWARGS = None


def _optional_client_kwargs():
    """Keyword arguments that only some redis-py versions accept: no retries, no CLIENT SETINFO round trip."""
    global _CLIENT_KWARGS
    if _CLIENT_KWARGS is None:
        import inspect
        params = inspect.signature(redis.Redis.__init__).parameters
        kwargs = {}
        if "retry" in params:
            kwargs["retry"] = Retry(NoBackoff(), 0)
        if "protocol" in params:
            kwargs["protocol"] = 2  # RESP2: no HELLO round trip, works with every server version
        if "driver_info" in params:
            kwargs["driver_info"] = None
        elif "lib_name" in params:
            kwargs["lib_name"] = None
            kwargs["lib_version"] = None
        _CLIENT_KWARGS = kwargs
    return dict(_CLIENT_KWARGS)


class _DeadlineConnectionMixin(object):
    """A redis-py connection under a total deadline (p3_deadline, a common.Deadline set on the class): before
    connecting, sending and reading, its connect / socket timeouts become min(own timeout, time left); once the
    time is up no operation starts (DeadlineExceeded naming the node), and a read cut by the deadline says so.
    One frozen node thus costs the time left, never one socket timeout per pending operation."""

    p3_deadline = None

    def __init__(self, *args, **kwargs):
        super(_DeadlineConnectionMixin, self).__init__(*args, **kwargs)
        self._p3_socket_timeout = self.socket_timeout
        self._p3_connect_timeout = self.socket_connect_timeout

    def _p3_target(self):
        return hostport(getattr(self, "host", "?"), getattr(self, "port", "?"))

    def _p3_arm(self):
        deadline = self.p3_deadline
        if deadline is None or deadline.end is None:
            return
        deadline.check(self._p3_target())
        self.socket_timeout = deadline.bound(self._p3_socket_timeout)
        self.socket_connect_timeout = deadline.bound(self._p3_connect_timeout)
        sock = self._get_socket()
        if sock is not None and sock.gettimeout() != 0:  # 0: inside a non-blocking can_read, left alone
            sock.settimeout(self.socket_timeout)
        self.update_parser_timeout(self.socket_timeout)

    def _p3_cut(self, exc):
        """A timeout that happened because the deadline ran out is reported as the deadline."""
        deadline = self.p3_deadline
        if deadline is not None and deadline.expired and _is_connection_error(exc):
            return DeadlineExceeded(deadline.message(self._p3_target()), target=self._p3_target())
        return None

    def connect_check_health(self, *args, **kwargs):
        if self._get_socket() is not None:
            return None
        self._p3_arm()
        try:
            return super(_DeadlineConnectionMixin, self).connect_check_health(*args, **kwargs)
        except Exception as e:
            cut = self._p3_cut(e)
            if cut is None:
                raise
            raise cut

    def send_packed_command(self, *args, **kwargs):
        self._p3_arm()
        try:
            return super(_DeadlineConnectionMixin, self).send_packed_command(*args, **kwargs)
        except Exception as e:
            cut = self._p3_cut(e)
            if cut is None:
                raise
            raise cut

    def read_response(self, *args, **kwargs):
        try:
            self._p3_arm()
        except DeadlineExceeded:
            self.disconnect()  # a reply is pending: the connection cannot be reused
            raise
        try:
            return super(_DeadlineConnectionMixin, self).read_response(*args, **kwargs)
        except Exception as e:
            cut = self._p3_cut(e)
            if cut is None:
                raise
            self.disconnect()
            raise cut


def deadline_connection_class(deadline, tls=False):
    """The redis-py connection class (TCP or TLS) whose connections all carry deadline."""
    base = redis.connection.SSLConnection if tls else redis.connection.Connection
    return type("P3Deadline" + base.__name__, (_DeadlineConnectionMixin, base), {"p3_deadline": deadline})


def node_client(settings, host, port, decode_responses=True):
    """A redis.Redis to exactly one node, with the short timeouts and no retry."""
    if not HAS_REDIS:
        raise P3Error("the redis Python library is required (pip install redis)")
    kwargs = dict(
        host=host,
        port=int(port),
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        decode_responses=decode_responses,
        health_check_interval=0,
    )
    if settings.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=settings.ca_cert,
            ssl_cert_reqs="required" if settings.validate_certs else "none",
            ssl_check_hostname=bool(settings.validate_certs),
        )
    kwargs.update(_optional_client_kwargs())
    client = redis.Redis(**kwargs)
    if settings.deadline.end is not None:
        # every connection of this client's pool is made under the call's total deadline
        client.connection_pool.connection_class = deadline_connection_class(settings.deadline, settings.tls)
    return client


def cluster_client(settings, **extra):
    """A redis.cluster.RedisCluster over the seeds, for key-level actions (not for probing)."""
    if not HAS_REDIS:
        raise P3Error("the redis Python library is required (pip install redis)")
    from redis.cluster import ClusterNode, RedisCluster
    kwargs = dict(
        startup_nodes=[ClusterNode(h, p) for h, p in settings.seeds],
        username=settings.username,
        password=settings.password,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        decode_responses=True,
    )
    if settings.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=settings.ca_cert,
            ssl_cert_reqs="required" if settings.validate_certs else "none",
            ssl_check_hostname=bool(settings.validate_certs),
        )
    if settings.deadline.end is not None:
        kwargs["connection_class"] = deadline_connection_class(settings.deadline, settings.tls)
    kwargs.update(extra)
    try:
        return RedisCluster(**kwargs)
    except DeadlineExceeded:
        raise
    except Exception as e:
        raise P3Error("cannot open the Redis cluster via %s: %s" % (
            ", ".join(settings.seed_addresses), describe_redis_error(e, settings)))


def key_slot(key):
    """Redis Cluster hash slot of a key (CRC16 of its hash tag, or of the whole key)."""
    from redis.crc import key_slot as _slot
    return _slot(key.encode("utf-8") if not isinstance(key, bytes) else key)


def key_node_client(settings, key, moved=None):
    """Connect to the node that serves ``key``, with the settings' credentials and short timeouts: on a Redis
    Cluster the master owning the key's slot (asked of the seeds in turn with CLUSTER SLOTS), on a standalone Redis
    the first seed that answers. ``moved``: the text of a ``MOVED <slot> <host>:<port>`` reply an earlier node gave
    for this key - connect to the node it names instead (the slot moved since it was looked up).

    The one home of key routing for modules that keep a plain connection to one node (BullMQ's scripts, the run
    locks): no cluster client that retries or follows redirects for seconds. Returns (client, (host, port),
    cluster). Raises P3Error with one line naming the seeds (or the node) and the cause."""
    if not HAS_REDIS:
        raise P3Error("the redis Python library is required (pip install redis)")
    if moved:
        parts = str(moved).split()
        if len(parts) < 3 or parts[0] != "MOVED":
            raise P3Error("not a MOVED reply: %s" % one_line(moved, 80))
        host, _sep, port = parts[2].rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        client = node_client(settings, host, port)
        try:
            client.ping()
        except Exception as e:
            close_quietly(client)
            raise P3Error("key %s moved to %s, which cannot be reached: %s" % (
                one_line(key, 80), hostport(host, port), describe_redis_error(e, settings)))
        return client, (host, int(port)), True
    slot = key_slot(key)
    errors = []
    for host, port in settings.seeds:
        client = None
        at = hostport(host, port)
        try:
            client = node_client(settings, host, port)
            if str(client.info("cluster").get("cluster_enabled", 0)) != "1":
                return client, (host, int(port)), False
            owner = None
            for entry in client.execute_command("CLUSTER", "SLOTS"):
                if int(entry[0]) <= slot <= int(entry[1]):
                    master = entry[2]
                    owner = ((master[0].decode() if isinstance(master[0], bytes) else master[0]) or host,
                             int(master[1]))
                    break
            if owner is None:
                close_quietly(client)
                raise P3Error("slot %d (key %s) is not served by any master (seen from %s)" % (
                    slot, one_line(key, 80), hostport(host, port)))
            if owner != (host, int(port)):
                close_quietly(client)
                at = "%s (master of slot %d, seen from %s)" % (hostport(*owner), slot, hostport(host, port))
                client = node_client(settings, owner[0], owner[1])
                client.ping()
            return client, owner, True
        except P3Error:
            raise
        except Exception as e:  # next seed
            errors.append("%s %s" % (at, describe_redis_error(e, settings)))
            close_quietly(client)
    raise P3Error("cannot reach the Redis node serving %s via %s: %s" % (
        one_line(key, 80), ", ".join(settings.seed_addresses), "; ".join(errors) or "no seed"))


def describe_redis_error(exc, settings=None):
    """Cause of a redis-py exception, one line, without secrets."""
    timeout = None
    secrets = ()
    if settings is not None:
        timeout = settings.socket_timeout
        secrets = settings.secrets
        text = str(exc)
        if "connecting to" in text and "Timeout" in text or text == "Timeout connecting to server":
            timeout = settings.connect_timeout
    if isinstance(exc, P3Error):
        return exc.msg
    if HAS_REDIS:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            return "authentication failed (%s)" % _strip_redis_prefix(one_line(str(exc), 160))
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return "ACL denied (%s)" % one_line(str(exc), 160)
        if isinstance(exc, redis.exceptions.TimeoutError):
            return "timed out after %ss" % num_text(timeout) if timeout else "timed out"
    text = str(exc)
    if "Connection closed by server" in text:
        return "connection closed by server"
    return describe_error(exc, timeout=timeout, secrets=secrets)


def _strip_redis_prefix(text):
    for prefix in ("WRONGPASS ", "NOAUTH "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text.rstrip(".")


def _is_connection_error(exc):
    return HAS_REDIS and isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def _call(client, *args):
    return client.execute_command(*args)


def probe_node(settings, host, port, extra=None):
    """Talk to one node: PING, INFO replication/cluster, CLUSTER INFO/NODES when cluster-enabled.

    Returns dict(address, reachable, error, latency_ms, role, cluster_enabled, cluster_info, cluster_nodes,
    replication). Never raises for service errors. extra(client, rec), when given, runs last on the same
    connection to add more fields (its errors are reported like the others').
    """
    address = hostport(host, port)
    rec = dict(address=address, host=host, port=port, reachable=False, error=None, latency_ms=None,
               role=None, cluster_enabled=False, cluster_info=None, cluster_nodes=None, replication=None,
               redis_version=None)
    client = None
    try:
        client = node_client(settings, host, port)
        t0 = time.monotonic()
        client.ping()
        rec["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 2)
        rec["reachable"] = True
        info = parse_info(_call(client, "INFO", "replication"))
        rec["replication"] = info
        role = info.get("role")
        rec["role"] = "replica" if role in ("slave", "replica") else (role or None)
        cinfo = parse_info(_call(client, "INFO", "cluster"))
        rec["cluster_enabled"] = str(cinfo.get("cluster_enabled", "0")) == "1"
        server = parse_info(_call(client, "INFO", "server"))
        rec["redis_version"] = server.get("redis_version")
        if rec["cluster_enabled"]:
            rec["cluster_info"] = parse_info(_call(client, "CLUSTER", "INFO"))
            rec["cluster_nodes"] = parse_cluster_nodes(_call(client, "CLUSTER", "NODES"))
        if extra is not None:
            extra(client, rec)
    except P3Error as e:
        rec["error"] = e.msg
    except Exception as e:  # any library error becomes evidence, never a crash
        rec["error"] = describe_redis_error(e, settings)
        if rec["reachable"]:
            if _is_connection_error(e):
                # Answered PING, then froze or dropped the connection: not usable.
                rec["reachable"] = False
                rec["error"] = "answered PING, then %s" % rec["error"]
            else:
                rec["error"] = "answered PING, but %s" % rec["error"]
    finally:
        close_quietly(client)
    return rec


def probe_nodes(settings, discover=True, deadline=None, max_workers=16, extra=None):
    """Probe every seed and, when discover, every node the seeds' CLUSTER NODES name, in parallel.

    Returns {address: record} (see probe_node). Nodes still pending at the deadline are reported unreachable.
    """
    per_node = settings.connect_timeout + 3 * settings.socket_timeout
    if deadline is None:
        # Discovery chains at most one extra wave after the seed answered.
        deadline = time.monotonic() + settings.connect_timeout + settings.socket_timeout + per_node + 1.0
    deadline = settings.deadline.cut(deadline)
    lock = threading.Lock()
    done = threading.Condition(lock)
    results = {}
    pending = {}
    queue = []

    known_ids = set()

    def worker(host, port):
        rec = probe_node(settings, host, port, extra=extra)
        with lock:
            results[rec["address"]] = rec
            pending.pop(rec["address"], None)
            me = _myself(rec)
            if me is not None:
                known_ids.add(me["id"])
            if discover and rec.get("cluster_nodes"):
                for n in rec["cluster_nodes"]:
                    # a node already reached under another name (seed host name vs IP) is not a new node
                    if n["myself"] or n["id"] in known_ids:
                        continue
                    if n["address"] and n["address"] not in results and n["address"] not in pending \
                            and (n["host"], n["port"]) not in queue and "handshake" not in n["flags"]:
                        queue.append((n["host"], n["port"]))
            done.notify_all()

    def start(host, port):
        address = hostport(host, port)
        if address in pending or address in results:
            return
        pending[address] = (host, port)
        t = threading.Thread(target=worker, args=(host, port), name="p3-redis-%s" % address)
        t.daemon = True  # a stuck node must not keep the module process alive
        t.start()

    with lock:
        for host, port in settings.seeds:
            start(host, port)
        while True:
            while queue and len(pending) < max_workers:
                start(*queue.pop(0))
            if not pending and not queue:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done.wait(min(remaining, 0.5))
        for address, (host, port) in list(pending.items()) + [(hostport(h, p), (h, p)) for h, p in queue]:
            results[address] = dict(address=address, host=host, port=port, reachable=False,
                                    error=(settings.deadline.message(address) if settings.deadline.expired
                                           else "no answer within the probe deadline"), latency_ms=None, role=None,
                                    cluster_enabled=False, cluster_info=None, cluster_nodes=None,
                                    replication=None, redis_version=None)
    return results


_FAIL_FLAGS = ("fail", "fail?")


def _myself(rec):
    for n in rec.get("cluster_nodes") or ():
        if n["myself"]:
            return n
    return None


def _drop_aliases(records, seeds):
    """One record per cluster node: the same node reached under two names (seed host name and the IP its peers
    list) keeps the name it was first given (seeds first)."""
    out = {}
    ids = set()
    for address in [a for a in seeds if a in records] + sorted(a for a in records if a not in seeds):
        rec = records[address]
        me = _myself(rec) if rec["reachable"] else None
        if me is not None:
            if me["id"] in ids:
                continue
            ids.add(me["id"])
        out[address] = rec
    return out


def summarize(records, seeds=None):
    """Turn per-node probe records into the redis_probe verdict (pure; see the redis_probe RETURN docs)."""
    seeds = list(seeds or [])
    records = _drop_aliases(records, seeds)
    reachable = [r for r in records.values() if r["reachable"]]
    cluster_enabled = any(r["cluster_enabled"] for r in reachable)
    views = dict((r["address"], r["cluster_nodes"]) for r in reachable if r["cluster_enabled"] and r["cluster_nodes"])

    # Everything any view knows about each address; a node's own line (myself) wins over what peers say.
    own = {}
    for viewer, lines in views.items():
        for n in lines:
            if n["myself"]:
                own[viewer] = n
    # A node we reached under one name (a seed's host name) is listed by its peers under another (its IP):
    # the id tells, and the name we reached it by wins.
    canonical = dict((me["id"], viewer) for viewer, me in own.items())
    seen_by_peers = {}
    for viewer, lines in views.items():
        for n in lines:
            if n["myself"] or not (n["address"] or n["id"] in canonical):
                continue
            address = canonical.get(n["id"], n["address"])
            seen_by_peers.setdefault(address, []).append(dict(n, viewer=viewer))
    order = []
    for a in seeds + sorted(records) + sorted(seen_by_peers):
        if a not in order:
            order.append(a)

    id_to_address = dict(canonical)
    for lines in views.values():
        for n in lines:
            if n["address"]:
                id_to_address.setdefault(n["id"], n["address"])

    nodes = []
    for address in order:
        rec = records.get(address) or dict(address=address, reachable=False,
                                           error="not probed", latency_ms=None, role=None, replication=None)
        me = own.get(address)
        peers = seen_by_peers.get(address, [])
        ref = me or (peers[0] if peers else None)
        peer_flags = sorted(set(f for p in peers for f in p["flags"] if f in _FAIL_FLAGS))
        if ref is not None:
            role = ref["role"]
        else:
            role = rec.get("role") or ("unknown" if not rec["reachable"] else "master")
        if role == "unknown" and rec.get("role"):
            role = rec["role"]
        master_id = ref["master_id"] if ref else None
        node = dict(
            address=address,
            reachable=bool(rec["reachable"]),
            role=role,
            id=ref["id"] if ref else None,
            flags=list(ref["flags"]) if ref else [],
            flagged_by_peers=peer_flags,
            error=rec.get("error"),
            latency_ms=rec.get("latency_ms"),
            master_id=master_id,
            master=id_to_address.get(master_id) if master_id else None,
            slots=format_ranges(ref["slots"]) if ref and ref["role"] == "master" else [],
            cluster_state=(rec.get("cluster_info") or {}).get("cluster_state"),
            link_state=(peers[0]["link_state"] if peers and not me else (ref["link_state"] if ref else None)),
            master_link_status=(rec.get("replication") or {}).get("master_link_status"),
        )
        nodes.append(node)

    model = _cluster_model(records, seeds) if cluster_enabled else None
    if model is not None:
        # One model judges a cluster node (redis_cluster.judge_node, via build_topology): this verdict is a view of
        # it, so the sessions/mesh roles and the repair never disagree about which node is down, busy or serving.
        health = dict((m["address"], m) for m in model["nodes"] if m.get("address"))
        for n in nodes:
            m = health.get(n["address"]) or {}
            n["health"] = m.get("health") or ("up" if n["reachable"] else "busy")
            n["health_why"] = m.get("health_why")
        failed_nodes = [n["address"] for n in nodes if not n["reachable"] or (health.get(n["address"]) or {}).get("failed")]
    else:
        for n in nodes:
            n["health"] = "up" if n["reachable"] else "down"
            n["health_why"] = None if n["reachable"] else n["error"]
        failed_nodes = [n["address"] for n in nodes if not n["reachable"]]
    failed_set = set(failed_nodes)
    # Healthy members per role: reachable, not flagged failed (a master must also serve slots in a cluster).
    masters = [n["address"] for n in nodes if n["role"] == "master" and n["address"] not in failed_set
               and (n["slots"] or not cluster_enabled)]
    replicas = [n["address"] for n in nodes if n["role"] == "replica" and n["address"] not in failed_set]

    result = dict(
        nodes=nodes,
        cluster_enabled=cluster_enabled,
        cluster_state=None,
        slots_assigned=None,
        slots_ok=None,
        slots_uncovered=[],
        views_agree=None,
        masters=len(masters),
        replicas=len(replicas),
        failed_nodes=failed_nodes,
        busy_nodes=[n["address"] for n in nodes if n["health"] == "busy"],
        down_nodes=[n["address"] for n in nodes if n["health"] == "down"],
        serving=None,
    )
    problems = []
    # Nodes the cluster itself judges down that own no slot (a failed-over master, a dead replica): once every slot
    # is served they cost redundancy, not service; the one remaining step is to start them again.
    spare_down = []
    for n in nodes:
        if not n["reachable"] and model is not None and n["health"] == "down" and not n["slots"]:
            spare_down.append(n)
            continue
        if not n["reachable"]:
            problems.append("node %s unreachable (%s)%s" % (n["address"], n["error"] or "no answer", (
                ", %s: %s" % (n["health"], n["health_why"])) if model is not None and n["health_why"] else ""))
        elif n["error"]:
            problems.append("node %s: %s" % (n["address"], n["error"]))
        elif n["flagged_by_peers"]:
            problems.append("node %s flagged %s by peers" % (n["address"], "/".join(n["flagged_by_peers"])))
    if not reachable:
        result["cluster_enabled"] = None

    if cluster_enabled:
        states = [n["cluster_state"] for n in nodes if n["reachable"] and n["cluster_state"]]
        if states and all(s == "ok" for s in states):
            state = "ok"
        elif states:
            state = "fail"
        else:
            state = None
        result["cluster_state"] = state
        # Slot coverage: configured = assigned in any view; ok = claimed by a reachable, non-failed master itself.
        assigned = set()
        owner_maps = []
        for lines in views.values():
            owners = {}
            for n in lines:
                if n["role"] == "master":
                    for a, b in n["slots"]:
                        for s in range(a, b + 1):
                            owners[s] = n["id"]
            owner_maps.append(owners)
            assigned.update(owners)
        # slots served: the model's (claimed by a reachable master that is not flagged, and the consensus owner)
        ok = CLUSTER_SLOTS - (model["slots_uncovered_count"] or 0)
        result["slots_assigned"] = len(assigned)
        result["slots_ok"] = ok
        result["slots_uncovered"] = list(model["slots_uncovered"])
        result["views_agree"] = all(m == owner_maps[0] for m in owner_maps[1:]) if owner_maps else None
        result["serving"] = bool(model["serving"])
        for n in nodes:
            if n["reachable"] and n["role"] == "replica" and n["master_link_status"] not in (None, "up"):
                problems.append("replica %s master link %s" % (n["address"], n["master_link_status"]))
        if ok < CLUSTER_SLOTS:
            problems.append("slots uncovered: %s (%d slots)" % (
                _short_ranges(result["slots_uncovered"]), CLUSTER_SLOTS - ok))
        if result["views_agree"] is False:
            problems.append("nodes disagree about the slot configuration")
        state_text = "cluster_state=%s" % (state or "unknown")
        healthy = not problems and state == "ok" and ok == CLUSTER_SLOTS
        degraded = degraded_redundancy(spare_down) if healthy else []
        if not healthy:
            problems = ["node %s unreachable (%s), %s: %s" % (n["address"], n["error"] or "no answer", n["health"],
                                                               n["health_why"]) for n in spare_down] + problems
        if healthy:
            reason = "%d nodes reachable (%d masters, %d replicas); %s; %d/%d slots ok" % (
                len(nodes) - len(spare_down), len(masters), len(replicas), state_text, ok, CLUSTER_SLOTS)
            if degraded:
                reason = "service restored, redundancy degraded: %s; %s" % (
                    "; ".join(d["summary"] for d in degraded), reason)
                result["degraded"] = degraded
        else:
            reason = "; ".join(problems + [state_text])
    else:
        healthy = bool(nodes) and not problems
        result["serving"] = healthy
        if healthy:
            reason = "%d node%s answered PING (standalone)" % (len(nodes), "" if len(nodes) == 1 else "s")
        else:
            reason = "; ".join(problems) or "no Redis node to probe"
    result["healthy"] = healthy
    result["reason"] = reason
    return result


def degraded_redundancy(down_nodes):
    """What a cluster that serves every slot still lacks: one entry per node the cluster judges down that owns no
    slot, with the one remaining step named ({node, was, why, next, summary})."""
    out = []
    for n in down_nodes:
        was = "master" if n.get("role") == "master" else "replica"
        step = "restart Redis node %s (it rejoins as a replica)" % n["address"]
        why = n.get("health_why") or n.get("error") or "down"
        out.append(dict(node=n["address"], was=was, why=why, next=step,
                        summary="node %s down (%s; owns no slot) - next: %s" % (n["address"], why, step)))
    return out


def _cluster_model(records, seeds):
    """The cluster topology of redis_cluster.build_topology (imported here: redis_cluster builds on this module)."""
    from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import build_topology
    return build_topology(records, seeds=seeds)


def _short_ranges(ranges, limit=6):
    if len(ranges) <= limit:
        return ",".join(ranges)
    return ",".join(ranges[:limit]) + ",... (%d ranges)" % len(ranges)


def probe(settings):
    """Probe every node reachable from the seeds; returns the summarize() dict."""
    records = probe_nodes(settings)
    return summarize(records, seeds=settings.seed_addresses)


class RedisTarget(object):
    """What modules use: resolves the shared options once and hands out per-node and cluster clients."""

    def __init__(self, module):
        self.module = module
        if not HAS_REDIS:
            from ansible.module_utils.basic import missing_required_lib
            module.fail_json(msg=missing_required_lib("redis"), exception=REDIS_IMP_ERR)
        try:
            self.settings = resolve_redis_settings(module.params)
        except P3Error as e:
            module.fail_json(msg=e.msg)
        register_secrets(module, self.settings.secrets)

    def node(self, address):
        host, port = parse_address(address)
        return node_client(self.settings, host, port)

    def cluster(self, **extra):
        return cluster_client(self.settings, **extra)

    def probe(self):
        return probe(self.settings)
