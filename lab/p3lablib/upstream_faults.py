"""`p3lab fault NAME` and `p3lab heal` for app=upstream: the lab's faults on P3 Protocol's own server (docs/lab.md,
"Faults on the real server"). Each fault is injected into what P3 really uses and waits (bounded) until P3 shows it."""
import signal
import time

from . import anvil, pg, rediscluster, supervisor, upstream
from .common import ONE_ETH, PG_APP_USER, LabError, kill, live_pid, now_iso, pid_alive, read_json, wait_until, write_json
from .faults import record, update_last

FAULTS = ["db-exhaustion", "db-down", "redis-master-down", "redis-outage", "anchor-backlog", "wallet-empty", "app-down"]
NOT_APPLICABLE = {
    "redis-slots-uncovered": "P3 uses one standalone Redis here (FLAG_REDIS_CLUSTER=0: in cluster mode its BullMQ "
                             "clients fail with CROSSSLOT), which has no slots to uncover",
    "sessions-corrupt": "P3 keeps sessions in process memory (sessionBridge, handshake Maps), not in Redis: there "
                        "are no session keys to corrupt",
    "mesh-down": "P3's mesh peers live in process memory and it has no mesh:* channel or mesh:control subscriber: "
                 "there is no relay to take down (app-down or a restart clears the peers)",
}


def outage_seconds():
    from .common import _int_env

    # P3's ioredis clients give up after 10 retries (100 ms .. 1 s apart, about 5.5 s): 10 s is past that
    return _int_env("P3LAB_REDIS_OUTAGE", 10, 1, 600)


def require_app(lab):
    code, body = upstream.health(lab, timeout=5)
    if code is None:
        raise LabError("P3 does not answer on %s (is the lab up? `p3lab up --app upstream`)" % lab.app_url)
    return code, body


def _waiting(lab):
    from .upstream_status import anchor_queue

    return anchor_queue(lab)["waiting"]


def _worker(lab):
    from .upstream_status import anchor_queue

    return anchor_queue(lab)["worker"]


# ---------------------------------------------------------------- db-exhaustion


def _drop_p3_idle_connections(lab):
    """pg_terminate_backend of the idle connections of P3's pools (its role on its database: application_name
    p3-protocol of server/pg-storage.ts and postgres.js of server/db.ts): what their
    recycling does (postgres.js max_lifetime, a server-side idle timeout, a PgBouncer restart). The pools must then
    open new connections. Returns how many were terminated."""
    conn = upstream.connect(lab, timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND "
                        "usename = %s AND application_name <> 'p3-lab-leak' AND state = 'idle'",
                        (upstream.DB, PG_APP_USER))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _p3_connections(lab):
    conn = upstream.connect(lab, timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s AND "
                        "application_name <> 'p3-lab-leak'", (upstream.DB, PG_APP_USER))
            return cur.fetchone()[0]
    finally:
        conn.close()


def db_exhaustion(lab):
    """The lab's connection holder (p3lab _hold, application_name p3-lab-leak, as p3app) takes every free slot of
    the server; then the idle connections of P3's two postgres.js pools (10 + 10 here) are dropped, as their
    recycling would drop them, and the holder takes those slots too. P3's pools cannot open the connections they
    need: concurrent API requests fail (without the drop, a P3 whose pools had grown under users would keep
    serving on the connections it holds)."""
    from .faults import start_holder

    require_app(lab)
    pid = start_holder(lab)
    t0 = time.monotonic()
    rec = {"fault": "db-exhaustion", "at": now_iso(), "holder_pid": pid, "application_name": "p3-lab-leak"}
    record(lab, rec)
    # the server is full once the holder is refused
    full = wait_until(lambda: (read_json(lab.holder_state, {}) or {}).get("last_error"), 15, 0.2)
    dropped = []

    def held():
        return (read_json(lab.holder_state, {}) or {}).get("held") or 0

    def broken():
        if not pid_alive(pid):
            return None
        before = held()
        n = _drop_p3_idle_connections(lab)
        dropped.append(n)
        # the holder takes the freed slots (P3's pools, busy, may win a few back: then drop again)
        wait_until(lambda: held() >= before + n, 3, 0.05)
        if _p3_connections(lab) > 2:
            return None
        return upstream.concurrent_health(lab)

    bad = wait_until(broken, 20, 0.5) if full else None
    if bad:
        kill(pid, signal.SIGUSR1)
        wait_until(lambda: (read_json(lab.holder_state, {}) or {}).get("grabbing") is False, 5, 0.05)
    st = read_json(lab.holder_state, {}) or {}
    rec.update({"connections": st.get("held"), "refused": st.get("last_error"), "p3_idle_dropped": sum(dropped),
                "p3_connections": _p3_connections(lab),
                "waited_s": round(time.monotonic() - t0, 1)})
    if not bad:
        if not pid_alive(pid):
            raise LabError("db-exhaustion: the connection holder died (see %s)" % lab.holder_log)
        raise LabError("db-exhaustion: P3 still answers 8 concurrent /api/system/health after 20 s (holder %d holds "
                       "%s connections)" % (pid, st.get("held")))
    rec["failed_probes"] = len(bad)
    rec["health"] = str(bad[0][1])[:300]
    update_last(lab, rec)
    return rec


