"""`p3lab status` for app=upstream: P3 Protocol's own server, read straight from its services (docs/lab.md)."""
import base64
import time

from . import supervisor, upstream
from .common import ONE_ETH, http, listener_pids, live_pid, tcp_open

BACKLOG_PROBLEM = 50  # waiting anchor jobs from which status calls the queue backlogged
# a job that waits this long while a worker is connected is not being taken: P3's worker is stuck (docs/lab.md)
STUCK_WAIT_S = 15
QUEUE_STATES = ("wait", "active", "failed", "completed", "delayed")


def worker_client_name(queue=upstream.QUEUE, prefix=upstream.BULL_PREFIX):
    """The CLIENT SETNAME of a BullMQ worker's blocking connection: `<prefix>:<base64(queue)>` (bullmq
    QueueBase.clientName; a named worker appends `:w:<name>`). Queue.getWorkers() finds workers the same way."""
    return "%s:%s" % (prefix, base64.b64encode(queue.encode()).decode())


def _is_worker(name, want):
    return name == want or name.startswith(want + ":w:")


def anchor_queue(lab):
    """BullMQ state of P3's anchor-batch queue on P3's Redis, and whether a worker is connected (CLIENT LIST)."""
    keys = {s: "%s:%s:%s" % (upstream.BULL_PREFIX, upstream.QUEUE, s) for s in QUEUE_STATES}
    out = {"queue": upstream.QUEUE, "bullmq": lab.bullmq, "worker": None, "workers": None, "waiting": None,
           "active": None, "failed": None, "completed": None, "delayed": None, "oldest_wait_s": None, "stuck": None}
    try:
        from .status import queue_counts

        c = upstream.redis_client(lab, timeout=1)
        out.update(queue_counts(c, "%s:%s" % (upstream.BULL_PREFIX, upstream.QUEUE)))
        want = worker_client_name()
        n = len([cl for cl in c.client_list() if _is_worker(cl.get("name") or "", want)])
        out["workers"], out["worker"] = n, n > 0
        oldest = c.lindex(keys["wait"], -1)  # BullMQ LPUSHes new jobs: the tail waited longest
        if oldest:
            ts = c.hget("%s:%s:%s" % (upstream.BULL_PREFIX, upstream.QUEUE, oldest), "timestamp")
            if ts:
                out["oldest_wait_s"] = round(max(0.0, time.time() - int(ts) / 1000.0), 1)
        out["stuck"] = bool(out["worker"] and (out["oldest_wait_s"] or 0) > STUCK_WAIT_S)
    except Exception:  # noqa: BLE001 - P3's Redis down: nulls
        pass
    return out


def _redis(lab):
    from .status import _redis as cluster_part

    part = cluster_part(lab)  # the lab's cluster still runs (P3 does not use it; the collection's probes may)
    up = upstream.redis_up(lab)
    p3r = {"port": lab.p3redis_port, "up": up, "used_memory": None, "connected_clients": None, "keys": None}
    if up:
        try:
            c = upstream.redis_client(lab, timeout=1)
            info = c.info()
            p3r.update(used_memory=info.get("used_memory"), connected_clients=info.get("connected_clients"),
                       keys=c.dbsize())
        except Exception:  # noqa: BLE001
            pass
    part["services"]["p3redis"] = {"port": lab.p3redis_port, "pid": live_pid(upstream.redis_pidfile(lab)), "up": up}
    part["p3redis"] = p3r
    part["anchor"] = anchor_queue(lab)
    part.pop("sessions", None)  # P3 keeps sessions in process memory: nothing in Redis to count
    return part


def _pg(lab):
    from . import pg
    from .status import _pg as pg_part

    part = pg_part(lab)
    outbox = None
    p3 = None
    if part["services"]["postgres"]["up"]:
        try:
            conn = pg.connect_admin(lab, timeout=2)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = 2000")
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = "
                            "'client backend' AND application_name <> %s", (upstream.DB, "p3lab"))
                p3 = cur.fetchone()[0]
            conn.close()
            conn = upstream.connect(lab, timeout=2)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = 2000")
                cur.execute("SELECT status, count(*) FROM anchor_outbox GROUP BY status")
                outbox = {k: v for k, v in cur.fetchall()}
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    part["db"]["database"] = upstream.DB
    part["db"]["p3_connections"] = p3  # backends on P3's database (its two postgres.js pools, and any leak)
    part["outbox"] = outbox
    return part


def _app(lab):
    code, body = upstream.health(lab, timeout=3)
    h_code, _ = http("GET", lab.app_url + "/health", timeout=2)
    db = (body.get("database") or {}) if isinstance(body, dict) else {}
    app = {"healthy": code == 200 and upstream.db_ok(body), "status_code": code,
           "health": body if isinstance(body, dict) else None, "error": None if code else body,
           "database": db.get("status"), "health_200": h_code == 200, "bullmq": lab.bullmq}
    return {"app": app}


