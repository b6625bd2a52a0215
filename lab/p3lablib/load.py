"""Client load for the lab with loss accounting (docs/lab.md "Client load").

Four streams, each one thread, all bounded in count and time, loopback only:

- ``redis``: SET ``p3load:<run>:<n>`` on the master that owns its slot, then ``WAIT 1 <wait_ms>`` on the same
  connection; the write is *acknowledged* only when WAIT reports at least one replica.
- ``session``: session handshake through the app (the load balancer when the lab has one), then a read of a session
  made earlier.
- ``anchor``: ``POST /api/anchor`` (an outbox row plus a BullMQ job); the job id is recorded on 202.
- ``http``: ``GET /pulse/status`` through the load balancer (or the app).

Every attempt is one JSON line in the ledger (``$P3LAB_DIR/load/ledger.jsonl`` by default), written and flushed
as it happens, so an accounting survives a killed generator. :func:`verify` re-reads every acknowledged key,
session and job from the real services and counts what is present, lost, or unreadable now.

Python API::

    with Load(lab, seconds=30) as ld:     # starts the threads; stops them on exit
        ...                               # inject faults, run playbooks
    print(ld.summary())                   # counts of the attempts (ok / failed by reason / unacked)
    print(verify(lab, ld.ledger))         # what of it is still there

CLI: ``p3lab load start [--seconds N] [--rate R] [--streams a,b]`` (a detached generator), ``p3lab load stop``,
``p3lab load report`` (summary + verify as one JSON line).
"""
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

STREAMS = ("redis", "session", "anchor", "http")
KEY_PREFIX = "p3load"
MAX_SECONDS = 900
MAX_OPS = 100000
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LoadError(Exception):
    """Bad input for the generator (one line)."""


def _check_loopback(url):
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise LoadError("load generator is loopback only: %s is not a loopback URL" % url)
    return url


# ---------------------------------------------------------------------------------------------------------------
# accounting (pure: unit-tested in tests/unit/test_lab_load.py)

def read_ledger(path):
    """The records of a ledger file; a torn last line (a generator killed mid-write) is ignored."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw.decode("utf-8"))
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def summarize(records):
    """Counts per stream: attempts, ok, failed (by reason), unacked (redis writes WAIT did not confirm)."""
    out = {s: {"attempts": 0, "ok": 0, "failed": 0, "reasons": {}} for s in STREAMS}
    out["redis"]["unacked"] = 0
    out["session"]["reads"] = 0
    out["session"]["reads_failed"] = 0
    http = {"requests": 0, "ok": 0, "failed": 0, "reasons": {}}
    for r in records:
        s = r.get("s")
        if s not in out:
            continue
        st = out[s]
        st["attempts"] += 1
        ok = bool(r.get("ok"))
        if ok:
            st["ok"] += 1
        elif s == "redis" and r.get("written"):
            st["unacked"] += 1
        else:
            st["failed"] += 1
            why = str(r.get("why") or "unknown")[:120]
            st["reasons"][why] = st["reasons"].get(why, 0) + 1
        if s == "session" and r.get("op") == "read":
            st["reads"] += 1
            st["reads_failed"] += 0 if ok else 1
        if s in ("session", "anchor", "http"):
            http["requests"] += 1
            if ok:
                http["ok"] += 1
            else:
                http["failed"] += 1
                why = str(r.get("why") or "unknown")[:120]
                http["reasons"][why] = http["reasons"].get(why, 0) + 1
    out["http_total"] = http
    return out


def expected(records):
    """What real state must hold after the run: acknowledged keys (last acknowledged value per key), sessions whose
    handshake was answered 201, jobs whose enqueue was answered 202."""
    keys, sessions, jobs = {}, [], []
    seen_s, seen_j = set(), set()
    for r in records:
        if not r.get("ok"):
            continue
        s = r.get("s")
        if s == "redis" and r.get("k") is not None:
            keys[r["k"]] = r.get("v")
        elif s == "session" and r.get("op") == "handshake" and r.get("id") and r["id"] not in seen_s:
            seen_s.add(r["id"])
            sessions.append(r["id"])
        elif s == "anchor" and r.get("job") and r["job"] not in seen_j:
            seen_j.add(r["job"])
            jobs.append(r["job"])
    return {"keys": keys, "sessions": sessions, "jobs": jobs}


def compare(want, found, sample=20):
    """want: {name: value}; found: {name: value or None (absent)} with names that could not be read left out.
    Returns {expected, present, lost, unreadable, lost_sample}."""
    present, lost, unreadable = 0, [], 0
    for name, value in want.items():
        if name not in found:
            unreadable += 1
        elif found[name] is not None and (value is True or found[name] == value):
            present += 1
        else:
            lost.append(name)
    return {"expected": len(want), "present": present, "lost": len(lost), "unreadable": unreadable,
            "lost_sample": sorted(lost)[:sample]}


# ---------------------------------------------------------------------------------------------------------------
# the generator

class Ledger(object):
    """Append-only JSON lines, one write + flush per record (thread-safe); fsync on close."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._fh = open(path, "ab", buffering=0)
        self._lock = threading.Lock()

    def write(self, rec):
        rec.setdefault("t", round(time.time(), 3))
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fh:
                self._fh.write(line)

    def close(self):
        with self._lock:
            if self._fh:
                try:
                    os.fsync(self._fh.fileno())
                finally:
                    self._fh.close()
                    self._fh = None