def db_down(lab):
    """PostgreSQL stopped (pg_ctl stop -m fast); stays down. /api/system/health answers 500 {"status":"error"} (its
    SELECT 1 fails, then its task count fails too, so not the 200 "degraded" it gives when only the SELECT 1 fails),
    sometimes after a hang of up to P3's connect_timeout on the first request; /health stays 200. P3 reconnects by
    itself once PostgreSQL is back."""
    require_app(lab)
    t0 = time.monotonic()
    rec = {"fault": "db-down", "at": now_iso(), "port": lab.pg_port, "pid": pg.postmaster_pid(lab)}
    record(lab, rec)
    pg.stop(lab)
    if pg.postmaster_pid(lab):
        raise LabError("db-down: PostgreSQL (pid %s) is still running after pg_ctl stop" % rec["pid"])
    last = {}

    def failing():
        last["h"] = upstream.health(lab, timeout=15)
        return last["h"][0] not in (None, 200) or (last["h"][0] == 200 and not upstream.db_ok(last["h"][1]))

    if not wait_until(failing, 45, 0.5):
        raise LabError("db-down: /api/system/health still answers %s %s 45 s after PostgreSQL stopped"
                       % (last["h"][0], str(last["h"][1])[:200]))
    rec.update({"system_health": last["h"][0], "health": last["h"][1] if isinstance(last["h"][1], dict) else
                str(last["h"][1])[:300], "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


# ---------------------------------------------------------------- P3's Redis


def _kill_redis(lab):
    pid = live_pid(upstream.redis_pidfile(lab))
    if not pid:
        raise LabError("P3's Redis (port %d) is not running" % lab.p3redis_port)
    kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), 5, 0.02):
        raise LabError("P3's Redis pid %d survived SIGKILL" % pid)
    return pid


