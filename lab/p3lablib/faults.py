"""`p3lab fault NAME`: inject one failure and wait (bounded) until the app shows the symptom."""
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from . import anvil, rediscluster, supervisor
from .common import (BULL_PREFIX, BULL_QUEUE, REPO, VENV_PY, LabError, http, kill, live_pid, now_iso, pid_alive,
                     port_listening, read_json, read_pid, wait_until, write_json)
from .status import scan_sessions, session_ok

FAULTS = ["db-exhaustion", "redis-master-down", "redis-slots-uncovered", "sessions-corrupt", "mesh-down",
          "anchor-backlog", "anchor-worker-down", "wallet-empty", "app-down", "app-crashloop"]
CRASH_AFTER = 12.0  # seconds an app started under fault app-crashloop serves before it exits
SLOT_BLOCK = 100


def record(lab, rec):
    faults = read_json(lab.faults_json, []) or []
    faults.append(rec)
    write_json(lab.faults_json, faults)


def health(lab, timeout=2.5):
    code, body = http("GET", lab.app_url + "/health", timeout=timeout)
    return code, body if isinstance(body, dict) else {"error": body}


def failing(lab, what):
    """/health answers and lists `what` as failing."""
    code, body = health(lab)
    if code is None or code == 200:
        return None
    fl = body.get("failing") or []
    return body if what in fl else None


def require_app(lab):
    code, body = health(lab)
    if code is None:
        raise LabError("the lab app does not answer on %s (is the lab up? `p3lab up`)" % lab.app_url)
    return code, body


def post_many(lab, path, bodies, expect=(200, 201, 202), workers=8):
    def one(b):
        return http("POST", lab.app_url + path, b, timeout=10)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        res = list(ex.map(one, bodies))
    bad = [(c, b) for c, b in res if c not in expect]
    if bad:
        raise LabError("POST %s: %d of %d failed, first: %s %s" % (path, len(bad), len(res), bad[0][0], bad[0][1]))
    return [b for _, b in res]


# ---------------------------------------------------------------- db-exhaustion


def _holder_running(lab):
    pid = live_pid(lab.holder_pidfile)
    return pid if pid and "_hold" in _cmd(pid) else None