class _Http(object):
    """One keep-alive HTTP/1.1 connection (reopened after an error); every request bounded by `timeout`."""

    def __init__(self, base, timeout):
        import http.client

        self._mod = http.client
        u = urlsplit(base)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.conn = None

    def request(self, method, path, body=None):
        """(status, parsed body) or (None, reason)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = self._mod.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                try:
                    return resp.status, json.loads(raw.decode("utf-8"))
                except ValueError:
                    return resp.status, raw.decode("utf-8", "replace")[:200]
            except (self._mod.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                # a keep-alive connection the server closed between requests: retry once on a new one (what every
                # HTTP client does); a failure on a fresh connection is a failure
                if fresh or attempt:
                    return None, "%s: %s" % (type(e).__name__, e)
            except Exception as e:  # noqa: BLE001 - refused, timeout: the request failed
                self.close()
                return None, "%s: %s" % (type(e).__name__, e)
        return None, "unreachable"

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None


def _reason(code, body):
    if code is None:
        return str(body)[:120]
    err = body.get("error") if isinstance(body, dict) else None
    return "HTTP %d%s" % (code, (": " + str(err)) if err else "")


class Load(object):
    """The load generator. rate: operations per second per stream; seconds and max_ops bound each stream."""

    def __init__(self, lab, seconds=60.0, rate=20.0, max_ops=5000, streams=STREAMS, ledger=None, url=None,
                 wait_ms=500, timeout=3.0, anchor_rate=None, run_id=None):
        if not 0 < float(seconds) <= MAX_SECONDS:
            raise LoadError("seconds must be in (0, %d], got %r" % (MAX_SECONDS, seconds))
        if not 0 < float(rate) <= 1000:
            raise LoadError("rate must be in (0, 1000] per second, got %r" % rate)
        if not 0 < int(max_ops) <= MAX_OPS:
            raise LoadError("max_ops must be in (0, %d], got %r" % (MAX_OPS, max_ops))
        bad = [s for s in streams if s not in STREAMS]
        if bad or not streams:
            raise LoadError("unknown stream(s) %s (choose from %s)" % (",".join(bad) or "none", ",".join(STREAMS)))
        self.lab = lab
        self.seconds, self.rate, self.max_ops = float(seconds), float(rate), int(max_ops)
        self.anchor_rate = float(anchor_rate) if anchor_rate else min(self.rate, 2.0)
        self.streams = tuple(streams)
        self.wait_ms, self.timeout = int(wait_ms), float(timeout)
        self.url = _check_loopback(url or lab_front_url(lab))
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.ledger_path = ledger or os.path.join(lab.dir, "load", "ledger.jsonl")
        self.ledger = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._threads = []
        self._session_ids = []
        self._sid_lock = threading.Lock()

    # lifecycle
    def start(self):
        self.ledger = Ledger(self.ledger_path)
        self.ledger.write({"s": "start", "run": self.run_id, "url": self.url, "streams": list(self.streams),
                           "rate": self.rate, "seconds": self.seconds, "max_ops": self.max_ops})
        self._t_end = time.monotonic() + self.seconds
        for s in self.streams:
            th = threading.Thread(target=self._loop, args=(s,), name="load-" + s, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, timeout=10.0):
        """Stop every stream (each finishes its current operation, bounded by its own timeout) and close the
        ledger. Returns True when every thread ended within `timeout`."""
        self._stop.set()
        end = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, end - time.monotonic()))
        done = not any(th.is_alive() for th in self._threads)
        if self.ledger:
            self.ledger.write({"s": "stop", "run": self.run_id, "clean": done})
            self.ledger.close()
        return done

    def pause(self):
        """Every stream idles after its current operation until resume() (a traffic dip: e.g. so that the app's pool
        lets go of its idle database connections while the db-exhaustion fault takes them)."""
        self._paused.set()

    def resume(self):
        self._paused.clear()

    def wait(self, timeout=None):
        """Block until every stream ended by itself (time or count bound)."""
        end = time.monotonic() + (timeout if timeout is not None else self.seconds + 10)
        for th in self._threads:
            th.join(max(0.0, end - time.monotonic()))
        return not any(th.is_alive() for th in self._threads)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def summary(self):
        return summarize([r for r in read_ledger(self.ledger_path) if r.get("run") == self.run_id])

    def verify(self):
        return verify(self.lab, self.ledger_path, run_id=self.run_id)

    # streams
    def _loop(self, stream):
        rate = self.anchor_rate if stream == "anchor" else self.rate
        period = 1.0 / rate
        op = getattr(self, "_op_" + stream)
        state = {}
        n = 0
        nxt = time.monotonic()
        try:
            while not self._stop.is_set() and n < self.max_ops and time.monotonic() < self._t_end:
                if self._paused.is_set():
                    self._stop.wait(0.05)
                    nxt = time.monotonic()
                    continue
                rec = {"s": stream, "run": self.run_id, "n": n}
                try:
                    op(n, rec, state)
                except Exception as e:  # noqa: BLE001 - counted, never fatal to the stream
                    rec["ok"] = False
                    rec.setdefault("why", "%s: %s" % (type(e).__name__, str(e)[:100]))
                self.ledger.write(rec)
                n += 1
                nxt += period
                delay = nxt - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    nxt = time.monotonic()
        finally:
            for v in state.values():
                close = getattr(v, "close", None)
                if close:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        pass

    def _op_redis(self, n, rec, state):
        from redis.crc import key_slot

        from . import rediscluster

        key = "%s:%s:%d" % (KEY_PREFIX, self.run_id, n)
        val = "%s-%d-%s" % (self.run_id, n, uuid.uuid4().hex[:8])
        rec["k"], rec["v"] = key, val
        nodes = state.get("nodes")
        if nodes is None or state.get("stale"):
            _, nodes = rediscluster.view(self.lab)
            state["nodes"], state["stale"] = nodes, False
            if not nodes:
                rec["ok"], rec["why"] = False, "no redis node reachable"
                return
        owner = rediscluster.slot_owner(nodes, key_slot(key.encode()))
        if owner is None:
            state["stale"] = True
            rec["ok"], rec["why"] = False, "slot %d uncovered" % key_slot(key.encode())
            return
        rec["node"] = owner["port"]
        cli = state.get(owner["port"])
        if cli is None:
            cli = state[owner["port"]] = rediscluster.client(owner["port"], timeout=self.timeout)
        pipe = cli.pipeline(transaction=False)
        pipe.set(key, val)
        pipe.execute_command("WAIT", 1, self.wait_ms)
        try:
            set_ok, acks = pipe.execute(raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - connection refused/reset: not written as far as we know
            state["stale"] = True
            state.pop(owner["port"], None)
            rec["ok"], rec["why"] = False, "%s: %s" % (type(e).__name__, str(e)[:100])
            return
        if isinstance(set_ok, Exception):
            state["stale"] = True  # MOVED / CLUSTERDOWN / READONLY
            rec["ok"], rec["why"] = False, str(set_ok)[:120]
            return
        rec["written"] = True
        if isinstance(acks, Exception):
            rec["ok"], rec["why"] = False, "WAIT: %s" % str(acks)[:100]
            return
        rec["acks"] = int(acks)
        rec["ok"] = int(acks) >= 1
        if not rec["ok"]:
            rec["why"] = "WAIT 1 %d: 0 replicas" % self.wait_ms

    def _http(self, state):
        h = state.get("http")
        if h is None:
            h = state["http"] = _Http(self.url, self.timeout)
        return h

    def _op_session(self, n, rec, state):
        h = self._http(state)
        with self._sid_lock:
            old = self._session_ids[n // 2 % len(self._session_ids)] if self._session_ids and n % 2 else None
        if old is None:
            rec["op"] = "handshake"
            code, body = h.request("POST", "/api/protocol/session/handshake",
                                   {"deviceId": "p3load-%s-%d" % (self.run_id, n), "capabilities": {"load": True}})
            rec["code"] = code
            if code == 201 and isinstance(body, dict) and body.get("sessionId"):
                rec["ok"], rec["id"] = True, body["sessionId"]
                with self._sid_lock:
                    self._session_ids.append(body["sessionId"])
            else:
                rec["ok"], rec["why"] = False, _reason(code, body)
        else:
            rec["op"], rec["id"] = "read", old
            code, body = h.request("GET", "/api/protocol/session/%s" % old)
            rec["code"] = code
            rec["ok"] = code == 200 and isinstance(body, dict) and body.get("sessionId") == old
            if not rec["ok"]:
                rec["why"] = _reason(code, body)

    def _op_anchor(self, n, rec, state):
        code, body = self._http(state).request("POST", "/api/anchor",
                                               {"appId": "p3load", "event": "load", "data": {"run": self.run_id,
                                                                                             "n": n}})
        rec["code"] = code
        if code == 202 and isinstance(body, dict) and body.get("jobId"):
            rec["ok"], rec["job"], rec["outbox"] = True, str(body["jobId"]), body.get("id")
        else:
            rec["ok"], rec["why"] = False, _reason(code, body)

    def _op_http(self, n, rec, state):
        code, body = self._http(state).request("GET", "/pulse/status")
        rec["code"] = code
        rec["ok"] = code == 200
        if not rec["ok"]:
            rec["why"] = _reason(code, body)


def lab_front_url(lab):
    """Where clients go: the load balancer when the lab runs one, else the app."""
    from .common import read_json

    info = read_json(lab.lab_json, {}) or {}
    lb = (info.get("haproxy") or {}).get("url")
    return lb or lab.app_url


# ---------------------------------------------------------------------------------------------------------------
# verification against real state

def _read_keys(lab, keys, timeout=2.0):
    """{key: value or None} for every key whose owner answered; unreadable keys left out."""
    from redis.crc import key_slot

    from . import rediscluster

    _, nodes = rediscluster.view(lab)
    found = {}
    if not nodes or not keys:
        return found
    by_port = {}
    for k in keys:
        owner = rediscluster.slot_owner(nodes, key_slot(k.encode()))
        if owner is not None:
            by_port.setdefault(owner["port"], []).append(k)
    for port, ks in by_port.items():
        try:
            cli = rediscluster.client(port, timeout=timeout)
            for i in range(0, len(ks), 1000):
                chunk = ks[i:i + 1000]
                pipe = cli.pipeline(transaction=False)
                for k in chunk:
                    pipe.get(k)
                for k, v in zip(chunk, pipe.execute(raise_on_error=False)):
                    if not isinstance(v, Exception):
                        found[k] = v
            cli.close()
        except Exception:  # noqa: BLE001 - this master's keys stay unreadable
            continue
    return found


def verify(lab, ledger_path=None, run_id=None):
    """Re-read every acknowledged write, session and job from the real services. Returns
    {"redis": compare, "sessions": compare, "jobs": compare + anchored, "summary": summarize}."""
    from .common import BULL_PREFIX, BULL_QUEUE

    path = ledger_path or os.path.join(lab.dir, "load", "ledger.jsonl")
    recs = [r for r in read_ledger(path) if run_id is None or r.get("run") == run_id]
    want = expected(recs)
    out = {"ledger": path, "summary": summarize(recs)}
    out["redis"] = compare(want["keys"], _read_keys(lab, list(want["keys"])))
    skeys = {"session:%s" % i: True for i in want["sessions"]}
    raw = _read_keys(lab, list(skeys))
    found = {}
    for k, v in raw.items():
        try:
            found[k] = v if v is not None and json.loads(v).get("sessionId") == k.split(":", 1)[1] else None
        except (ValueError, AttributeError):
            found[k] = None
    out["sessions"] = compare(skeys, found)
    # a job is present when its hash still exists (removeOnComplete/removeOnFail are false in the lab)
    jkeys = {"%s:%s:%s" % (BULL_PREFIX, BULL_QUEUE, j): True for j in want["jobs"]}
    jfound = {}
    if jkeys:
        from . import rediscluster
        from redis.crc import key_slot

        _, nodes = rediscluster.view(lab)
        owner = rediscluster.slot_owner(nodes or [], key_slot(BULL_PREFIX.encode()))
        if owner is not None:
            try:
                cli = rediscluster.client(owner["port"], timeout=2.0)
                pipe = cli.pipeline(transaction=False)
                for k in jkeys:
                    pipe.exists(k)
                for k, v in zip(jkeys, pipe.execute(raise_on_error=False)):
                    if not isinstance(v, Exception):
                        jfound[k] = True if v else None
                cli.close()
            except Exception:  # noqa: BLE001
                pass
    out["jobs"] = compare(jkeys, jfound)
    out["jobs"]["anchored"] = _anchored(lab, want["jobs"])
    return out


def _anchored(lab, job_ids):
    """How many of the jobs have a receipt (anchor_receipts.idempotency_key = outbox id = job id); None when the
    database does not answer."""
    if not job_ids:
        return 0
    try:
        import psycopg2

        conn = psycopg2.connect(lab.admin_db_url, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = 5000")
                cur.execute("SELECT count(*) FROM anchor_receipts WHERE idempotency_key = ANY(%s)", (list(job_ids),))
                return cur.fetchone()[0]
        finally:
            conn.close()
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------------------------
# the detached generator of `p3lab load start`

def _paths(lab):
    d = os.path.join(lab.dir, "load")
    return {"dir": d, "pid": os.path.join(d, "load.pid"), "ledger": os.path.join(d, "ledger.jsonl"),
            "log": os.path.join(d, "load.log"), "config": os.path.join(d, "load.json")}


def running_pid(lab):
    from .common import live_pid

    pid = live_pid(_paths(lab)["pid"])
    if not pid:
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return pid if b"_load" in fh.read() else None
    except OSError:
        return None


def cli_start(lab, seconds, rate, streams, max_ops):
    """Start `p3lab _load` detached (a new ledger); returns its config. Refuses when one runs."""
    from .common import REPO, VENV_PY, write_json

    p = _paths(lab)
    if running_pid(lab):
        raise LoadError("a load generator already runs (pid %d): `p3lab load stop` first" % running_pid(lab))
    cfg = {"seconds": seconds, "rate": rate, "streams": list(streams), "max_ops": max_ops,
           "run": uuid.uuid4().hex[:8], "ledger": p["ledger"]}
    Load(lab, seconds=seconds, rate=rate, streams=streams, max_ops=max_ops)  # validate before detaching
    os.makedirs(p["dir"], exist_ok=True)
    if os.path.exists(p["ledger"]):
        os.replace(p["ledger"], p["ledger"] + ".prev")
    write_json(p["config"], cfg)
    with open(p["log"], "ab") as logf:
        proc = subprocess.Popen([VENV_PY, os.path.join(REPO, "lab", "p3lab"), "_load"], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, env=lab.child_env(), cwd=REPO,
                                start_new_session=True, close_fds=True)
    with open(p["pid"], "w") as fh:
        fh.write("%d\n" % proc.pid)
    cfg["pid"] = proc.pid
    return cfg


def load_main(lab):
    """Body of the detached `p3lab _load`: run until the bounds or SIGTERM."""
    from .common import read_json

    p = _paths(lab)
    cfg = read_json(p["config"], {}) or {}
    ld = Load(lab, seconds=cfg.get("seconds", 60), rate=cfg.get("rate", 20), streams=cfg.get("streams", STREAMS),
              max_ops=cfg.get("max_ops", 5000), ledger=p["ledger"], run_id=cfg.get("run"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    ld.start()
    while not stop.is_set() and any(th.is_alive() for th in ld._threads):
        stop.wait(0.2)
    ld.stop()
    return 0


def cli_stop(lab, timeout=15.0):
    from .common import kill, pid_alive, wait_until

    pid = running_pid(lab)
    if pid:
        kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid), timeout, 0.1):
            kill(pid, signal.SIGKILL)
    return {"stopped": bool(pid), "pid": pid}


def cli_report(lab):
    res = verify(lab, _paths(lab)["ledger"])
    res["running"] = running_pid(lab)
    return res