def redis_master_down(lab):
    """SIGKILL the Redis P3 uses (its only master); stays down. P3's /api/system/health stays 200 (it checks only the
    database); what breaks is everything on Redis: the SDK anchor route answers 500 and the anchor worker stops."""
    require_app(lab)
    t0 = time.monotonic()
    rec = {"fault": "redis-master-down", "at": now_iso(), "node": "127.0.0.1:%d" % lab.p3redis_port,
           "name": "p3redis"}
    record(lab, rec)
    rec["pid"] = _kill_redis(lab)
    update_last(lab, rec)
    res = wait_until(lambda: (lambda r: r if r[0] != 200 else None)(upstream.submit_batch(lab, [
        {"appId": "p3-lab", "event": "probe"}], timeout=8)), 20, 0.5)
    code, _ = upstream.health(lab, timeout=5)
    rec.update({"anchor_batch": res[0] if res else 200, "system_health": code,
                "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    if not res:
        raise LabError("redis-master-down: P3 still queues anchor batches 20 s after its Redis died")
    return rec


def _outage(lab, rec):
    seconds = outage_seconds()
    rec["worker_before"] = _worker(lab)
    rec["pid"] = _kill_redis(lab)
    update_last(lab, rec)
    time.sleep(seconds)
    upstream.start_redis(lab)
    rec["outage_s"] = seconds


def redis_outage(lab):
    """The dependency outage P3 does not come back from: its Redis down for P3LAB_REDIS_OUTAGE (10) s, then back
    (empty). P3's ioredis clients (retryStrategy null after 10 retries, about 5.5 s) have given up for good: the
    anchor worker is gone and every client created before the outage answers `Connection is closed`, while
    /api/system/health stays 200. Only a restart of P3 brings them back."""
    require_app(lab)
    t0 = time.monotonic()
    rec = {"fault": "redis-outage", "at": now_iso(), "node": "127.0.0.1:%d" % lab.p3redis_port}
    record(lab, rec)
    _outage(lab, rec)
    time.sleep(3)  # what a client that can reconnect does within a few seconds
    gone = wait_until(lambda: _worker(lab) is False, 10, 0.5)
    code, _ = upstream.health(lab, timeout=5)
    rec.update({"worker_after": _worker(lab), "system_health": code, "recovered_by_itself": not gone,
                "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    if rec["worker_before"] and not gone:
        raise LabError("redis-outage: P3's anchor worker came back by itself after a %d s outage" % rec["outage_s"])
    return rec


def anchor_backlog(lab):
    """P3's anchor worker lost (a Redis outage past its retry budget, as redis-outage) and P3LAB_BACKLOG (200) jobs
    queued on anchor-batch:us exactly as POST /api/sdk/anchor/batch queues them (added with P3's own bullmq): they
    wait, nothing consumes them, P3's health endpoints stay 200."""
    if lab.bullmq != "working":
        raise LabError("anchor-backlog: with the lockfile's bullmq P3 cannot even create its queue (Queue name "
                       "cannot contain :); use `p3lab up --app upstream --bullmq working`")
    require_app(lab)
    t0 = time.monotonic()
    rec = {"fault": "anchor-backlog", "at": now_iso()}
    record(lab, rec)
    if _worker(lab):
        _outage(lab, rec)
        if not wait_until(lambda: _worker(lab) is False, 15, 0.5):
            raise LabError("anchor-backlog: P3's anchor worker came back by itself after the Redis outage")
    res = upstream.bullmq(lab, "add", lab.backlog)
    rec["posted"] = len(res.get("ids") or [])
    update_last(lab, rec)
    from .upstream_status import anchor_queue

    got = wait_until(lambda: (lambda q: q if (q["waiting"] or 0) >= lab.backlog else None)(anchor_queue(lab)), 20,
                     0.5)
    if not got:
        raise LabError("anchor-backlog: %d jobs added but only %s waiting" % (rec["posted"], anchor_queue(lab)["waiting"]))
    rec.update({"waiting": got["waiting"], "worker": got["worker"], "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


# ---------------------------------------------------------------- wallet


def _outbox_status(lab, ids):
    conn = upstream.connect(lab, timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, status FROM anchor_outbox WHERE id::text = ANY(%s)", (list(ids),))
            return dict(cur.fetchall())
    finally:
        conn.close()


def wallet_empty(lab, n=5):
    """anvil_setBalance of P3's signer (PRIVATE_KEY = the lab's anchor wallet) to 0, then n POST
    /api/sdk/anchor-checkpoint: P3's on-chain anchor fails (insufficient funds) and it falls back to a `pending`
    anchor_outbox row, which nothing processes in development (FLAG_ANCHOR_QUEUE off): a durable backlog."""
    require_app(lab)
    t0 = time.monotonic()
    before = anvil.balance(lab)
    rec = {"fault": "wallet-empty", "at": now_iso(), "balance_before_wei": before}
    record(lab, rec)
    anvil.set_balance(lab, 0)
    answers = [upstream.anchor_checkpoint(lab, kind="wallet-empty-%d" % i) for i in range(n)]
    bad = [a for a in answers if a[0] != 200 or not isinstance(a[1], dict) or a[1].get("onChain") is not False]
    if bad:
        raise LabError("wallet-empty: P3 answered %s %s to an anchor checkpoint with an empty wallet"
                       % (bad[0][0], str(bad[0][1])[:200]))
    ids = [a[1].get("receiptId") for a in answers]
    st = _outbox_status(lab, ids)
    rec.update({"checkpoints": n, "outbox_ids": ids, "outbox": st, "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    if len(st) != n:
        raise LabError("wallet-empty: only %d of %d fallback outbox rows found" % (len(st), n))
    return rec


# ---------------------------------------------------------------- app


def app_down(lab):
    """SIGKILL P3's server (supervisor leaves it EXITED: autorestart=false)."""
    from .faults import app_down as kill_app

    return kill_app(lab, upstream.PROGRAM)


def inject(lab, name):
    if name in NOT_APPLICABLE:
        raise LabError("%s does not apply to app=upstream: %s" % (name, NOT_APPLICABLE[name]))
    fn = {
        "db-exhaustion": db_exhaustion,
        "db-down": db_down,
        "redis-master-down": redis_master_down,
        "redis-outage": redis_outage,
        "anchor-backlog": anchor_backlog,
        "wallet-empty": wallet_empty,
        "app-down": app_down,
    }.get(name)
    if fn is None:
        raise LabError("unknown fault %s for app=upstream (one of %s)" % (name, ", ".join(FAULTS)))
    return fn(lab)


# ---------------------------------------------------------------- heal


def heal(lab):
    """Undo every fault on the upstream lab without the collection, then wait until status says healthy (for the
    lockfile variant: healthy but for the anchor worker it cannot have)."""
    from .faults import holder_pids
    from .stack import Deadline, check_binaries, preflight_ports, start_infra, write_state
    from .upstream_status import collect

    t0 = time.monotonic()
    dl = Deadline(240)
    faults = read_json(lab.faults_json, []) or []
    names = [f.get("fault") for f in faults]
    actions = []
    for pid in holder_pids(lab):
        kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 3, 0.02)
        actions.append("killed db holder %d" % pid)
    redis_was_down = not upstream.redis_up(lab)
    check_binaries(lab)
    preflight_ports(lab)
    write_state(lab)
    res = start_infra(lab, dl, wait_state=False)
    for name in ("p3redis", "postgres", "anvil", "supervisord", upstream.PROGRAM):
        if res.get(name) is True:
            actions.append("started %s" % name)
    if res.get("redis", {}).get("started"):
        actions.append("restarted redis%s" % ",".join(str(i) for i in res["redis"]["started"]))
    if res.get("registry"):
        actions.append("anchor registry code set on anvil")
    n = pg.terminate_leaks(lab)
    if n:
        actions.append("terminated %d p3-lab-leak backends" % n)
    bal = anvil.balance(lab)
    if bal < ONE_ETH // 10 or "wallet-empty" in names:
        anvil.set_balance(lab, ONE_ETH)
        actions.append("anchor wallet balance %d -> 1 ETH" % bal)
    # the fallback outbox rows wallet-empty made: nothing in P3 (development) ever processes them, so they would stay
    # a backlog for good; heal removes exactly the recorded ones (anchor checkpoints go on chain again now)
    ids = [i for f in faults if f.get("fault") == "wallet-empty" for i in (f.get("outbox_ids") or []) if i]
    if ids:
        conn = upstream.connect(lab, timeout=3)
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM anchor_outbox WHERE id::text = ANY(%s) AND status = 'pending'", (ids,))
            if cur.rowcount:
                actions.append("deleted %d pending anchor_outbox rows of wallet-empty" % cur.rowcount)
        conn.close()
    if not rediscluster.wait_healthy(lab, dl.left(60)):
        raise LabError("the lab's redis cluster did not settle (see %s)" % lab.redis_dir)
    # P3's Redis clients give up for good after an outage of a few seconds: only a restart brings them back
    restart = None
    if not res.get(upstream.PROGRAM):
        if redis_was_down or set(names) & {"redis-master-down", "redis-outage", "anchor-backlog"}:
            restart = "its Redis clients gave up during the outage"
        elif lab.bullmq == "working" and _worker(lab) is False:
            restart = "no anchor worker"
        elif lab.bullmq == "working" and _waiting(lab):
            # P3's worker misses jobs once it has idled 5 s (its ioredis commandTimeout 5000 cuts BullMQ's 5 s
            # BZPOPMIN; docs/lab.md): waiting jobs are only taken by a fresh worker
            restart = "jobs wait but its anchor worker takes none"
    if restart:
        supervisor.ctl(lab, "restart", upstream.PROGRAM, timeout=60)
        actions.append("restarted %s (%s)" % (upstream.PROGRAM, restart))
    upstream.wait_ready(lab, dl.left(upstream.START_TIMEOUT))
    if lab.bullmq == "working":
        if not wait_until(lambda: _worker(lab), dl.left(30), 0.3):
            raise LabError("P3's anchor worker did not start (see %s)" % lab.app_log)
        from .upstream_status import anchor_queue

        q = anchor_queue(lab)
        if q["failed"]:
            upstream.bullmq(lab, "retry-failed")
            actions.append("%d failed anchor jobs retried" % q["failed"])
        if q["waiting"] or q["failed"]:
            if not wait_until(lambda: (lambda a: a["waiting"] == 0 and a["failed"] == 0)(anchor_queue(lab)),
                              dl.left(90), 0.5):
                raise LabError("P3's anchor queue did not drain: %s" % anchor_queue(lab))
            actions.append("anchor backlog of %s drained" % q["waiting"])
    last = {}

    def good():
        last["st"] = collect(lab)
        probs = [p for p in last["st"]["problems"] if not (lab.bullmq == "lockfile" and p.startswith("anchor: no"))]
        return not probs

    if not wait_until(good, dl.left(30), 0.5):
        raise LabError("still unhealthy after heal: %s" % "; ".join(last["st"]["problems"]))
    write_json(lab.faults_json, [])
    return {"healed": names, "actions": actions, "seconds": round(time.monotonic() - t0, 1)}
