#!/usr/bin/env python3
"""P3-shaped lab app (lab only, never shipped in the collection).

A single asyncio/aiohttp process that behaves like the parts of P3 Protocol the
recovery runbook touches: a /health that really checks PostgreSQL and every
Redis Cluster primary, Redis-backed handshake sessions, a Redis pub/sub mesh
relay with websocket peers, a BullMQ anchor queue whose worker sends real
transactions to a dev chain, and Prometheus metrics.  The contract is
docs/lab.md, section "The lab app".

The process must come up whatever state its dependencies are in: nothing is
connected at start-up, every dependency call is bounded by a timeout, and
clients are rebuilt when they break, so the app heals itself once the
dependency is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.crc import key_slot
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("p3app")

SESSION_TTL = 3600
HEALTH_STEP_TIMEOUT = 1.0     # per dependency call made by /health
HEALTH_CHECK_TIMEOUT = 1.8    # per check (database, redis) as a whole
CALL_TIMEOUT = 2.0            # ordinary request-path Redis calls
REQUIRED_SESSION_FIELDS = ("sessionId", "deviceId", "createdAt", "expiresAt")
QUEUE_STATES = ("wait", "active", "delayed", "failed", "completed")


def now_ms() -> int:
    return int(time.time() * 1000)


def short_error(exc: BaseException) -> str:
    """A one-line, human-sized description of a dependency error."""
    if isinstance(exc, asyncio.TimeoutError) or "Timeout" in type(exc).__name__:
        return "timeout"
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if "connection refused" in low or "connect call failed" in low:
        return "connection refused"
    if "connection reset" in low:
        return "connection reset"
    if "closed by server" in low or "connection closed" in low:
        return "connection closed by server"
    return " ".join(text.split())[:300]


class Config:
    def __init__(self, env=os.environ):
        self.host = env.get("HOST", "127.0.0.1")
        self.port = int(env.get("PORT", "5000"))
        self.database_url = env.get("DATABASE_URL", "postgresql://p3app@127.0.0.1:5432/p3")
        nodes = env.get("REDIS_CLUSTER_NODES", "127.0.0.1:6379")
        self.redis_nodes = []
        for item in nodes.split(","):
            item = item.strip()
            if not item:
                continue
            h, _, p = item.rpartition(":")
            self.redis_nodes.append((h or "127.0.0.1", int(p)))
        self.redis_password = env.get("REDIS_PASSWORD") or None
        self.rpc_url = env.get("RPC_URL", "http://127.0.0.1:8545")
        self.private_key = env.get("PRIVATE_KEY", "")
        self.anchor_sink = env.get("ANCHOR_SINK", "0x000000000000000000000000000000000000a11c")
        self.anchor_queue = env.get("ANCHOR_QUEUE", "anchor")
        self.anchor_prefix = env.get("ANCHOR_PREFIX", "{bull}")
        self.anchor_concurrency = int(env.get("ANCHOR_CONCURRENCY", "4"))
        # on SIGTERM, how long the worker's active jobs may still run (below supervisor's stopwaitsecs)
        self.anchor_close_timeout = float(env.get("ANCHOR_CLOSE_TIMEOUT", "8"))
        self.db_pool_max = int(env.get("DB_POOL_MAX", "5"))


class Metrics:
    def __init__(self):
        disable_created_metrics()          # no *_created series: keeps scrapes short
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter("api_requests_total", "API requests",
                                ["endpoint", "method", "status"], registry=r)
        self.auth_failures = Counter("p3_auth_failures_total",
                                     "Requests answered 401 (session/auth failures)", registry=r)
        self.mesh_peers = Gauge("p3_mesh_peers", "Mesh peers connected to this process", registry=r)
        self.ws_connections = Gauge("active_websocket_connections",
                                    "Open websocket connections", registry=r)
        self.relay_up = Gauge("p3_mesh_relay_up", "Mesh relay subscribed and accepting peers (0/1)",
                              registry=r)
        self.queue_depth = Gauge("p3_anchor_queue_depth", "BullMQ anchor queue length by state",
                                 ["state"], registry=r)
        self.db_pool = Gauge("db_connection_pool_size", "Database pool connections", ["state"],
                             registry=r)
        self.anchor_jobs = Counter("p3_anchor_jobs_total", "Anchor jobs processed by this worker",
                                   ["result"], registry=r)
        for s in QUEUE_STATES:
            self.queue_depth.labels(s).set(0)
        for s in ("idle", "active", "total"):
            self.db_pool.labels(s).set(0)
        for s in ("completed", "failed"):
            self.anchor_jobs.labels(s)
        self.relay_up.set(1)


# --------------------------------------------------------------------------- database

class Database:
    """asyncpg pool created lazily; min_size 0 and a 1 s idle lifetime so the app
    holds no connection slot it is not using."""

    def __init__(self, cfg: Config, metrics: Metrics):
        self.cfg = cfg
        self.metrics = metrics
        self.pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        try:
            u = urlsplit(cfg.database_url)
            self.address = f"{u.hostname or 'localhost'}:{u.port or 5432}"
        except ValueError:
            self.address = "?"

    async def _get_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            async with self._lock:
                if self.pool is None:
                    self.pool = await asyncpg.create_pool(
                        self.cfg.database_url,
                        min_size=0,
                        max_size=self.cfg.db_pool_max,
                        max_inactive_connection_lifetime=1.0,
                        timeout=1.0,              # connect timeout
                        command_timeout=5.0,
                        server_settings={"application_name": "p3-protocol"},
                    )
        return self.pool

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float = 1.0):
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=timeout) as conn:
                yield conn
        finally:
            self.update_gauges()

    def update_gauges(self):
        p = self.pool
        if p is None:
            return
        total, idle = p.get_size(), p.get_idle_size()
        self.metrics.db_pool.labels("total").set(total)
        self.metrics.db_pool.labels("idle").set(idle)
        self.metrics.db_pool.labels("active").set(max(total - idle, 0))

    async def check(self) -> str:
        last: BaseException | None = None
        try:
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
                for _attempt in range(2):
                    try:
                        async with self.connection(timeout=HEALTH_STEP_TIMEOUT) as conn:
                            await conn.fetchval("SELECT 1", timeout=HEALTH_STEP_TIMEOUT)
                        return "ok"
                    except (asyncpg.exceptions.ConnectionDoesNotExistError,
                            asyncpg.exceptions.InterfaceError) as e:
                        last = e      # a pooled connection died under us: one retry
        except asyncio.TimeoutError:
            return "timeout: no database connection within %.0fs" % HEALTH_STEP_TIMEOUT
        except OSError as e:                       # refused, unreachable: say where
            return f"{short_error(e)} ({self.address})"
        except Exception as e:  # noqa: BLE001 - report whatever the server said
            return short_error(e)
        return short_error(last) if last else "unknown database error"

    async def close(self):
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 3)
            except Exception:  # noqa: BLE001
                self.pool.terminate()


# --------------------------------------------------------------------------- redis

def slot_owner(nodes: list[dict], slot: int) -> str | None:
    """Address of the live master serving `slot` in a parsed CLUSTER NODES (None when none serves it)."""
    for n in nodes:
        if "master" not in n["flags"] or n["flags"] & {"fail", "fail?", "noaddr"}:
            continue
        for tok in n["slots"]:
            if tok.startswith("["):
                continue
            a, _, b = tok.partition("-")
            if int(a) <= slot <= int(b or a):
                return n["addr"]
    return None


def parse_cluster_nodes(text: str) -> list[dict]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@")[0].split(",")[0]
        nodes.append({
            "id": parts[0],
            "addr": addr,
            "flags": set(parts[2].split(",")),
            "master_id": parts[3],
            "link": parts[7],
            "slots": parts[8:],
        })
    return nodes


def _tolerate_dead_default_node(rc: RedisCluster) -> None:
    """redis-py initialises a cluster client by sending COMMAND to its default
    node, the first primary of CLUSTER SLOTS.  While that primary is dead and not
    yet failed over (up to node-timeout + election), every initialisation fails
    and the client cannot reach even the healthy primaries.  Try the other nodes
    instead, and make the first primary that answers the default node."""
    parser = rc.commands_parser
    original = parser.initialize

    async def initialize(node=None):
        nodes = list(rc.nodes_manager.nodes_cache.values())
        candidates = [node] if node is not None else []
        candidates += [n for n in nodes if n is not node and n.server_type == "primary"]
        candidates += [n for n in nodes if n is not node and n.server_type != "primary"]
        last: BaseException | None = None
        for cand in candidates:
            try:
                await original(cand)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                last = e
                continue
            if cand is not node and cand.server_type == "primary":
                rc.nodes_manager.default_node = cand
            return
        if last is not None:
            raise last
        await original(node)

    parser.initialize = initialize


class _NodeLocalScript:
    """A bullmq Lua script that never broadcasts.  redis-py answers NOSCRIPT by
    sending SCRIPT LOAD to *every* primary, which fails while one of them is
    down (and a job that already ran would then be moved to `failed`).  EVAL on
    the key's own node caches the script there just as well."""

    def __init__(self, script):
        self._script = script

    def __getattr__(self, name):
        return getattr(self._script, name)

    async def __call__(self, keys=None, args=None, client=None):
        target = client if client is not None else self._script.registered_client
        if not isinstance(target, RedisCluster):      # pipelines etc.: redis-py's own path
            return await self._script(keys=keys, args=args, client=client)
        keys = list(keys or [])
        flat = tuple(keys) + tuple(args or [])
        try:
            return await target.evalsha(self._script.sha, len(keys), *flat)
        except NoScriptError:
            return await target.eval(self._script.script, len(keys), *flat)


