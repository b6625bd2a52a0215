# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""BullMQ queue state and retries, on a standalone Redis or a Redis Cluster (hash-tagged prefix).

Key layout (BullMQ 5/6): ``<prefix>:<queue>:wait|paused|active`` lists, ``failed|completed|delayed|prioritized|
waiting-children`` sorted sets (failed/completed score = finishedOn ms), ``<prefix>:<queue>:<jobId>`` job hash,
``meta`` hash (``paused``, ``concurrency``), ``stalled`` set, ``events`` stream, ``marker`` sorted set.

Retries run BullMQ's own Lua scripts, read from the installed ``bullmq`` Python package (the same scripts Node's
``Queue.retryJobs()`` and ``Job.retry()`` run): ``moveJobsToWait`` for whole pages, ``reprocessJob`` per job when
filters leave some failed jobs in place. All keys of one queue live in one slot (that is what the hash tag is for),
so every command goes to that slot's master through one short-timeout, no-retry connection.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import json
import os
import re
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, close_quietly, hostport, one_line
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import (
    describe_redis_error,
    key_node_client,
    key_slot,
)

STATES = ["wait", "paused", "active", "delayed", "prioritized", "waiting-children", "failed", "completed"]
LIST_STATES = ("wait", "paused", "active")
SCRIPTS = {"moveJobsToWait": "moveJobsToWait-8.lua", "reprocessJob": "reprocessJob-9.lua"}


# One atomic fast-path step: our job-data check of the page, then BullMQ's own moveJobsToWait, whose text (from the
# installed bullmq package) is pasted verbatim into bullmq_move() below. KEYS and ARGV[1..3] are moveJobsToWait's
# (count, timestamp, state); ours follow: ARGV[4] '1' to check job data, ARGV[5] '1' to return the moved ids,
# ARGV[6..] required data keys. Returns {moved, ids, bad}: when any job of the page is unusable nothing is moved
# (moved = -1) and bad lists {id, problem, ...} of the page; moved is exact (ZCARD before and after, same script).
MOVE_PAGE_HEAD = """
local function bullmq_move()
"""
MOVE_PAGE_TAIL = """
end
local stateKey = KEYS[3]
local ids = {}
if ARGV[4] == '1' or ARGV[5] == '1' then
  ids = redis.call('ZRANGEBYSCORE', stateKey, 0, ARGV[2], 'LIMIT', 0, ARGV[1])
end
if ARGV[4] == '1' then
  local bad = {}
  local call, decode, null, base = redis.call, cjson.decode, cjson.null, KEYS[1]
  local nreq = #ARGV
  for _, id in ipairs(ids) do
    local data = call('HGET', base .. id, 'data')
    local problem = false
    if not data then
      problem = 'job hash missing or without data'
    else
      local ok, obj = pcall(decode, data)
      if not ok then
        problem = 'data is not JSON'
      elseif type(obj) ~= 'table' or obj[1] ~= nil then
        problem = 'data is not a JSON object'
      else
        for j = 6, nreq do
          local v = obj[ARGV[j]]
          if v == nil or v == '' or v == null then
            problem = 'data lacks ' .. ARGV[j]
            break
          end
        end
      end
    end
    if problem then
      bad[#bad + 1] = id
      bad[#bad + 1] = problem
    end
  end
  if #bad > 0 then
    return {-1, {}, bad}
  end
end
local before = redis.call('ZCARD', stateKey)
bullmq_move()
local moved = before - redis.call('ZCARD', stateKey)
if ARGV[5] ~= '1' then
  ids = {}
end
return {moved, ids, {}}
"""


def now_ms():
    return int(time.time() * 1000)


def validate_names(queue, prefix):
    if not queue or not str(queue).strip():
        raise P3Error("queue must not be empty")
    if not prefix or not str(prefix).strip():
        raise P3Error("prefix must not be empty")
    for name, value in (("queue", queue), ("prefix", prefix)):
        if any(c.isspace() for c in str(value)):
            raise P3Error("%s %r contains white space" % (name, value))


def decode_job_data(raw, required_keys=()):
    """(data dict, problem) for a job hash's ``data`` field; problem is None when it is usable."""
    if raw is None:
        return None, "job hash missing or without data"
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as e:
        return None, "data is not JSON (%s)" % one_line(e, 80)
    if not isinstance(data, dict):
        return None, "data is not a JSON object"
    missing = [k for k in required_keys or () if data.get(k) in (None, "")]
    if missing:
        return data, "data lacks %s" % ", ".join(missing)
    return data, None