def _sup(lab):
    sup_up = supervisor.running(lab)
    services = {"supervisord": {"port": None, "pid": live_pid(lab.sup_pidfile), "up": sup_up}}
    app_pid = supervisor.pid_of(lab, upstream.PROGRAM) if sup_up else None
    state = (supervisor.info(lab, upstream.PROGRAM) or {}).get("statename") if sup_up else None
    app_up = tcp_open(lab.app_port, 0.5)
    if app_up and not app_pid:
        app_pid = listener_pids([lab.app_port]).get(lab.app_port)
    services["app"] = {"port": lab.app_port, "pid": app_pid, "up": app_up, "program": upstream.PROGRAM,
                       "state": state}
    return {"services": services}


def collect(lab):
    from .status import _anvil, gather

    order = ["redis%d" % i for i in range(1, 7)] + ["p3redis", "postgres", "anvil", "app", "supervisord"]
    return gather(lab, {"app": "upstream", "bullmq": lab.bullmq, "src": upstream.src_dir(lab)},
                  (_redis, _pg, _anvil, _app, _sup), order, problems)


def problems(lab, st):
    """Why P3 is not healthy (empty when it is). The lockfile variant is never healthy: it has no anchor worker."""
    from .status import base_problems

    p = base_problems(st, "/api/system/health", "redis cluster")
    if st["db"]["leaked"]:
        p.append("db: %d leaked connections" % st["db"]["leaked"])
    a = st["anchor"]
    if a["worker"] is not True:
        p.append("anchor: no BullMQ worker on %s (%s)" % (
            upstream.QUEUE, "the lockfile's bullmq %s rejects ':' in queue names" % upstream.BULLMQ_LOCKFILE
            if lab.bullmq == "lockfile" else "worker=%s" % a["worker"]))
    if a["stuck"]:
        p.append("anchor: a job has waited %s s with a worker connected (P3's worker takes no jobs)" % a["oldest_wait_s"])
    if a["waiting"] is None or a["waiting"] >= BACKLOG_PROBLEM:
        p.append("anchor: waiting=%s" % a["waiting"])
    if a["failed"]:
        p.append("anchor: failed=%s" % a["failed"])
    bal = st["wallet"]["balance_wei"]
    if bal is None or bal < ONE_ETH // 10:
        p.append("wallet: balance_wei=%s" % bal)
    return p


def _fmt(v):
    from .status import _fmt as f

    return f(v)


def human(st):
    lines = ["%-12s %6s %8s  %s" % ("service", "port", "pid", "up")]
    for name, s in st["services"].items():
        lines.append("%-12s %6s %8s  %s" % (name, _fmt(s["port"]), _fmt(s["pid"]), _fmt(s["up"])))
    r, d, a, w, app = st["redis"], st["db"], st["anchor"], st["wallet"], st["app"]
    bal = w["balance_wei"]
    lines += [
        "",
        "app           P3's own server (%s, BullMQ %s)" % (st["lab"]["src"], st["lab"]["bullmq"]),
        "app healthy   %s (/api/system/health %s, database %s; /health 200: %s)" % (
            _fmt(app["healthy"]), _fmt(app["status_code"]), _fmt(app["database"]), _fmt(app["health_200"])),
        "db            %s/%s connections, %s on %s%s" % (_fmt(d["connections"]), _fmt(d["max_connections"]),
                                                       _fmt(d.get("p3_connections")), d.get("database"),
                                                       (" (%d leaked)" % d["leaked"]) if d["leaked"] else ""),
        "p3 redis      up=%s clients=%s keys=%s" % (_fmt(st["p3redis"]["up"]), _fmt(st["p3redis"]["connected_clients"]),
                                                    _fmt(st["p3redis"]["keys"])),
        "redis cluster cluster_state=%s masters=%s replicas=%s (not used by P3)" % (
            _fmt(r["cluster_state"]), _fmt(r["masters"]), _fmt(r["replicas"])),
        "anchor        %s worker=%s waiting=%s (oldest %s s) active=%s failed=%s completed=%s" % (
            a["queue"], _fmt(a["worker"]), _fmt(a["waiting"]), _fmt(a["oldest_wait_s"]), _fmt(a["active"]),
            _fmt(a["failed"]), _fmt(a["completed"])),
        "outbox        %s" % (", ".join("%s=%s" % kv for kv in sorted((st.get("outbox") or {}).items())) or "-"),
        "wallet        %s wei%s" % (_fmt(bal), (" (%.4f ETH)" % (bal / 1e18)) if bal is not None else ""),
        "faults        %s" % (", ".join(st["faults"]) or "none"),
        "healthy       %s" % ("yes" if st["healthy"] else "no: " + "; ".join(st["problems"])),
    ]
    return "\n".join(lines)