def name_every_connection(rc: RedisCluster, name: str) -> None:
    """Name every connection the cluster client opens from now on, as ioredis's `connectionName` does for P3's worker:
    to the nodes it knows and to a node it meets later (the old master after a failback, a promoted replica). BullMQ's
    set_client_name names the nodes known at that moment only; redis-py builds a node it meets later (a MOVED to it,
    a topology refresh) from its nodes manager's connection settings, so without this that node's connections had no
    name, and diagnose, which counts a queue's workers by their name, said the worker was absent while it took jobs
    (issue 17; tests/integration/test_anchor_failover.py)."""
    rc.nodes_manager.connection_kwargs["client_name"] = name


def node_local_scripts(*connections) -> None:
    """Wrap the scripts of bullmq RedisConnection objects (in place: bullmq's
    Scripts share the dict)."""
    for conn in connections:
        if conn is None:
            continue
        for name, script in list(getattr(conn, "commands", {}).items()):
            if not isinstance(script, _NodeLocalScript):
                conn.commands[name] = _NodeLocalScript(script)


class NoNodeReachable(ConnectionError):
    pass


class RedisHub:
    """Owns the app's RedisCluster client (sessions, queue producer, metrics) and
    one small standalone client per node (health probes, pub/sub).  The cluster
    client is thrown away and rebuilt after errors so a stale topology heals."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.known: list[str] = [f"{h}:{p}" for h, p in cfg.redis_nodes]
        self._cluster: RedisCluster | None = None
        self._queue = None
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._last_rebuild = 0.0
        self._last_source: str | None = None
        self.generation = 0

    # -- clients
    def _startup_nodes(self):
        return [ClusterNode(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in self.known]

    def make_cluster(self, socket_timeout: float | None = 1.0) -> RedisCluster:
        rc = RedisCluster(
            startup_nodes=self._startup_nodes(),
            password=self.cfg.redis_password,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=1.0,
            max_connections=64,
        )
        _tolerate_dead_default_node(rc)
        return rc

    @property
    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            self._cluster = self.make_cluster()
        return self._cluster

    def queue(self):
        """BullMQ producer bound to the current cluster client."""
        if self._queue is None:
            from bullmq import Queue
            self._queue = Queue(self.cfg.anchor_queue,
                                {"prefix": self.cfg.anchor_prefix, "connection": self.cluster})
            node_local_scripts(getattr(self._queue, "redisConnection", None))
        return self._queue

    def node(self, addr: str) -> aioredis.Redis:
        c = self._node_clients.get(addr)
        if c is None:
            host, port = addr.rsplit(":", 1)
            c = aioredis.Redis(host=host, port=int(port), password=self.cfg.redis_password,
                               decode_responses=True, socket_timeout=HEALTH_STEP_TIMEOUT,
                               socket_connect_timeout=HEALTH_STEP_TIMEOUT,
                               retry=Retry(NoBackoff(), 0), max_connections=8)
            self._node_clients[addr] = c
        return c

    async def _reset_node(self, addr: str):
        c = self._node_clients.pop(addr, None)
        if c is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.aclose(), 1)

    def rebuild(self, reason: str):
        """Drop the cluster client (and the producer bound to it); the next call
        builds fresh ones from the known node list.  At most every 2 s."""
        t = time.monotonic()
        if t - self._last_rebuild < 2.0 or self._cluster is None:
            return
        self._last_rebuild = t
        self.generation += 1
        old_cluster, old_queue = self._cluster, self._queue
        self._cluster, self._queue = None, None
        log.warning("redis: rebuilding cluster client (%s)", reason)

        async def _close():
            with contextlib.suppress(Exception):
                if old_queue is not None:
                    await asyncio.wait_for(old_queue.close(), 2)
                else:
                    await asyncio.wait_for(old_cluster.aclose(), 2)
        asyncio.get_running_loop().create_task(_close())

    async def call(self, fn, timeout: float = CALL_TIMEOUT):
        """Run ``fn(cluster)`` with a timeout; rebuild the client on failures
        that are not plain command errors."""
        client = self.cluster
        try:
            return await asyncio.wait_for(fn(client), timeout)
        except Exception as e:
            if not isinstance(e, ResponseError) or "CLUSTERDOWN" in str(e) or "MOVED" in str(e):
                self.rebuild(f"{type(e).__name__}: {short_error(e)}")
            raise

    async def call_queue(self, fn, timeout: float = CALL_TIMEOUT):
        return await self.call(lambda _c: fn(self.queue()), timeout)

    # -- topology and health
    async def topology(self) -> tuple[str, list[dict]]:
        """CLUSTER NODES from the first node that answers (last good one first)."""
        order = ([self._last_source] if self._last_source else []) + \
            [a for a in self.known if a != self._last_source]
        errors = []
        for addr in order:
            try:
                text = await asyncio.wait_for(self.node(addr).execute_command("CLUSTER", "NODES"),
                                              HEALTH_STEP_TIMEOUT)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{addr}: {short_error(e)}")
                await self._reset_node(addr)
                continue
            nodes = parse_cluster_nodes(text)
            for n in nodes:
                if n["addr"] not in self.known and ":" in n["addr"] and not n["addr"].startswith(":"):
                    self.known.append(n["addr"])
            self._last_source = addr
            return addr, nodes
        raise NoNodeReachable("no redis node reachable: " + "; ".join(errors))

    async def _probe_primary(self, addr: str) -> tuple[str | None, str | None]:
        """(error, cluster_state) for one primary."""
        c = self.node(addr)
        try:
            await asyncio.wait_for(c.ping(), HEALTH_STEP_TIMEOUT)
            info = await asyncio.wait_for(c.execute_command("CLUSTER", "INFO"), HEALTH_STEP_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            await self._reset_node(addr)
            return f"{addr}: {short_error(e)}", None
        state = None
        for line in str(info).splitlines():
            if line.startswith("cluster_state:"):
                state = line.split(":", 1)[1].strip()
        return None, state

    async def check(self) -> str:
        try:
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
                return await self._check()
        except asyncio.TimeoutError:
            return "timeout: redis check did not finish within %.1fs" % HEALTH_CHECK_TIMEOUT
        except NoNodeReachable as e:
            return str(e)
        except Exception as e:  # noqa: BLE001
            return short_error(e)

    async def _check(self) -> str:
        source, nodes = await self.topology()
        primaries = [n for n in nodes
                     if "master" in n["flags"] and n["slots"] and "noaddr" not in n["flags"]]
        problems: list[str] = []
        if not primaries:
            problems.append(f"CLUSTERDOWN no primary with slots in CLUSTER NODES of {source}")
        results = await asyncio.gather(*(self._probe_primary(n["addr"]) for n in primaries))
        failed_state = []
        for n, (err, state) in zip(primaries, results):
            if err:
                problems.append(err)
            elif state and state != "ok":
                failed_state.append(n["addr"])
        if failed_state:
            problems.append("CLUSTERDOWN cluster_state:fail on " + ",".join(failed_state))
        if problems:
            return "; ".join(problems)
        # The topology is fine: make sure the app's own client agrees (and heal it if not).
        try:
            await self.call(lambda c: c.exists("p3:health"), timeout=HEALTH_STEP_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            return f"cluster client: {short_error(e)}"
        return "ok"

    async def reachable_node(self) -> str:
        """Some node that answers PING (for pub/sub; PUBLISH reaches every node)."""
        order = ([self._last_source] if self._last_source else []) + \
            [a for a in self.known if a != self._last_source]
        for addr in order:
            try:
                await asyncio.wait_for(self.node(addr).ping(), HEALTH_STEP_TIMEOUT)
                return addr
            except Exception:  # noqa: BLE001
                await self._reset_node(addr)
        raise NoNodeReachable("no redis node reachable")

    async def close(self):
        with contextlib.suppress(Exception):
            if self._queue is not None:
                await asyncio.wait_for(self._queue.close(), 2)
            elif self._cluster is not None:
                await asyncio.wait_for(self._cluster.aclose(), 2)
        for addr in list(self._node_clients):
            await self._reset_node(addr)


# --------------------------------------------------------------------------- mesh relay

class Mesh:
    CONTROL = "mesh:control"
    RELAY = "mesh:relay"

    def __init__(self, hub: RedisHub, metrics: Metrics):
        self.hub = hub
        self.metrics = metrics
        self.instance = uuid.uuid4().hex[:12]
        self.relay_up = True
        self.peers: dict[web.WebSocketResponse, str] = {}
        self.last_broadcast = 0
        self._ps = None
        self._ps_addr: str | None = None
        self._task: asyncio.Task | None = None

    def _gauges(self):
        n = len(self.peers)
        self.metrics.mesh_peers.set(n)
        self.metrics.ws_connections.set(n)
        self.metrics.relay_up.set(1 if self.relay_up else 0)

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        logged_failure = False
        while True:
            client = ps = None
            try:
                addr = await self.hub.reachable_node()
                host, port = addr.rsplit(":", 1)
                client = aioredis.Redis(host=host, port=int(port),
                                        password=self.hub.cfg.redis_password,
                                        decode_responses=True, socket_connect_timeout=1.0,
                                        socket_timeout=None, retry=Retry(NoBackoff(), 0),
                                        socket_keepalive=True)
                ps = client.pubsub(ignore_subscribe_messages=True)
                await asyncio.wait_for(ps.subscribe(self.CONTROL), 2)
                if self.relay_up:
                    await asyncio.wait_for(ps.psubscribe("mesh:*"), 2)
                self._ps, self._ps_addr = ps, addr
                logged_failure = False
                log.info("mesh: subscribed on %s (%s%s)", addr, self.CONTROL,
                         ", mesh:*" if self.relay_up else "; relay down")
                last_rx = last_ping = time.monotonic()
                while True:
                    # Read raw replies: redis-py 8 answers a subscribed PING with a bare "PONG" that get_message()
                    # mangles and drops, so the keepalive never counted and an idle subscription (relay down, no
                    # traffic) was torn down every 25 s.
                    raw = await ps.parse_response(block=False, timeout=5.0)
                    t = time.monotonic()
                    if raw is not None:
                        last_rx = t          # any reply, the keepalive's PONG included, proves the link
                        if isinstance(raw, (list, tuple)):
                            msg = await ps.handle_message(raw, ignore_subscribe_messages=True)
                            if msg is not None:
                                await self._handle(msg)
                    if t - last_rx > 25:
                        raise TimeoutError("no reply on the subscription connection for 25 s")
                    if t - last_rx > 10 and t - last_ping > 10:
                        await asyncio.wait_for(ps.ping(), 2)
                        last_ping = t
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                if self._ps_addr or not logged_failure:
                    log.warning("mesh: subscription lost (%s): %s", self._ps_addr or "-", short_error(e))
                    logged_failure = True
            finally:
                self._ps, self._ps_addr = None, None
                for closer in (ps, client):
                    if closer is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(closer.aclose(), 1)
            await asyncio.sleep(0.5)

    async def _handle(self, msg: dict):
        mtype, channel, data = msg.get("type"), msg.get("channel"), msg.get("data")
        if mtype == "message" and channel == self.CONTROL:
            try:
                body = json.loads(data)
            except (TypeError, ValueError):
                log.warning("mesh: ignoring non-JSON control message %r", str(data)[:100])
                return
            action = body.get("action") if isinstance(body, dict) else None
            if action == "reconnect":
                await self.reconnect()
            else:
                log.info("mesh: ignoring control action %r", action)
        elif mtype == "pmessage" and channel == self.RELAY and self.relay_up:
            await self._broadcast(data)

    async def _broadcast(self, data: str):
        try:
            env = json.loads(data)
        except (TypeError, ValueError):
            env = {}
        origin = env.get("origin") if isinstance(env, dict) else None
        sender = env.get("peer") if isinstance(env, dict) else None
        sent = 0
        for ws, pid in list(self.peers.items()):
            if ws.closed or (origin == self.instance and pid == sender):
                continue
            try:
                await ws.send_str(data)
                sent += 1
            except Exception:  # noqa: BLE001 - a peer going away is normal
                pass
        self.last_broadcast = now_ms()

    async def publish_from_peer(self, peer_id: str, text: str):
        payload = json.dumps({"origin": self.instance, "peer": peer_id, "ts": now_ms(),
                              "data": text[:4096]})
        try:
            await self.hub.call(lambda c: c.publish(self.RELAY, payload))
        except Exception as e:  # noqa: BLE001
            log.debug("mesh: publish failed: %s", short_error(e))

    async def down(self) -> int:
        """Lab fault: drop the data subscription, close every peer, refuse new ones."""
        self.relay_up = False
        ps = self._ps
        if ps is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ps.punsubscribe("mesh:*"), 2)
        closed = 0
        for ws in list(self.peers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1012, message=b"mesh relay down"), 1)
            closed += 1
        self._gauges()
        log.warning("mesh: relay DOWN (closed %d peers, data subscription dropped)", closed)
        return closed

    async def reconnect(self):
        was_up = self.relay_up
        self.relay_up = True
        ps = self._ps
        if ps is not None:
            try:
                await asyncio.wait_for(ps.psubscribe("mesh:*"), 2)
            except Exception as e:  # noqa: BLE001 - the run loop re-subscribes on reconnect
                log.warning("mesh: re-subscribe failed: %s", short_error(e))
        self._gauges()
        log.info("mesh: reconnect requested; relay %s", "already up" if was_up else "UP again")

    def add(self, ws: web.WebSocketResponse, peer_id: str):
        self.peers[ws] = peer_id
        self._gauges()

    def remove(self, ws: web.WebSocketResponse):
        self.peers.pop(ws, None)
        self._gauges()

    async def close(self):
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for ws in list(self.peers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"server shutdown"), 1)


# --------------------------------------------------------------------------- chain

class Chain:
    """Sends the anchor transactions.  Nonce lookup + signing + sending are
    serialised by one lock (one nonce sequence); receipts are awaited outside it."""

    def __init__(self, cfg: Config):
        from eth_account import Account
        from web3 import AsyncWeb3
        from web3.providers import AsyncHTTPProvider
        self.cfg = cfg
        self.w3 = AsyncWeb3(AsyncHTTPProvider(cfg.rpc_url, request_kwargs={"timeout": 5}))
        self.account = Account.from_key(cfg.private_key) if cfg.private_key else None
        self.sink = AsyncWeb3.to_checksum_address(cfg.anchor_sink)
        self.lock = asyncio.Lock()
        self.chain_id: int | None = None

    async def anchor(self, digest: str, before_send=None) -> tuple[str, int]:
        """Send one transaction carrying `digest` and wait for its receipt. `before_send(tx_hash)` is awaited after
        signing and before sending (the caller records the hash durably first: a retry then finds it on chain
        instead of sending again)."""
        if self.account is None:
            raise RuntimeError("PRIVATE_KEY is not set")
        try:
            data = bytes.fromhex(digest[2:] if digest.startswith("0x") else digest)
        except ValueError:
            data = digest.encode()
        async with self.lock:
            async with asyncio.timeout(10):
                if self.chain_id is None:
                    self.chain_id = await self.w3.eth.chain_id
                sender = self.account.address
                nonce = await self.w3.eth.get_transaction_count(sender, "pending")
                block = await self.w3.eth.get_block("latest")
                base_fee = block.get("baseFeePerGas") or 0
                priority = 10**9
                tx = {"chainId": self.chain_id, "nonce": nonce, "to": self.sink, "value": 0,
                      "data": data, "type": 2, "maxPriorityFeePerGas": priority,
                      "maxFeePerGas": 2 * base_fee + priority}
                tx["gas"] = await self.w3.eth.estimate_gas(
                    {"from": sender, "to": self.sink, "value": 0, "data": data})
                signed = self.account.sign_transaction(tx)
                if before_send is not None:
                    await before_send(self.w3.to_hex(signed.hash))
                tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return await self.wait(self.w3.to_hex(tx_hash))

    async def wait(self, hex_hash: str) -> tuple[str, int]:
        receipt = await self.w3.eth.wait_for_transaction_receipt(hex_hash, timeout=10, poll_latency=0.2)
        if receipt.get("status") != 1:
            raise RuntimeError(f"transaction {hex_hash} reverted")
        return hex_hash, int(receipt["blockNumber"])

    async def state(self, hex_hash: str) -> str:
        """'mined' (successfully), 'reverted', 'pending' (in the pool) or 'unknown' (never sent, or dropped)."""
        from web3.exceptions import TransactionNotFound
        async with asyncio.timeout(5):
            try:
                receipt = await self.w3.eth.get_transaction_receipt(hex_hash)
            except TransactionNotFound:
                receipt = None
            if receipt is not None:
                return "mined" if receipt.get("status") == 1 else "reverted"
            try:
                await self.w3.eth.get_transaction(hex_hash)
            except TransactionNotFound:
                return "unknown"
            return "pending"

    async def close(self):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.w3.provider.disconnect(), 2)


# --------------------------------------------------------------------------- anchor worker

class QueueUnavailable(Exception):
    """The outbox row was written but the BullMQ job could not be added (the row stays pending)."""

    def __init__(self, outbox_id: str, cause: BaseException):
        super().__init__(short_error(cause))
        self.outbox_id = outbox_id


class Anchor:
    def __init__(self, cfg: Config, db: Database, hub: RedisHub, metrics: Metrics):
        self.cfg, self.db, self.hub, self.metrics = cfg, db, hub, metrics
        self.chain = Chain(cfg)
        self.worker = None
        self.worker_client: RedisCluster | None = None
        self.run_task: asyncio.Task | None = None
        self.paused = False
        self.stopped = False     # /_lab/anchor/stop: no worker at all (P3 as coded with the lockfile's BullMQ)
        self.in_flight = 0
        self.last_job_start = time.monotonic()
        self._supervisor: asyncio.Task | None = None
        self._last_error_log: dict[str, float] = {}
        self.queue_owner: str | None = None   # the master serving the queue's slot when the worker started
        self._no_conn_since: float | None = None

    def key(self, state: str) -> str:
        return f"{self.cfg.anchor_prefix}:{self.cfg.anchor_queue}:{state}"

    # -- producer
    async def enqueue(self, app_id: str, event: str, extra) -> tuple[str, str]:
        ts = now_ms()
        payload = {"appId": app_id, "event": event, "ts": ts}
        if extra is not None:
            payload["data"] = extra
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        async with self.db.connection() as conn:
            outbox_id = await conn.fetchval(
                "INSERT INTO anchor_outbox(type, app_id, digest, payload) "
                "VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
                event[:50], app_id[:100], digest, canonical)
        oid = str(outbox_id)
        try:
            job = await self.hub.call_queue(lambda q: q.add(
                "anchor", {"outboxId": oid, "digest": digest},
                {"jobId": oid, "attempts": 1, "removeOnComplete": False, "removeOnFail": False}))
        except Exception as e:
            raise QueueUnavailable(oid, e) from e
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE anchor_outbox SET status='enqueued', updated_at=now() "
                "WHERE id=$1 AND status='pending'", outbox_id)
        return oid, str(job.id)

    # -- processor
    async def process(self, job, token):
        self.last_job_start = time.monotonic()
        self.in_flight += 1
        data = job.data if isinstance(job.data, dict) else {}
        outbox_id = str(data.get("outboxId") or job.id)
        try:
            result = await self._process(outbox_id)
        except Exception as e:
            self.metrics.anchor_jobs.labels("failed").inc()
            await self._mark_failed(outbox_id, e)
            log.warning("anchor: job %s failed: %s", job.id, short_error(e))
            raise
        finally:
            self.in_flight -= 1
        self.metrics.anchor_jobs.labels("completed").inc()
        log.info("anchor: job %s completed tx=%s block=%s%s", job.id, result["txHash"],
                 result["blockNumber"], " (already anchored)" if result.get("duplicate") else "")
        return result

    async def _process(self, outbox_id: str) -> dict:
        oid = uuid.UUID(outbox_id)
        async with self.db.connection() as conn:
            row = await conn.fetchrow("SELECT id, digest, status FROM anchor_outbox WHERE id=$1", oid)
            if row is None:
                raise RuntimeError(f"outbox row {outbox_id} not found")
            receipt = await conn.fetchrow(
                "SELECT tx_hash, block_number, status FROM anchor_receipts WHERE idempotency_key=$1", outbox_id)
            if receipt is not None and receipt["status"] == "confirmed":
                await conn.execute("UPDATE anchor_outbox SET status='completed', updated_at=now() "
                                   "WHERE id=$1", oid)
                return {"outboxId": outbox_id, "txHash": receipt["tx_hash"],
                        "blockNumber": receipt["block_number"], "duplicate": True}
            await conn.execute("UPDATE anchor_outbox SET status='processing', heartbeat_at=now(), "
                               "updated_at=now() WHERE id=$1", oid)
        # no pool slot is held while the chain works
        if receipt is not None and receipt["tx_hash"]:
            # An earlier attempt recorded its transaction before sending it and did not live to confirm it (a
            # worker closed mid-job, whose job BullMQ gave back as stalled): find it on chain, never send twice.
            sent = await self.chain.state(receipt["tx_hash"])
            if sent in ("mined", "pending"):
                tx_hash, block_number = await self.chain.wait(receipt["tx_hash"])
                await self._confirm(outbox_id, oid, tx_hash, block_number)
                return {"outboxId": outbox_id, "txHash": tx_hash, "blockNumber": block_number, "duplicate": True}
            log.warning("anchor: outbox %s: its earlier transaction %s is %s; sending it again",
                        outbox_id, receipt["tx_hash"], sent)

        async def record(tx_hash: str):
            async with self.db.connection(timeout=2.0) as conn:
                await conn.execute(
                    "INSERT INTO anchor_receipts(idempotency_key, outbox_id, tx_hash, status) "
                    "VALUES ($1, $2, $3, 'submitted') ON CONFLICT (idempotency_key) DO UPDATE "
                    "SET tx_hash = EXCLUDED.tx_hash WHERE anchor_receipts.status <> 'confirmed'",
                    outbox_id, oid, tx_hash)

        tx_hash, block_number = await self.chain.anchor(row["digest"], before_send=record)
        await self._confirm(outbox_id, oid, tx_hash, block_number)
        return {"outboxId": outbox_id, "txHash": tx_hash, "blockNumber": block_number}

    async def _confirm(self, outbox_id: str, oid: uuid.UUID, tx_hash: str, block_number: int):
        async with self.db.connection(timeout=2.0) as conn:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE anchor_receipts SET tx_hash=$2, block_number=$3, status='confirmed', "
                    "confirmed_at=now() WHERE idempotency_key=$1", outbox_id, tx_hash, block_number)
                await conn.execute("UPDATE anchor_outbox SET status='completed', updated_at=now() "
                                   "WHERE id=$1", oid)

    async def _mark_failed(self, outbox_id: str, exc: BaseException):
        try:
            oid = uuid.UUID(outbox_id)
            async with self.db.connection(timeout=2.0) as conn:
                await conn.execute(
                    "UPDATE anchor_outbox SET status='failed', last_error=$2, "
                    "retry_count=retry_count+1, updated_at=now() WHERE id=$1",
                    oid, (f"{type(exc).__name__}: {exc}")[:2000])
        except Exception as e:  # noqa: BLE001
            log.warning("anchor: could not mark outbox %s failed: %s", outbox_id, short_error(e))

    # -- worker lifecycle
    def start(self):
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _on_error(self, err, *args):
        text = short_error(err) if isinstance(err, BaseException) else str(err)
        t = time.monotonic()
        if t - self._last_error_log.get(text, 0) > 30:
            self._last_error_log[text] = t
            log.warning("anchor: worker error: %s", text)

    async def _queue_owner(self) -> str | None:
        """The master serving the queue's slot now (CLUSTER NODES of the first node that answers)."""
        _src, nodes = await self.hub.topology()
        return slot_owner(nodes, key_slot(self.key("wait").encode()))

    async def _worker_connected(self, owner: str) -> bool:
        """The worker has a connection on the queue's master (BullMQ names its connections after the queue)."""
        clients = await asyncio.wait_for(self.hub.node(owner).client_list(), HEALTH_STEP_TIMEOUT)
        prefix = f"{self.cfg.anchor_prefix}:{self.cfg.anchor_queue}"
        return any((c.get("name") or "").startswith(prefix) for c in clients)

    async def _follow_failover(self, t: float, started_at: float) -> None:
        """What an ioredis Cluster client does on a failover, for the worker: its connections must be on the master
        that serves the queue's slot NOW. After a failover (planned or not) redis-py sometimes re-issues the blocking
        command on the new master by itself, and sometimes loses the worker's connections for good (measured: none
        anywhere 30 s after a CLUSTER FAILOVER; the worker stayed off the queue until jobs had waited 20 s, and with
        nothing waiting, forever). So: when the worker has had no connection on the queue's master for 4 s (6 s
        after a start) and runs no job, replace it - the new one reads the topology and connects there."""
        owner = await self._queue_owner()
        if owner is None:
            return
        if owner != self.queue_owner:
            log.warning("anchor: the queue's slot is served by %s now (was %s): a failover", owner, self.queue_owner)
            self.queue_owner, self._no_conn_since = owner, None
        if t - started_at < 6 or self.in_flight > 0 or await self._worker_connected(owner):
            self._no_conn_since = None
            return
        if self._no_conn_since is None:
            self._no_conn_since = t
        elif t - self._no_conn_since >= 4:
            log.warning("anchor: the worker has had no connection on the queue's master %s for %.0f s; "
                        "reconnecting it", owner, t - self._no_conn_since)
            await self._stop_worker(force=False)

    async def _start_worker(self, quiet: bool = False):
        from bullmq import Worker
        self.queue_owner, self._no_conn_since = None, None
        with contextlib.suppress(Exception):
            self.queue_owner = await asyncio.wait_for(self._queue_owner(), 2 * HEALTH_STEP_TIMEOUT)
        self.worker_client = self.hub.make_cluster(socket_timeout=15.0)   # BZPOPMIN blocks up to 5 s
        self.worker = Worker(self.cfg.anchor_queue, self.process, {
            "prefix": self.cfg.anchor_prefix,
            "connection": self.worker_client,
            "concurrency": self.cfg.anchor_concurrency,
            "autorun": False,
            "runRetryDelay": 1000,
            "drainDelay": 5,
        })
        self.worker.on("error", self._on_error)
        name_every_connection(self.worker_client, self.worker.clientName)
        node_local_scripts(getattr(self.worker, "redisConnection", None),
                           getattr(self.worker, "blockingRedisConnection", None))
        # bullmq names its connection on every cluster node before taking jobs and
        # gives up when one node is down; name what can be named and carry on.
        worker, name_them = self.worker, self.worker._ensure_client_names

        async def ensure_client_names():
            try:
                await asyncio.wait_for(name_them(), 3)
            except Exception as e:  # noqa: BLE001
                log.debug("anchor: could not name the worker connections: %s", short_error(e))
                worker._client_name_set = True
        worker._ensure_client_names = ensure_client_names
        self.run_task = asyncio.get_running_loop().create_task(self.worker.run())
        if self.paused:
            await self.worker.pause(True)
        self.last_job_start = time.monotonic()
        (log.debug if quiet else log.info)(
                 "anchor: worker started on queue %s (prefix %s, concurrency %d)%s",
                 self.cfg.anchor_queue, self.cfg.anchor_prefix, self.cfg.anchor_concurrency,
                 " paused" if self.paused else "")

    async def _stop_worker(self, force: bool = True, grace: float = 0.0):
        """Close the worker. With `grace`, first let its active jobs finish (it takes no new one), at most `grace`
        seconds; a job still running then is cut off (BullMQ gives it back as stalled; its receipt row, written
        before the transaction is sent, keeps the retry from sending a second one)."""
        w, client, task = self.worker, self.worker_client, self.run_task
        self.worker = self.worker_client = self.run_task = None
        if w is not None and not force and grace > 0 and self.in_flight > 0:
            active = set(w.processing)
            log.info("anchor: closing the worker: waiting up to %.0f s for %d active job(s)", grace, self.in_flight)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(w.pause(True), 1)   # no new job; the active ones go on
            _done, pending = await asyncio.wait(active, timeout=grace)
            if pending:
                log.warning("anchor: %d job(s) still active %.0f s after the stop: closing the worker anyway "
                            "(BullMQ gives them back as stalled)", len(pending), grace)
            force = bool(pending)
        if w is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(w.close(force=force), 3)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 1)
        if client is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(client.aclose(), 1)

    async def _supervise(self):
        """Keep one worker running; replace it when its loop died (e.g. Redis was
        unreachable when it started: retried with a growing delay, up to 10 s) or
        when jobs wait while it has not taken any for 20 s (e.g. a stale topology)."""
        failures = 0
        next_start = 0.0
        started_at = 0.0
        while True:
            try:
                t = time.monotonic()
                if self.worker is None:
                    if not self.stopped and t >= next_start:
                        await self._start_worker(quiet=failures > 0)
                        started_at = time.monotonic()
                elif self.run_task is not None and self.run_task.done():
                    exc = None if self.run_task.cancelled() else self.run_task.exception()
                    failures += 1
                    self._on_error(f"worker loop ended ({short_error(exc) if exc else 'no error'}); "
                                   "restarting it")
                    await self._stop_worker()
                    next_start = time.monotonic() + min(2.0 * failures, 10.0)
                else:
                    if failures and t - started_at > 10:
                        log.info("anchor: worker running again after %d failed start(s)", failures)
                        failures = 0
                    if not self.paused:
                        await self._follow_failover(t, started_at)
                    if (self.worker is not None and not self.paused and self.in_flight == 0
                            and t - self.last_job_start > 20):
                        waiting = await self.hub.call(lambda c: c.llen(self.key("wait")), timeout=1.0)
                        if waiting:
                            log.warning("anchor: %d jobs waiting but the worker took none for 20 s; "
                                        "restarting it", waiting)
                            await self._stop_worker()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.debug("anchor: supervisor: %s", short_error(e))
            await asyncio.sleep(2)

    async def pause(self):
        self.paused = True
        if self.worker is not None:
            await self.worker.pause(True)    # do not wait for active jobs
        log.warning("anchor: worker PAUSED")

    async def stop(self):
        """No worker at all: its connections close (so CLIENT LIST names none) and the supervisor starts none."""
        self.stopped = True
        await self._stop_worker(force=True)
        log.warning("anchor: worker STOPPED")

    async def resume(self):
        if self.stopped:
            self.stopped = False
            log.info("anchor: worker may start again")
        was_paused, self.paused = self.paused, False
        self.last_job_start = time.monotonic()
        if self.worker is not None:
            self.worker.resume()
        if was_paused:
            log.info("anchor: worker resumed")

    async def update_depth(self):
        async def read(c):
            pipe = c.pipeline(transaction=False)
            pipe.llen(self.key("wait"))
            pipe.llen(self.key("paused"))
            pipe.zcard(self.key("prioritized"))
            pipe.llen(self.key("active"))
            pipe.zcard(self.key("delayed"))
            pipe.zcard(self.key("failed"))
            pipe.zcard(self.key("completed"))
            return await pipe.execute()
        try:
            wait, paused, prio, active, delayed, failed, completed = await self.hub.call(read, timeout=1.0)
        except Exception:  # noqa: BLE001 - keep the last values when Redis is away
            return
        g = self.metrics.queue_depth
        g.labels("wait").set(wait + paused + prio)
        g.labels("active").set(active)
        g.labels("delayed").set(delayed)
        g.labels("failed").set(failed)
        g.labels("completed").set(completed)

    async def close(self):
        """On SIGTERM: the worker finishes its active jobs (bounded by ANCHOR_CLOSE_TIMEOUT) before it closes."""
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        await self._stop_worker(force=False, grace=self.cfg.anchor_close_timeout)
        await self.chain.close()