def group_reasons(reasons, limit=10):
    """[(reason, finished_ms)] -> [{reason, count, latest_ms}] most frequent first (pure)."""
    groups = {}
    for reason, finished in reasons:
        text = one_line(reason if reason is not None else "(no failedReason)", 300)
        g = groups.setdefault(text, {"reason": text, "count": 0, "latest_ms": None})
        g["count"] += 1
        if finished is not None and (g["latest_ms"] is None or finished > g["latest_ms"]):
            g["latest_ms"] = finished
    out = sorted(groups.values(), key=lambda g: (-g["count"], g["reason"]))
    return out[:limit]


def load_script(name):
    """Text of one of BullMQ's Lua scripts, from the installed bullmq package (never imported: only its files)."""
    import importlib.util
    spec = importlib.util.find_spec("bullmq")
    if spec is None or not spec.submodule_search_locations:
        raise P3Error("the bullmq Python package is required for BullMQ's retry scripts (pip install bullmq)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "commands", SCRIPTS[name])
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError) as e:
        raise P3Error("cannot read BullMQ script %s: %s" % (path, one_line(e, 160)))


class BullQueue(object):
    """One BullMQ queue on the master that serves its keys."""

    def __init__(self, settings, queue, prefix):
        validate_names(queue, prefix)
        self.settings = settings
        self.queue = queue
        self.prefix = prefix
        self.base = "%s:%s:" % (prefix, queue)
        self.display = "%s%s" % (self.base, "*")
        self.client = None
        self.address = None
        self.cluster = False
        self._sha = {}

    # -- keys
    def key(self, name):
        return self.base + name

    def job_key(self, job_id):
        return self.base + str(job_id)

    # -- connection
    def connect(self):
        """Connect to the node that serves the queue's keys (the slot's master on a cluster)."""
        try:
            client, owner, self.cluster = key_node_client(self.settings, self.key("wait"))
        except P3Error as e:
            raise P3Error("queue %s: %s" % (self.display, e.msg))
        slot = key_slot(self.key("wait"))
        if self.cluster and any(key_slot(self.key(s)) != slot for s in ("failed", "meta", "1")):
            close_quietly(client)
            raise P3Error(
                "prefix %r is not hash-tagged: on a Redis Cluster the keys of queue %r fall in different slots "
                "(BullMQ needs one slot per queue, e.g. prefix '{%s}')" % (self.prefix, self.queue,
                                                                           self.prefix.strip("{}")))
        self.client, self.address = client, hostport(*owner)
        return self

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None

    def fail(self, exc, doing):
        """A P3Error naming the node, the queue and the cause."""
        if isinstance(exc, P3Error):
            return exc
        return P3Error("%s on %s (queue %s) failed: %s" % (doing, self.address, self.display,
                                                           describe_redis_error(exc, self.settings)))

    # -- reads
    def counts(self):
        pipe = self.client.pipeline(transaction=False)
        types = {}
        for state in STATES:
            k = self.key(state)
            pipe.type(k)
        for state in STATES:
            k = self.key(state)
            if state in LIST_STATES:
                pipe.llen(k)
            else:
                pipe.zcard(k)
        pipe.hmget(self.key("meta"), "paused", "concurrency")
        pipe.scard(self.key("stalled"))
        try:
            res = pipe.execute(raise_on_error=False)
        except Exception as e:
            raise self.fail(e, "reading counts")
        n = len(STATES)
        wrong = []
        for i, state in enumerate(STATES):
            types[state] = res[i]
            want = "list" if state in LIST_STATES else "zset"
            if res[i] not in ("none", want):
                wrong.append("%s is a %s, not a %s" % (self.key(state), res[i], want))
        if wrong:
            raise P3Error("queue %s on %s is not a BullMQ queue: %s" % (self.display, self.address, "; ".join(wrong)))
        for r in res:
            if isinstance(r, Exception):
                raise self.fail(r, "reading counts")
        counts = dict((state, int(res[n + i])) for i, state in enumerate(STATES))
        meta = res[2 * n]
        return counts, dict(paused=meta[0] is not None, concurrency=int(meta[1]) if meta[1] else None,
                            stalled=int(res[2 * n + 1]))

    def oldest_waiting(self):
        """(job id, age in s) of the oldest job in wait (LPUSH: the tail), or (None, None)."""
        try:
            for idx in (-1, -2):
                job_id = self.client.lindex(self.key("wait"), idx)
                if job_id is None:
                    return None, None
                if not str(job_id).startswith("0:"):  # a v4 marker, not a job
                    break
            ts = self.client.hget(self.job_key(job_id), "timestamp")
        except Exception as e:
            raise self.fail(e, "reading the oldest waiting job")
        try:
            age = max(0.0, (now_ms() - int(float(ts))) / 1000.0) if ts is not None else None
        except ValueError:
            age = None
        return job_id, age

    def failed_sample(self, sample, required_keys=()):
        """The sample most recent failed jobs: reasons grouped, malformed ones listed."""
        try:
            ids = self.client.zrevrange(self.key("failed"), 0, max(sample, 1) - 1) if sample > 0 else []
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.job_key(job_id), "failedReason", "finishedOn", "data")
            rows = pipe.execute() if ids else []
        except Exception as e:
            raise self.fail(e, "reading failed jobs")
        reasons, malformed = [], []
        for job_id, (reason, finished, data) in zip(ids, rows):
            reasons.append((reason, _int(finished)))
            _data, problem = decode_job_data(data, required_keys)
            if problem:
                malformed.append({"id": job_id, "problem": problem})
        return dict(sampled=len(ids), reasons=group_reasons(reasons), malformed=malformed)

    def active_without_lock(self, limit=1000):
        try:
            ids = self.client.lrange(self.key("active"), 0, limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(self.job_key(job_id) + ":lock")
            locks = pipe.execute() if ids else []
        except Exception as e:
            raise self.fail(e, "reading active jobs")
        return [j for j, has in zip(ids, locks) if not has]

    def active_ids(self, limit=1000):
        try:
            return [j.decode() if isinstance(j, bytes) else str(j)
                    for j in self.client.lrange(self.key("active"), 0, limit - 1)]
        except Exception as e:
            raise self.fail(e, "reading active jobs")

    def still_active(self, ids):
        """The ids of ids still in the active list: one pipeline of LPOS, one per id (not the whole list)."""
        if not ids:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.lpos(self.key("active"), job_id)
            found = pipe.execute()
        except Exception as e:
            raise self.fail(e, "reading active jobs")
        return [j for j, pos in zip(ids, found) if pos is not None]

    def wait_active_done(self, seconds, poll=0.5, sleep=time.sleep, clock=time.monotonic):
        """Wait, at most `seconds` in total, until none of the jobs active NOW is active any more (jobs taken later
        are not waited for: this is the "requests in flight" of the queue before a worker's stop). The active list
        is read once; each poll asks only whether those jobs still are in it (still_active).
        Returns {jobs (how many were active), still_active (ids, first 20), seconds (waited), gave_up}."""
        start = clock()
        first = self.active_ids()
        left = list(first)
        while left:
            if clock() - start >= seconds:
                break
            sleep(min(poll, max(seconds - (clock() - start), 0)))
            left = self.still_active(left)
        return dict(jobs=len(first), still_active=left[:20], seconds=round(clock() - start, 3),
                    gave_up=bool(left))

    def worker_clients(self):
        """This queue's worker connections on the node that serves its keys - where a BullMQ worker's blocking
        connection waits on the queue's marker - as CLIENT LIST shows them (BullMQ names them with CLIENT SETNAME):
        [{name, flags, cmd, qbuf, idle}], None when CLIENT LIST is not allowed."""
        qualified = "%s:%s" % (self.prefix, self.queue)
        b64 = "%s:%s" % (self.prefix, base64.b64encode(self.queue.encode()).decode())
        try:
            clients = self.client.client_list()
        except Exception as e:
            text = str(e)
            if "unknown command" in text.lower() or "NOPERM" in text:
                return None
            raise self.fail(e, "CLIENT LIST")
        out = []
        for c in clients:
            name = c.get("name") or ""
            if any(name == q or name.startswith(q + ":w:") for q in (qualified, b64)):
                out.append(dict(name=name, flags=str(c.get("flags") or ""), cmd=c.get("cmd"),
                                qbuf=_int(c.get("qbuf")) or 0, idle=_int(c.get("idle"))))
        return out

    def worker_names(self):
        """Names of the connections of this queue's workers on the node (None when CLIENT LIST is not allowed)."""
        clients = self.worker_clients()
        return None if clients is None else [c["name"] for c in clients]

    def jobs(self, ids, fields=("data", "failedReason", "finishedOn", "processedOn")):
        """State and fields of the given jobs: [{id, state, data, ...}] (state from the sets, not guessed)."""
        out = []
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.job_key(job_id), *fields)
                pipe.zscore(self.key("completed"), job_id)
                pipe.zscore(self.key("failed"), job_id)
                pipe.zscore(self.key("delayed"), job_id)
                pipe.lpos(self.key("wait"), job_id)
                pipe.lpos(self.key("active"), job_id)
            res = pipe.execute() if ids else []
        except Exception as e:
            raise self.fail(e, "reading jobs")
        for i, job_id in enumerate(ids):
            vals, completed, failed, delayed, wait, active = res[6 * i:6 * i + 6]
            rec = dict(zip(fields, vals))
            if all(v is None for v in vals):
                state = "missing"
            elif completed is not None:
                state = "completed"
            elif failed is not None:
                state = "failed"
            elif active is not None:
                state = "active"
            elif wait is not None:
                state = "wait"
            elif delayed is not None:
                state = "delayed"
            else:
                state = "unknown"
            data, problem = decode_job_data(rec.get("data"))
            rec.update(id=job_id, state=state, data=data if data is not None else rec.get("data"), problem=problem)
            out.append(rec)
        return out

    # -- retry
    def _script(self, name):
        if name not in self._sha:
            text = load_script(name)
            try:
                self._sha[name] = (self.client.script_load(text), text)
            except Exception as e:
                raise self.fail(e, "SCRIPT LOAD %s" % name)
        return self._sha[name]

    def _move_script(self):
        """sha of the fast-path step: our page check + BullMQ's moveJobsToWait text, verbatim."""
        if "move_page" not in self._sha:
            text = MOVE_PAGE_HEAD + load_script("moveJobsToWait") + MOVE_PAGE_TAIL
            try:
                self._sha["move_page"] = (self.client.script_load(text), text)
            except Exception as e:
                raise self.fail(e, "SCRIPT LOAD moveJobsToWait")
        return self._sha["move_page"][0]

    def _move_pages(self, state, cutoff, page_size, limit, validate, required_keys, ids_room, window=2, progress=None):
        """BullMQ's retryJobs loop (moveJobsToWait, page after page, from the head of the state set up to cutoff),
        each page checked first in the same atomic script, with up to window calls in flight on one connection so
        the server never waits for a round trip (each call is still its own script: other clients get the server
        between two pages). Never asks for more than limit jobs in total, counting calls still in flight.

        Returns (moved, ids (at most ids_room), pages, stopped_on_bad). progress (a dict), when given, counts the
        jobs moved so far in C(moved) as the pages come back, so a later error still knows what was done."""
        sha = self._move_script()
        keys = [self.base, self.key("events"), self.key(state), self.key("wait"), self.key("paused"),
                self.key("meta"), self.key("active"), self.key("marker")]
        extra = ["1" if validate else "0"]
        tail = list(required_keys or ())
        conn = self.client.connection_pool.get_connection()
        inflight = []  # counts asked for, oldest first
        moved, ids, pages, asked, done, bad_seen = 0, [], 0, 0, False, False
        try:
            while True:
                while not done and len(inflight) < window and asked < limit:
                    n = int(min(page_size, limit - asked))
                    want = "1" if ids_room - len(ids) - sum(inflight) > 0 else "0"
                    conn.send_command("EVALSHA", sha, len(keys), *(keys + [n, cutoff, state] + extra + [want] + tail))
                    inflight.append(n)
                    asked += n
                if not inflight:
                    break
                n = inflight.pop(0)
                res = conn.read_response()  # raises an error reply (ResponseError)
                got, page_ids, _bad = int(res[0]), res[1], res[2]
                pages += 1
                if got < 0:  # malformed job at the head: nothing moved; the caller reads the page job by job
                    done = bad_seen = True
                    asked -= n
                    continue
                moved += got
                if progress is not None:
                    progress["moved"] = progress.get("moved", 0) + got
                asked -= n - got
                room = ids_room - len(ids)
                if room > 0 and page_ids:
                    ids.extend(x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in page_ids[:room])
                if got < n:  # the state set has no more candidates
                    done = True
        except BaseException:
            conn.disconnect()  # replies still in flight: never hand this connection back to the pool
            raise
        finally:
            self.client.connection_pool.release(conn)
        return moved, ids, pages, bad_seen

    def _reprocess(self, state, jobs):
        """Job.retry() for each (id, lifo) via reprocessJob; returns (moved, without job hash, gone) id lists."""
        sha, _text = self._script("reprocessJob")
        pipe = self.client.pipeline(transaction=False)
        for job_id, lifo in jobs:
            keys = [self.job_key(job_id), self.key("events"), self.key(state), self.key("wait"), self.key("meta"),
                    self.key("active"), self.key("marker"), self.key("prioritized"), self.key("pc")]
            args = [job_id, "RPUSH" if lifo else "LPUSH", "failedReason" if state == "failed" else "returnvalue",
                    state, "0", "0"]
            pipe.evalsha(sha, len(keys), *(keys + args))
        res = pipe.execute(raise_on_error=False)
        moved, no_hash, gone = [], [], []
        for (job_id, _lifo), r in zip(jobs, res):
            if isinstance(r, Exception):
                raise self.fail(r, "reprocessJob %s" % job_id)
            # 1 moved; -1 no job hash (the id stays in the set); -3 no longer in the set (someone else moved it)
            (moved if r == 1 else no_hash if r == -1 else gone).append(job_id)
        return moved, no_hash, gone

    def retry(self, state="failed", reason_pattern=None, min_age_seconds=0, max_jobs=None, page_size=1000,
              required_keys=(), validate=True, check_mode=False, ids_limit=1000, clock=now_ms):
        """Retry jobs of state (failed or completed) the BullMQ way. Memory is one page, whatever the job count.

        Returns dict(matched, retried, skipped_reason, malformed (list, capped), malformed_count, vanished, ids
        (capped at ids_limit), ids_truncated, pages, elapsed_ms, cutoff_ms).
        """
        if state not in ("failed", "completed"):
            raise P3Error("state must be failed or completed, got %r" % state)
        pattern = None
        if reason_pattern:
            try:
                pattern = re.compile(reason_pattern)
            except re.error as e:
                raise P3Error("reason_pattern %r is not a valid regular expression: %s" % (reason_pattern, e))
        t0 = time.monotonic()
        cutoff = clock() - int(float(min_age_seconds or 0) * 1000)
        remaining = max_jobs if max_jobs is not None else float("inf")
        out = dict(matched=0, retried=0, skipped_reason=0, malformed=[], malformed_count=0, vanished=0, ids=[],
                   ids_truncated=False, pages=0, cutoff_ms=cutoff)
        offset = 0  # failed jobs left in place at the head of the range (filtered out or malformed)
        fast_done = False
        try:
            while remaining > 0:
                n = int(min(page_size, remaining))
                room = ids_limit - len(out["ids"])
                if pattern is None and offset == 0 and not check_mode and not fast_done:
                    # Fast path: whole pages through BullMQ's moveJobsToWait, each checked first on the server.
                    progress = {}
                    try:
                        moved_n, moved, pages, bad_seen = self._move_pages(
                            state, cutoff, page_size, remaining, validate, required_keys, max(room, 0),
                            progress=progress)
                    except Exception:
                        out["retried"] += progress.get("moved", 0)
                        out["matched"] += progress.get("moved", 0)
                        raise
                    out["pages"] += pages
                    out["matched"] += moved_n
                    out["retried"] += moved_n
                    remaining -= moved_n
                    out["ids"].extend(moved)
                    if moved_n > len(moved):
                        out["ids_truncated"] = True
                    if not bad_seen:
                        break
                    fast_done = True  # a malformed job at the head: from here on, page by page
                    continue
                # Slow path: read each job (reason filter, malformed jobs at the head, check mode).
                page = self.client.zrangebyscore(self.key(state), 0, cutoff, start=offset, num=n)
                if not page:
                    break
                out["pages"] += 1
                good, keep = [], 0
                pipe = self.client.pipeline(transaction=False)
                for job_id in page:
                    pipe.hmget(self.job_key(job_id), "failedReason", "data", "opts")
                rows = pipe.execute()
                for job_id, (reason, data, opts) in zip(page, rows):
                    if pattern is not None and not pattern.search(reason or ""):
                        out["skipped_reason"] += 1
                        keep += 1
                        continue
                    if validate:
                        _d, problem = decode_job_data(data, required_keys)
                        if problem:
                            out["malformed_count"] += 1
                            if len(out["malformed"]) < 100:
                                out["malformed"].append({"id": job_id, "problem": problem})
                            keep += 1
                            continue
                    good.append((job_id, _lifo(opts)))
                out["matched"] += len(good)
                if check_mode:
                    moved = [j for j, _l in good]
                    offset += len(page)
                else:
                    moved, no_hash, gone = self._reprocess(state, good) if good else ([], [], [])
                    out["vanished"] += len(no_hash) + len(gone)
                    offset += keep + len(no_hash)
                out["retried"] += len(moved)
                remaining -= len(moved) if not check_mode else len(good)
                if room > 0:
                    out["ids"].extend(moved[:room])
                if len(moved) > max(room, 0):
                    out["ids_truncated"] = True
        except Exception as e:  # pylint: disable=broad-except
            err = self.fail(e, "retry")
            if check_mode or not out["retried"]:
                raise err
            # Jobs already moved stay moved: the failure says so (changed survives a later failure).
            out["elapsed_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
            details = dict(err.details)
            details.update(out, changed=True)
            raise P3Error("%s (after moving %d %s job(s) to wait)" % (err.msg, out["retried"], state), **details)
        out["elapsed_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
        if check_mode:
            out["would_retry"] = out.pop("retried")
            out["retried"] = 0
        return out


def read_queue(settings, queue, prefix, failed_sample=1000, required_data_keys=(), sample_seconds=0, job_ids=(),
               sleep=time.sleep, stuck_wait_seconds=None, wait_active_seconds=0):
    """Read one queue's state on the node that serves it: {base, counts, extra, error, fatal}. base holds reachable,
    node, cluster, keys; extra the evidence queue_verdict judges (paused, concurrency, stalled, oldest waiting job,
    failed reasons, malformed, active without lock, worker_connections, worker_clients, worker_stuck (see
    worker_takes_no_job), progress, jobs, and with wait_active_seconds active_wait (see BullQueue.wait_active_done,
    done before the rest is read)). error is the one-line cause
    when the queue could not be read; fatal marks bad input (a prefix that is not hash-tagged on a cluster, keys
    that are not a BullMQ queue) rather than an unreachable service."""
    q = BullQueue(settings, queue, prefix)
    base = dict(reachable=False, node=None, cluster=None, keys=q.display)
    out = dict(base=base, counts=None, extra=None, error=None, fatal=False)
    try:
        q.connect()
    except P3Error as e:
        out.update(error=e.msg, fatal="hash-tagged" in e.msg)
        return out
    base.update(reachable=True, node=q.address, cluster=q.cluster)
    active_wait = None
    try:
        if wait_active_seconds > 0:
            active_wait = q.wait_active_done(wait_active_seconds, sleep=sleep)
        counts, meta = q.counts()
        extra = dict(meta)
        extra["oldest_wait_job"], age = q.oldest_waiting()
        extra["oldest_wait_age_seconds"] = round(age, 3) if age is not None else None
        sample = q.failed_sample(failed_sample, required_data_keys)
        extra["failed_reasons"] = sample["reasons"]
        extra["failed_sampled"] = sample["sampled"]
        extra["malformed"] = sample["malformed"]
        extra["active_without_lock"] = q.active_without_lock()
        clients = q.worker_clients()
        extra["worker_connections"] = None if clients is None else len(clients)
        extra["worker_clients"] = clients
        if sample_seconds > 0:
            sleep(sample_seconds)
            after, _meta = q.counts()
            w0 = counts["wait"] + counts["paused"] + counts["prioritized"]
            w1 = after["wait"] + after["paused"] + after["prioritized"]
            f0 = counts["failed"] + counts["completed"]
            f1 = after["failed"] + after["completed"]
            extra["progress"] = dict(seconds=sample_seconds, waiting_before=w0, waiting_after=w1,
                                     finished_before=f0, finished_after=f1,
                                     stuck=w1 > 0 and w1 >= w0 and f1 <= f0)
            counts = after
        extra["jobs"] = q.jobs(list(job_ids)) if job_ids else []
    except P3Error as e:
        base["reachable"] = False
        out.update(error=e.msg, fatal="not a BullMQ queue" in e.msg)
        return out
    finally:
        q.close()
    extra["counts"] = counts
    extra["waiting"] = counts["wait"] + counts["paused"] + counts["prioritized"]
    extra["worker_stuck"] = worker_takes_no_job(counts, extra, stuck_wait_seconds)
    if active_wait is not None:
        extra["active_wait"] = active_wait
    out.update(counts=counts, extra=extra)
    return out


def worker_takes_no_job(counts, extra, stuck_wait_seconds=None):
    """Why the queue's workers, though connected, take no job - or None (pure). Two signs:
    - every worker connection blocked in a command (CLIENT LIST flag b) has another command queued behind it (qbuf >
      0): its client gave up on the blocking call and sent the next one, so the marker of the next job is popped by a
      command nobody reads and the job stays waiting. P3's worker does this once it has idled: ioredis
      commandTimeout 5000 on its connection, BullMQ's drainDelay 5 s (docs/runbook-deviations.md);
    - with stuck_wait_seconds: a job has waited longer than that while a worker is connected and none is active."""
    clients = extra.get("worker_clients") or []
    blocked = [c for c in clients if "b" in (c.get("flags") or "")]
    behind = [c for c in blocked if (c.get("qbuf") or 0) > 0]
    if blocked and len(behind) == len(blocked):
        return ("worker connected but takes no job: %s blocked in %s with %d bytes of commands queued behind it (its "
                "client gave up on the blocking call, so a new job's marker goes to a command nobody reads)" % (
                    ", ".join(sorted(set(c["name"] for c in behind))), behind[0].get("cmd") or "a blocking command",
                    sum(c["qbuf"] for c in behind)))
    age = extra.get("oldest_wait_age_seconds")
    if (stuck_wait_seconds is not None and clients and counts.get("active", 0) == 0 and age is not None
            and age > stuck_wait_seconds):
        return "worker connected but takes no job: the oldest waiting job is %ds old > %ss and none is active" % (
            age, stuck_wait_seconds)
    return None


def _lifo(opts):
    if not opts:
        return False
    try:
        return bool(json.loads(opts).get("lifo"))
    except (TypeError, ValueError, AttributeError):
        return False


def _int(value):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def queue_verdict(counts, extra, thresholds):
    """Healthy or not, and why, from the counts and evidence (pure). thresholds: max_waiting, max_failed,
    max_wait_age_seconds, require_worker, max_stalled."""
    problems = []
    waiting = counts["wait"] + counts["paused"] + counts["prioritized"]
    if waiting > thresholds["max_waiting"]:
        problems.append("%d jobs waiting > %d" % (waiting, thresholds["max_waiting"]))
    if counts["failed"] > thresholds["max_failed"]:
        top = extra.get("failed_reasons") or []
        problems.append("%d failed > %d%s" % (counts["failed"], thresholds["max_failed"],
                                              (" (top: %s x%d)" % (one_line(top[0]["reason"], 120), top[0]["count"]))
                                              if top else ""))
    age = extra.get("oldest_wait_age_seconds")
    if age is not None and thresholds.get("max_wait_age_seconds") is not None and age > thresholds["max_wait_age_seconds"]:
        problems.append("oldest waiting job is %ds old > %ds" % (age, thresholds["max_wait_age_seconds"]))
    if extra.get("paused"):
        problems.append("queue is paused")
    workers = extra.get("worker_connections")
    if thresholds.get("require_worker") and waiting > 0 and workers is not None and workers == 0:
        problems.append("no worker connected")
    # BullMQ's own test of a stalled job: active and its lock gone. The stalled set only marks every job that was
    # active at BullMQ's last stalled check (a job's next lock renewal or its end removes the mark), so it is not
    # empty under ordinary traffic: evidence, never counted here.
    stalled = len(extra.get("active_without_lock") or [])
    if stalled > thresholds.get("max_stalled", 0):
        problems.append("%d stalled jobs" % stalled)
    progress = extra.get("progress")
    if progress and progress.get("stuck"):
        problems.append("backlog not draining (%d waiting, none finished in %ss)" % (waiting, progress["seconds"]))
    if problems:
        return False, "; ".join(problems)
    return True, "%d waiting, %d active, %d failed, %d completed%s" % (
        waiting, counts["active"], counts["failed"], counts["completed"],
        "" if workers is None else ", %d worker connection%s" % (workers, "" if workers == 1 else "s"))