def _cmd(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def start_holder(lab):
    """The connection holder (`p3lab _hold`, its own session) running, started if it is not: its pid."""
    os.makedirs(lab.holder_dir, exist_ok=True)
    pid = _holder_running(lab)
    if not pid:
        if os.path.exists(lab.holder_state):
            os.unlink(lab.holder_state)
        with open(lab.holder_log, "ab") as logf:
            proc = subprocess.Popen([VENV_PY, os.path.join(REPO, "lab", "p3lab"), "_hold"], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, env=lab.child_env(), cwd=REPO,
                                    start_new_session=True, close_fds=True)
        pid = proc.pid
        with open(lab.holder_pidfile, "w") as fh:
            fh.write("%d\n" % pid)
    return pid


def db_exhaustion(lab):
    require_app(lab)
    pid = start_holder(lab)
    t0 = time.monotonic()
    rec = {"fault": "db-exhaustion", "at": now_iso(), "holder_pid": pid, "application_name": "p3-lab-leak"}
    record(lab, rec)
    # poll /health slowly: each probe uses (and so keeps alive) the app's pooled connection, which the
    # pool only drops after ~1 s idle; the holder grabs the slot it frees
    body = wait_until(lambda: failing(lab, "database") if pid_alive(pid) else None, 20, 1.5)
    if body:
        # stop the holder grabbing (it makes one last attempt that the full server refuses), so the set of leaked
        # backends is fixed when we return
        kill(pid, signal.SIGUSR1)
        wait_until(lambda: (read_json(lab.holder_state, {}) or {}).get("grabbing") is False, 5, 0.05)
    st = read_json(lab.holder_state, {}) or {}
    rec.update({"connections": st.get("held"), "refused": st.get("last_error"), "waited_s": round(time.monotonic() - t0, 1)})
    if not body:
        if not pid_alive(pid):
            raise LabError("db-exhaustion: the connection holder died (see %s)" % lab.holder_log)
        raise LabError("db-exhaustion: after 20 s the app /health still does not report the database failing "
                       "(holder %d holds %s connections)" % (pid, st.get("held")))
    rec["health"] = (body.get("checks") or {}).get("database")
    update_last(lab, rec)
    return rec


def update_last(lab, rec):
    faults = read_json(lab.faults_json, []) or []
    for i in range(len(faults) - 1, -1, -1):
        if faults[i].get("fault") == rec["fault"] and faults[i].get("at") == rec["at"]:
            faults[i] = rec
            break
    write_json(lab.faults_json, faults)


HOLD_GRAB_SECONDS = 25


def hold_main(lab):
    """The detached holder (`p3lab _hold`): grab p3app connections that each run pg_sleep(3600), retrying to grab
    freed slots, until `fault` (having seen /health report the database failing) sends SIGUSR1 and the server
    refuses one more attempt, or one of its backends is terminated by someone else, or 25 s passed. From then on
    it only holds, and exits when none of its backends is left."""
    import select

    import psycopg2
    import psycopg2.extensions as ext

    from .common import LEAK_APP_NAME, PG_APP_PASSWORD, PG_APP_USER, PG_DB

    dsn = "host=127.0.0.1 port=%d user=%s password=%s dbname=%s application_name=%s connect_timeout=3" % (
        lab.pg_port, PG_APP_USER, PG_APP_PASSWORD, PG_DB, LEAK_APP_NAME)
    conns = []
    state = {"pid": os.getpid(), "held": 0, "grabbing": True, "last_error": None, "terminated": 0}

    def save():
        state["held"] = len(conns)
        try:
            write_json(lab.holder_state, state)
        except OSError:
            pass

    def wait_conn(c, timeout):
        deadline = time.monotonic() + timeout
        while True:
            st = c.poll()
            if st == ext.POLL_OK:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise psycopg2.OperationalError("timeout")
            if st == ext.POLL_READ:
                select.select([c.fileno()], [], [], left)
            elif st == ext.POLL_WRITE:
                select.select([], [c.fileno()], [], left)

    def release(c):
        """Cancel the running pg_sleep first: a backend busy in pg_sleep never notices its client leaving."""
        try:
            c.cancel()
        except Exception:  # noqa: BLE001
            pass
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass

    def reap():
        """Drop held connections whose backend was terminated; returns how many died."""
        if not conns:
            return 0
        r, _, _ = select.select([c.fileno() for c in conns], [], [], 0)
        dead = []
        for c in conns:
            if c.fileno() in r:
                try:
                    c.poll()
                except Exception:  # noqa: BLE001 - terminated by administrator command, or closed
                    dead.append(c)
        for c in dead:
            conns.remove(c)
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        return len(dead)

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    signal.signal(signal.SIGUSR1, lambda *a: state.update(stop_requested=True))
    started = time.monotonic()
    while True:
        died = reap()
        if died:
            state["terminated"] += died
            state["grabbing"] = False
        if state["grabbing"] and time.monotonic() - started > HOLD_GRAB_SECONDS:
            state["grabbing"] = False
        if state["grabbing"]:
            try:
                c = psycopg2.connect(dsn, async_=1)
                wait_conn(c, 4)
                cur = c.cursor()
                cur.execute("SELECT pg_sleep(3600)")
                died = reap()
                if died:  # an admin started terminating us while we connected: give this one back too
                    state["terminated"] += died
                    state["grabbing"] = False
                    release(c)
                else:
                    conns.append(c)
                    state["last_error"] = None
            except Exception as e:  # noqa: BLE001
                state["last_error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if state.get("stop_requested"):  # the server is full and the app shows it: hold from now on
                    state["grabbing"] = False
                else:
                    time.sleep(0.1)
            save()
        else:
            save()
            if not conns:
                return 0
            time.sleep(0.5)


# ---------------------------------------------------------------- redis


def _pick_master(lab):
    _, nodes = rediscluster.view(lab)
    if not nodes:
        raise LabError("no redis node answers")
    masters = [n for n in nodes if n["role"] == "master" and n["slots"] and not n["failing"]
               and rediscluster.ping(n["port"])]
    if not masters:
        raise LabError("no live redis master with slots")
    return sorted(masters, key=lambda n: n["port"])[0], nodes


def redis_master_down(lab):
    require_app(lab)
    m, _ = _pick_master(lab)
    i = m["port"] - lab.base
    pid = live_pid(lab.redis_pidfile(i))
    if not pid:
        pid = int(rediscluster.client(m["port"]).info("server")["process_id"])
    t0 = time.monotonic()
    kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5, 0.02)
    rec = {"fault": "redis-master-down", "at": now_iso(), "node": m["address"], "name": "redis%d" % i, "pid": pid,
           "node_id": m["id"], "slots": [list(r) for r in m["slots"]]}
    record(lab, rec)
    body = wait_until(lambda: failing(lab, "redis"), 20, 0.2)
    rec["waited_s"] = round(time.monotonic() - t0, 1)
    if not body:
        raise LabError("redis-master-down: killed %s (pid %d) but after 20 s the app /health does not report redis failing"
                       % (m["address"], pid))
    rec["health"] = (body.get("checks") or {}).get("redis")
    update_last(lab, rec)
    return rec


SLOT_FAULT_ROUNDS = 3


def redis_slots_uncovered(lab):
    m, _ = _pick_master(lab)
    a = m["slots"][0][0]
    b = min(m["slots"][0][1], a + SLOT_BLOCK - 1)
    t0 = time.monotonic()
    rec = {"fault": "redis-slots-uncovered", "at": now_iso(), "range": [a, b], "owner": m["address"],
           "owner_id": m["id"]}
    record(lab, rec)
    rec["nodes"] = rediscluster.delslots_everywhere(lab, a, b, m["port"])
    update_last(lab, rec)

    def all_fail():
        for port in lab.redis_ports:
            try:
                if rediscluster.cluster_info(port, timeout=0.7).get("cluster_state") != "fail":
                    return False
            except Exception:  # noqa: BLE001 - a dead node does not vote
                continue
        return True

    # A heartbeat the owner sent before its own DELSLOTSRANGE, still unread by a slow node when that node deletes the
    # range, gives the range back to the owner there (an unassigned slot goes to a claiming sender). The owner no
    # longer claims it, so deleting again where it came back settles it: up to SLOT_FAULT_ROUNDS rounds.
    rec["rounds"] = 1
    while not wait_until(all_fail, 10, 0.1):
        if rec["rounds"] >= SLOT_FAULT_ROUNDS:
            raise LabError("redis-slots-uncovered: deleted slots %d-%d (%d rounds) but cluster_state did not become "
                           "fail on every node" % (a, b, rec["rounds"]))
        rec["rounds"] += 1
        rec["nodes"] = rediscluster.delslots_everywhere(lab, a, b, m["port"])
        update_last(lab, rec)
    rec["waited_s"] = round(time.monotonic() - t0, 1)
    _, body = health(lab)
    rec["health"] = (body.get("checks") or {}).get("redis") if isinstance(body, dict) else None
    update_last(lab, rec)
    return rec


# ---------------------------------------------------------------- sessions


def count_sessions(lab):
    _, nodes = rediscluster.view(lab)
    counts = {"valid": 0, "corrupt": 0}

    def page(keys, values, ttls):
        for v, t in zip(values, ttls):
            if v is not None:
                counts["valid" if session_ok(v, t) else "corrupt"] += 1

    for n in nodes or []:
        if n["role"] == "master" and n["slots"] and not n["failing"]:
            scan_sessions(n["port"], page)
    return counts


def sessions_corrupt(lab, corrupt=20, min_valid=50):
    require_app(lab)
    t0 = time.monotonic()
    before = count_sessions(lab)
    need = max(0, min_valid - before["valid"])
    if need:
        post_many(lab, "/api/protocol/session/handshake",
                  [{"deviceId": "lab-device-%d" % i, "capabilities": {"lab": True}} for i in range(need)],
                  expect=(201,))
    _, nodes = rediscluster.view(lab)
    now = int(time.time() * 1000)
    written = []
    for k in range(corrupt):
        sid = str(uuid.uuid4())
        key = "session:" + sid
        kind = ("not-json", "missing-fields", "no-ttl", "binary")[k % 4]
        if kind == "not-json":
            value, ex = b"{not json: " + sid.encode(), 3600
        elif kind == "binary":
            value, ex = b"\x80\x81\xfe\x00" + sid.encode(), 3600
        elif kind == "missing-fields":
            value, ex = json.dumps({"sessionId": sid, "capabilities": {}}).encode(), 3600
        else:
            value, ex = json.dumps({"sessionId": sid, "deviceId": "lab-corrupt", "capabilities": {},
                                    "createdAt": now, "expiresAt": now + 3600000}).encode(), None
        port = rediscluster.owner_port_for_key(lab, key, nodes)
        if not port:
            raise LabError("sessions-corrupt: no redis master owns %s" % key)
        rediscluster.client(port, decode=False, timeout=2).set(key, value, ex=ex)
        written.append({"id": sid, "kind": kind, "node": "127.0.0.1:%d" % port})
    rec = {"fault": "sessions-corrupt", "at": now_iso(), "created_valid": need, "corrupt": written}
    record(lab, rec)
    # the symptom: the app answers 401 "Session expired" for them (checked for one of each kind)
    answers = {}
    for w in written:
        if w["kind"] not in answers:
            answers[w["kind"]] = http("GET", lab.app_url + "/api/protocol/session/" + w["id"], timeout=2.5)[0]
    rec["app_answers"] = answers
    for kind in ("not-json", "binary", "missing-fields"):
        if answers.get(kind) != 401:
            raise LabError("sessions-corrupt: the app answers %s, not 401, for a %s session" % (answers.get(kind), kind))
    after = count_sessions(lab)
    rec.update({"valid": after["valid"], "corrupt_total": after["corrupt"], "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    out = dict(rec)
    out["corrupt"] = len(written)
    out["ids"] = [w["id"] for w in written]
    return out


# ---------------------------------------------------------------- mesh, anchor, wallet, app


def peers(lab):
    code, body = http("GET", lab.app_url + "/pulse/status", timeout=2.5)
    if code == 200 and isinstance(body, dict):
        return (body.get("status") or {}).get("subscribers")
    return None


def mesh_down(lab):
    require_app(lab)
    t0 = time.monotonic()
    before = peers(lab)
    code, body = http("POST", lab.app_url + "/_lab/mesh/down", {}, timeout=5)
    if code not in (200, 202, 204):
        raise LabError("mesh-down: POST /_lab/mesh/down answered %s %s" % (code, body))
    rec = {"fault": "mesh-down", "at": now_iso(), "peers_before": before}
    record(lab, rec)
    if not wait_until(lambda: peers(lab) == 0, 15, 0.2):
        raise LabError("mesh-down: /pulse/status still reports %s subscribers after 15 s" % peers(lab))
    rec.update({"peers": 0, "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


def anchor_key(state):
    return "%s:%s:%s" % (BULL_PREFIX, BULL_QUEUE, state)


def _anchor_client(lab):
    key = anchor_key("wait")
    port = rediscluster.owner_port_for_key(lab, key)
    if not port:
        raise LabError("no redis master owns %s" % key)
    return rediscluster.client(port, timeout=2)


def waiting(lab):
    return _anchor_client(lab).llen(anchor_key("wait"))


def failed_jobs(lab):
    return _anchor_client(lab).zcard(anchor_key("failed"))


def anchor_backlog(lab):
    require_app(lab)
    t0 = time.monotonic()
    code, body = http("POST", lab.app_url + "/_lab/anchor/pause", {}, timeout=15)
    if code not in (200, 202, 204):
        raise LabError("anchor-backlog: POST /_lab/anchor/pause answered %s %s" % (code, body))
    rec = {"fault": "anchor-backlog", "at": now_iso(), "posted": 0}
    record(lab, rec)
    n = lab.backlog
    res = post_many(lab, "/api/anchor", [{"appId": "p3-lab", "event": "backlog-%d" % i} for i in range(n)],
                    expect=(202,))
    rec["posted"] = len(res)
    update_last(lab, rec)
    w = wait_until(lambda: (lambda v: v if v >= n else None)(waiting(lab)), 20, 0.2)
    if not w:
        raise LabError("anchor-backlog: posted %d jobs but only %s are waiting after 20 s" % (n, waiting(lab)))
    rec.update({"waiting": w, "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


def worker_connections(lab):
    """Connections of the anchor queue's workers on the node serving the queue, as BullMQ's getWorkers counts them
    (CLIENT SETNAME <prefix>:<queue> (Python) or <prefix>:<base64 queue> (Node), with an optional :w:<name>)."""
    names = ("%s:%s" % (BULL_PREFIX, BULL_QUEUE),
             "%s:%s" % (BULL_PREFIX, base64.b64encode(BULL_QUEUE.encode()).decode()))
    return sum(1 for c in _anchor_client(lab).client_list()
               if any(c.get("name") == n or (c.get("name") or "").startswith(n + ":w:") for n in names))


def anchor_worker_down(lab, jobs=5):
    """The app runs without an anchor worker (P3 as coded with its lockfile's BullMQ): the worker is stopped, not
    paused, so no connection carries its name; jobs posted afterwards wait."""
    require_app(lab)
    t0 = time.monotonic()
    before = worker_connections(lab)
    code, body = http("POST", lab.app_url + "/_lab/anchor/stop", {}, timeout=15)
    if code not in (200, 202, 204):
        raise LabError("anchor-worker-down: POST /_lab/anchor/stop answered %s %s" % (code, body))
    rec = {"fault": "anchor-worker-down", "at": now_iso(), "worker_connections_before": before}
    record(lab, rec)
    if not wait_until(lambda: worker_connections(lab) == 0, 15, 0.2):
        raise LabError("anchor-worker-down: %d worker connections still named after 15 s" % worker_connections(lab))
    w = w0 = waiting(lab)
    if jobs:  # jobs=0: the worker is gone before anything waits (the next job would wait for good)
        post_many(lab, "/api/anchor", [{"appId": "p3-lab", "event": "no-worker-%d" % i} for i in range(jobs)],
                  expect=(202,))
        w = wait_until(lambda: (lambda v: v if v >= w0 + jobs else None)(waiting(lab)), 20, 0.2)
        if not w:
            raise LabError("anchor-worker-down: posted %d jobs but %s are waiting after 20 s" % (jobs, waiting(lab)))
    rec.update({"worker_connections": 0, "posted": jobs, "waiting": w, "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


def wallet_empty(lab, jobs=10):
    require_app(lab)
    t0 = time.monotonic()
    before = anvil.balance(lab)
    anvil.set_balance(lab, 0)
    rec = {"fault": "wallet-empty", "at": now_iso(), "wallet": anvil.ANCHOR_WALLET, "balance_before_wei": before}
    record(lab, rec)
    res = post_many(lab, "/api/anchor", [{"appId": "p3-lab", "event": "wallet-empty-%d" % i} for i in range(jobs)],
                    expect=(202,))
    ids = [str(b.get("jobId") or b.get("id")) for b in res]
    rec["jobs"] = ids
    update_last(lab, rec)
    c = _anchor_client(lab)

    def all_failed():
        pipe = c.pipeline(transaction=False)
        for j in ids:
            pipe.zscore(anchor_key("failed"), j)
        return all(s is not None for s in pipe.execute())

    if not wait_until(all_failed, 30, 0.25):
        paused = any(f.get("fault") == "anchor-backlog" for f in read_json(lab.faults_json, []) or [])
        raise LabError("wallet-empty: the %d anchor jobs did not all fail within 30 s%s" % (
            jobs, " (the anchor worker is paused by the anchor-backlog fault)" if paused else ""))
    rec.update({"failed": len(ids), "waited_s": round(time.monotonic() - t0, 1)})
    update_last(lab, rec)
    return rec


def app_down(lab, program=None):
    """SIGKILL the app's program (supervisor leaves it EXITED: autorestart=false); program: P3's own server's
    for app=upstream, else the lab app."""
    t0 = time.monotonic()
    if not supervisor.running(lab):
        raise LabError("supervisord is not running (is the lab up? `p3lab up%s`)"
                       % (" --app upstream" if lab.upstream else ""))
    pid = supervisor.pid_of(lab, program or supervisor.APP)
    if pid:
        kill(pid, signal.SIGKILL)
    rec = {"fault": "app-down", "at": now_iso(), "pid": pid, "port": lab.app_port}
    if program:
        rec["program"] = program
    record(lab, rec)
    if not wait_until(lambda: not port_listening(lab.app_port), 10, 0.05):
        raise LabError("app-down: port %d is still listening after killing pid %s" % (lab.app_port, pid))
    rec["waited_s"] = round(time.monotonic() - t0, 1)
    update_last(lab, rec)
    return rec


def crash_marker(lab):
    return os.path.join(lab.dir, "app-crash-after")


def app_crashloop(lab):
    """An app that crashes again right after its restart: every start of the lab app (instance 1) exits CRASH_AFTER
    seconds after it starts serving (lab/app/p3app.py reads the marker $P3LAB_DIR/app-crash-after), and the running
    one is killed now (supervisor leaves it EXITED). `heal` removes the marker."""
    with open(crash_marker(lab), "w") as fh:
        fh.write("%s\n" % CRASH_AFTER)
    down = app_down(lab)
    rec = dict(down, fault="app-crashloop", crash_after_s=CRASH_AFTER)
    faults = read_json(lab.faults_json, []) or []
    write_json(lab.faults_json, [rec if f == down else f for f in faults])
    return rec


def inject(lab, name):
    if lab.upstream:  # P3 Protocol's own server (lab/p3lablib/upstream_faults.py)
        from .upstream_faults import inject as inject_upstream

        return inject_upstream(lab, name)
    if name not in FAULTS:
        raise LabError("%s applies only to app=upstream (P3's own server; docs/lab.md)" % name)
    fn = {
        "db-exhaustion": db_exhaustion,
        "redis-master-down": redis_master_down,
        "redis-slots-uncovered": redis_slots_uncovered,
        "sessions-corrupt": sessions_corrupt,
        "mesh-down": mesh_down,
        "anchor-backlog": anchor_backlog,
        "anchor-worker-down": anchor_worker_down,
        "wallet-empty": wallet_empty,
        "app-down": app_down,
        "app-crashloop": app_crashloop,
    }[name]
    return fn(lab)


def holder_pids(lab):
    """Every live holder: the recorded one plus any `p3lab _hold` carrying our owner marker."""
    from .common import owned_pids

    pids = set(p for p in owned_pids(lab) if " _hold" in " " + _cmd(p).replace("\0", " "))
    p = read_pid(lab.holder_pidfile)
    if p and pid_alive(p) and "_hold" in _cmd(p):
        pids.add(p)
    return sorted(pids)