# --------------------------------------------------------------------------- HTTP

def json_error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def parse_time_ms(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) * (1000 if value < 1e11 else 1)   # seconds or ms
    if isinstance(value, str):
        try:
            return float(value) * (1000 if float(value) < 1e11 else 1)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp() * 1000
    return None


class P3App:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.started_monotonic = time.monotonic()
        self.metrics = Metrics()
        self.db = Database(cfg, self.metrics)
        self.hub = RedisHub(cfg)
        self.mesh = Mesh(self.hub, self.metrics)
        self.anchor = Anchor(cfg, self.db, self.hub, self.metrics)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self.count_requests], client_max_size=256 * 1024)
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/api/system/health", self.system_health)   # upstream's only database-checking endpoint
        r.add_get("/pulse/status", self.pulse_status)
        r.add_get("/api/pulse/status", self.pulse_status)     # upstream's real path
        r.add_get("/metrics", self.metrics_view)
        r.add_post("/api/protocol/session/handshake", self.handshake)
        r.add_get("/api/protocol/session/{id}", self.get_session)
        r.add_post("/api/anchor", self.post_anchor)
        r.add_get("/mesh/ws", self.mesh_ws)
        r.add_post("/_lab/mesh/down", self.lab_mesh_down)
        r.add_post("/_lab/anchor/pause", self.lab_anchor_pause)
        r.add_post("/_lab/anchor/resume", self.lab_anchor_resume)
        r.add_post("/_lab/anchor/stop", self.lab_anchor_stop)
        r.add_post("/_lab/anchor/retry-failed", self.lab_anchor_retry_failed)
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.on_shutdown)
        app.on_cleanup.append(self.on_cleanup)
        return app

    async def on_startup(self, app):
        self.mesh.start()
        self.anchor.start()
        log.info("listening on %s:%d (pid %d); redis %s; queue %s:%s",
                 self.cfg.host, self.cfg.port, os.getpid(), ",".join(self.hub.known),
                 self.cfg.anchor_prefix, self.cfg.anchor_queue)

    async def on_shutdown(self, app):
        log.info("shutting down")
        await self.mesh.close()

    async def on_cleanup(self, app):
        await self.anchor.close()
        await self.hub.close()
        await self.db.close()
        log.info("stopped")

    @web.middleware
    async def count_requests(self, request: web.Request, handler):
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception:  # noqa: BLE001
            log.exception("unhandled error on %s %s", request.method, request.path)
            status = 500
            return json_error(500, "internal error")
        finally:
            resource = request.match_info.route.resource
            endpoint = resource.canonical if resource is not None else "unmatched"
            self.metrics.requests.labels(endpoint, request.method, str(status)).inc()
            if status == 401:
                self.metrics.auth_failures.inc()

    # -- /health
    async def health(self, request):
        db_state, redis_state = await asyncio.gather(self.db.check(), self.hub.check())
        checks = {"database": db_state, "redis": redis_state}
        failing = [k for k, v in checks.items() if v != "ok"]
        if failing:
            return web.json_response({"status": "unhealthy", "failing": failing, "checks": checks},
                                     status=503)
        return web.json_response({"status": "healthy", "checks": checks})

    async def system_health(self, request):
        """P3's GET /api/system/health (server/routes/system.ts) as coded: a database SELECT 1 only, 200 with
        status "degraded" and database.status "unhealthy" when it fails (never a 503), Redis not checked, and the
        receipt object P3 adds to its answers."""
        db_state = await self.db.check()
        ok = db_state == "ok"
        return web.json_response({
            "status": "ok" if ok else "degraded",
            "database": {"status": "healthy" if ok else "unhealthy"},
            "server": {"uptimeSeconds": round(time.monotonic() - self.started_monotonic)},
            # P3 adds createReceipt('success') to the answer (server/routes/system.ts)
            "receipt": {"status": "success", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        })

    async def pulse_status(self, request):
        return web.json_response({"ok": True, "status": {
            "active": self.mesh.relay_up,
            "relay": "up" if self.mesh.relay_up else "down",
            "subscribers": len(self.mesh.peers),
            "lastBroadcast": self.mesh.last_broadcast,
        }})

    async def metrics_view(self, request):
        await self.anchor.update_depth()
        self.db.update_gauges()
        self.mesh._gauges()
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- sessions
    async def handshake(self, request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001
            return json_error(400, "Invalid handshake request", details="body must be JSON")
        if not isinstance(body, dict):
            return json_error(400, "Invalid handshake request", details="body must be an object")
        device = body.get("deviceId")
        if not isinstance(device, str) or not device.strip() or len(device) > 256:
            return json_error(400, "Invalid handshake request",
                              details="deviceId must be a non-empty string (<= 256 chars)")
        caps = body.get("capabilities", {})
        if not isinstance(caps, dict):
            return json_error(400, "Invalid handshake request", details="capabilities must be an object")
        sid = str(uuid.uuid4())
        created = now_ms()
        record = {"sessionId": sid, "deviceId": device, "capabilities": caps,
                  "createdAt": created, "expiresAt": created + SESSION_TTL * 1000}
        try:
            await self.hub.call(lambda c: c.set(f"session:{sid}", json.dumps(record), ex=SESSION_TTL))
        except Exception as e:  # noqa: BLE001
            log.warning("session: handshake could not store session: %s", short_error(e))
            return json_error(503, "Session store unavailable", details=short_error(e))
        return web.json_response({"sessionId": sid, "ttlSeconds": SESSION_TTL, "serverTime": now_ms()},
                                 status=201)

    async def get_session(self, request):
        sid = request.match_info["id"]
        try:
            # raw bytes: a value that is not UTF-8 is a corrupt session, not a Redis failure
            raw = await self.hub.call(
                lambda c: c.execute_command("GET", f"session:{sid}", NEVER_DECODE=True))
        except Exception as e:  # noqa: BLE001
            return json_error(503, "Session store unavailable", details=short_error(e))
        record = None
        if raw is not None:
            try:
                record = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            except ValueError:          # includes UnicodeDecodeError
                record = None
        if not isinstance(record, dict) or any(f not in record for f in REQUIRED_SESSION_FIELDS):
            return json_error(401, "Session expired")
        expires = parse_time_ms(record.get("expiresAt"))
        if expires is None or expires <= now_ms():
            return json_error(401, "Session expired")
        return web.json_response(record)

    # -- anchor
    async def post_anchor(self, request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001
            return json_error(400, "Invalid anchor request", details="body must be JSON")
        if not isinstance(body, dict):
            return json_error(400, "Invalid anchor request", details="body must be an object")
        app_id, event = body.get("appId"), body.get("event")
        if not (isinstance(app_id, str) and app_id.strip() and isinstance(event, str) and event.strip()):
            return json_error(400, "Invalid anchor request",
                              details="appId and event must be non-empty strings")
        try:
            oid, job_id = await self.anchor.enqueue(app_id, event, body.get("data"))
        except QueueUnavailable as e:
            log.warning("anchor: enqueue failed, outbox %s stays pending: %s", e.outbox_id, e)
            return json_error(503, "Anchor queue unavailable", details=str(e), id=e.outbox_id)
        except (asyncpg.PostgresError, OSError, asyncio.TimeoutError,
                asyncpg.exceptions.InterfaceError) as e:
            return json_error(503, "Database unavailable", details=short_error(e))
        return web.json_response({"id": oid, "jobId": job_id}, status=202)

    # -- mesh
    async def mesh_ws(self, request):
        if not self.mesh.relay_up:
            return json_error(503, "mesh relay down")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=64 * 1024)
        await ws.prepare(request)
        if not self.mesh.relay_up:          # the relay went down during the upgrade
            await ws.close(code=1012, message=b"mesh relay down")
            return ws
        peer_id = uuid.uuid4().hex[:8]
        self.mesh.add(ws, peer_id)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and self.mesh.relay_up:
                    await self.mesh.publish_from_peer(peer_id, msg.data)
        finally:
            self.mesh.remove(ws)
        return ws

    # -- lab hooks
    async def lab_mesh_down(self, request):
        closed = await self.mesh.down()
        return web.json_response({"ok": True, "relay": "down", "closedPeers": closed})

    async def lab_anchor_pause(self, request):
        await self.anchor.pause()
        return web.json_response({"ok": True, "paused": True})

    async def lab_anchor_stop(self, request):
        await self.anchor.stop()
        return web.json_response({"ok": True, "stopped": True})

    async def lab_anchor_resume(self, request):
        await self.anchor.resume()
        return web.json_response({"ok": True, "paused": False})

    async def lab_anchor_retry_failed(self, request):
        """For `p3lab heal`: every failed anchor job back to wait, BullMQ's own way (Queue.retryJobs), so jobs a
        fault failed complete (and their outbox rows with them) instead of waiting for a recovery."""
        failed = await self.anchor.hub.call(lambda c: c.zcard(self.anchor.key("failed")))
        if failed:
            await self.anchor.hub.call_queue(lambda q: q.retryJobs({"state": "failed"}), timeout=15)
        return web.json_response({"ok": True, "retried": failed})


class _DropNoise(logging.Filter):
    """redis-py reports GC'd cluster nodes of replaced topologies at ERROR level
    ("Unclosed ClusterNode object"); after a failover that is expected, not news."""

    def filter(self, record):
        return not str(record.msg).startswith("Unclosed ClusterNode")


def setup_logging():
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_DropNoise())
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                            "%Y-%m-%dT%H:%M:%S")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())


CRASH_MARKER = "app-crash-after"  # in $P3LAB_OWNER (the lab dir): fault app-crashloop


def crash_after(env=os.environ):
    """Seconds after which this process exits (fault app-crashloop: an app that dies again right after its
    restart), from $P3LAB_OWNER/app-crash-after; None when there is no such fault."""
    owner = env.get("P3LAB_OWNER")
    if not owner:
        return None
    try:
        with open(os.path.join(owner, CRASH_MARKER)) as fh:
            return float(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def main():
    setup_logging()
    crash = crash_after()
    cfg = Config()
    p3 = P3App(cfg)
    app = p3.build()
    if crash:
        async def crash_later(_app):
            # counted from the last startup hook (the app listens right after), so it serves for about `crash` s
            log.warning("fault app-crashloop: this process exits in %.1f s", crash)
            asyncio.get_running_loop().call_later(crash, os._exit, 3)

        app.on_startup.append(crash_later)
    web.run_app(app, host=cfg.host, port=cfg.port, access_log=None, print=None,
                shutdown_timeout=3)


if __name__ == "__main__":
    main()
