# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Session keyspace plumbing of p3.recovery (runbook scenario 1, Session Bridge Failure): the validation rule,
the SCAN census over every master, the selective non-blocking purge with a backup, and the restore.

Never KEYS. The purge works every master at once, write-ahead (see the Purge section): a read-only Lua script per
SCAN page (value or DUMP, PTTL; bounded by scan_count), the chosen keys' backup lines written and fsynced, then a
compare-and-delete script removes exactly those keys, each only if it is still what was read (LUA_TAKE). One SCAN
cursor per master: correct on every server version (Redis >= 7.4 and Valkey 8 put the cluster slot in the
cursor's low bits). Mode corrupt judges values in Python with Judge (the rule of classify(), the census's too).

Backup format (JSON lines, file mode 0600; a line is on disk before its key is removed): a header line
  {"format": "p3.recovery.redis-dump", "version": 1, "created": ISO, "pattern": ..., "mode": ..., "source": [...]}
then one line per key chosen for removal (a key that changed before its compare-and-delete stays, its line too):
  {"key": base64, "value": base64 (strings) | "dump": base64 DUMP payload (other types), "pttl": ms or -1,
   "expire_at_ms": absolute server ms or null, "node": "host:port", "reason": "not-json" | ... | "all"}
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import binascii
import collections
import datetime
import json
import math
import os
import threading
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    DeadlineExceeded, P3Error, num_text, one_line, utc_timestamp)
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import (
    HAS_REDIS,
    describe_redis_error,
    key_slot,
    node_client,
    parse_address,
    probe_nodes,
    summarize,
)

BACKUP_FORMAT = "p3.recovery.redis-dump"
BACKUP_VERSION = 1
DEFAULT_FIELDS = ["sessionId", "deviceId", "createdAt", "expiresAt"]
REASONS = ("wrong-type", "not-utf8", "not-json", "not-object", "missing-fields", "bad-expiry", "expired", "no-ttl")
MAX_SCAN_COUNT = 10000
MAX_DEPTH = 1000  # JSON nesting deeper than this is not JSON (Redis' cjson refuses it too)

SESSION_ARGUMENT_SPEC = dict(
    pattern=dict(type="str", default="session:*"),
    required_fields=dict(type="list", elements="str", default=list(DEFAULT_FIELDS)),
    expiry_field=dict(type="str", default="expiresAt"),
    require_ttl=dict(type="bool", default=True),
    scan_count=dict(type="int", default=100),
)

# The purge's two scripts (Lua), on two connections per master. Neither ever runs KEYS; both start and end with TIME:
# the reply carries the server's clock (the backup's absolute expiries are that clock + PTTL) and how long the call
# held the server (max_page_ms). On a standalone server keys are read with MGET and removed with UNLINK in chunks of
# 1000 (the unpack() limit); a cluster node refuses multi-key commands across slots inside a script, so there
# (ARGV[1] = '0') it is one GET / UNLINK per key.
#
# LUA_READ (read only): SCANs one page itself (SCAN <cursor> MATCH <pattern> COUNT <count>, so the server-side work
# of a call is bounded by COUNT) and returns each key's value (MGET; DUMP for a key that is not a string) and PTTL.
# LUA_TAKE (compare-and-delete): removes each given key only if it is still exactly what LUA_READ returned (the
# same value or DUMP payload; flag 't' also: still no TTL). The purge sends it only for keys whose backup lines are
# on disk (written and fsynced): a key is never removed before its backup is durable.

_LUA_BATCH = """
local batch = ARGV[1] == '1'
local function mget(keys, s, e)
  if batch then return redis.call('MGET', unpack(keys, s, e)) end
  local out = {}
  for i = s, e do
    local v = redis.pcall('GET', keys[i])
    if type(v) == 'table' then v = false end
    out[i - s + 1] = v
  end
  return out
end
local function unlink(keys)
  if #keys == 0 then return end
  if batch then
    for s = 1, #keys, 1000 do redis.call('UNLINK', unpack(keys, s, math.min(#keys, s + 999))) end
  else
    for i = 1, #keys do redis.call('UNLINK', keys[i]) end
  end
end
"""

# ARGV: batch (1 standalone / 0 cluster), cursor, pattern, count.
# Returns {cursor, server_ms, busy_us, keys, values (false when not a string or gone), types ('' = all strings, the
# common page; else one char per key: 's' string | 'd' another type, its DUMP payload in dumps | '-' gone),
# dumps, pttls}.
LUA_READ = _LUA_BATCH + """
local call = redis.call
local t0 = call('TIME')
local page = call('SCAN', ARGV[2], 'MATCH', ARGV[3], 'COUNT', ARGV[4])
local keys = page[2]
local n, vals, ttls, dumps, types = #keys, {}, {}, {}, ''
if n > 0 and n <= 1000 then
  vals = mget(keys, 1, n)
else
  for s = 1, n, 1000 do
    local got = mget(keys, s, math.min(n, s + 999))
    for i = 1, #got do vals[s + i - 1] = got[i] end
  end
end
local odd = false
for i = 1, n do
  if not vals[i] then odd = true break end
end
if odd then
  local tys = {}
  for i = 1, n do
    local ty = 's'
    if not vals[i] then
      ty = '-'
      local d = call('DUMP', keys[i])
      if d then ty, dumps[#dumps + 1] = 'd', d end
    end
    tys[i] = ty
  end
  types = table.concat(tys)
end
for i = 1, n do ttls[i] = call('PTTL', keys[i]) end
local t1 = call('TIME')
return {page[1], t0[1] * 1000 + math.floor(t0[2] / 1000), (t1[1] - t0[1]) * 1000000 + t1[2] - t0[2],
        keys, vals, types, dumps, ttls}
"""

# ARGV: batch, flags (one char per key: 'v' value, 't' value and still no TTL, 'd' DUMP payload), then per key:
# key, the value or DUMP payload read.
# Returns {server_ms, busy_us, outcome}: one char per key, 'r' removed | '-' already gone | 'k' changed, kept.
# Idempotent: the purge sends it again to resolve a call whose reply it did not get.
LUA_TAKE = _LUA_BATCH + """
local call = redis.call
local t0 = call('TIME')
local flags, keys, want = ARGV[2], {}, {}
local n = (#ARGV - 2) / 2
for i = 1, n do keys[i], want[i] = ARGV[1 + 2 * i], ARGV[2 + 2 * i] end
local vals = {}
for s = 1, n, 1000 do
  local got = mget(keys, s, math.min(n, s + 999))
  for i = 1, #got do vals[s + i - 1] = got[i] end
end
local out, gone = {}, {}
for i = 1, n do
  local k, flag, v, r = keys[i], string.byte(flags, i), vals[i], 'k'
  if flag == 100 then  -- 'd'
    local d = call('DUMP', k)
    if not d then r = '-' elseif d == want[i] then r = 'r' end
  elseif v == want[i] then
    if flag ~= 116 or call('PTTL', k) == -1 then r = 'r' end  -- 't'
  elseif not v and call('EXISTS', k) == 0 then
    r = '-'
  end
  if r == 'r' then gone[#gone + 1] = k end
  out[i] = r
end
unlink(gone)
local t1 = call('TIME')
return {t0[1] * 1000 + math.floor(t0[2] / 1000), (t1[1] - t0[1]) * 1000000 + t1[2] - t0[2], table.concat(out)}
"""

# ---------------------------------------------------------------------------------------------------------------
# Validation (pure)
# ---------------------------------------------------------------------------------------------------------------


def parse_time_ms(value):
    """An expiry as ms since the epoch: numbers (ms, or seconds when < 1e11), numeric strings, ISO 8601 strings.
    None when it cannot be read."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        num = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            num = float(text)
        except ValueError:
            try:
                dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=datetime.timezone.utc)
            return int(dt.timestamp() * 1000)
    else:
        return None
    if math.isnan(num) or math.isinf(num):
        return None
    return int(num * 1000) if abs(num) < 1e11 else int(num)


def _depth(text):
    """Deepest nesting of JSON arrays/objects in text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def classify(raw, pttl, required_fields=None, expiry_field="expiresAt", require_ttl=True, now_ms=None):
    """Why a session value is corrupt, or None when it is valid.

    raw: the GET reply (bytes/str), or an Exception (WRONGTYPE: not a string). pttl: PTTL reply (-1 = no TTL).
    Corrupt = not a string, not UTF-8, not JSON, not a JSON object, a required field missing, the expiry field
    unreadable or in the past, or (require_ttl) no TTL.
    """
    if isinstance(raw, Exception):
        return "wrong-type"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "not-utf8"
    if (raw.count("[") + raw.count("{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH):
        return "not-json"  # as Redis' cjson (decode_max_depth 1000), whatever Python's recursion limit
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return "not-json"
    if not isinstance(obj, dict):
        return "not-object"
    fields = DEFAULT_FIELDS if required_fields is None else required_fields
    if any(f not in obj for f in fields):
        return "missing-fields"
    if expiry_field:
        expires = parse_time_ms(obj.get(expiry_field))
        if expires is None:
            return "bad-expiry"
        if expires <= (now_ms if now_ms is not None else int(time.time() * 1000)):
            return "expired"
    if require_ttl and isinstance(pttl, int) and pttl == -1:
        return "no-ttl"
    return None


_SCAN_ONCE = json.JSONDecoder().scan_once  # what json.loads() runs, without its checks around it
_EXACT_INT = 2 ** 53  # integers below this are exact as floats: parse_time_ms() needs no float for them


class Judge(object):
    """classify() with the options bound, for many values: the common case - a UTF-8 JSON object starting at the
    first byte and ending at the last, not nested deeper than MAX_DEPTH, with an integer expiry - is judged here
    without json.loads()'s extra steps; anything else (whitespace around, a BOM, not JSON, deep, another expiry
    type) goes to classify() itself. Same answer as classify() for every value (unit-tested): the census and the
    purge both use it."""

    def __init__(self, required_fields=None, expiry_field="expiresAt", require_ttl=True):
        self.kw = dict(required_fields=required_fields, expiry_field=expiry_field, require_ttl=require_ttl)
        self.fields = tuple(DEFAULT_FIELDS if required_fields is None else required_fields)
        self.expiry_field = expiry_field
        self.require_ttl = require_ttl

    def __call__(self, raw, pttl, now_ms):
        """The reason raw is corrupt, or None (classify()'s answer)."""
        for dummy, reason in self.page((raw,), (pttl,), now_ms):
            return reason
        return None

    def page(self, values, pttls, now_ms):
        """(index, reason) of every corrupt value of a page (values: GET replies; pttls: PTTL replies)."""
        fields, efield, require_ttl, kw = self.fields, self.expiry_field, self.require_ttl, self.kw
        scan_once, exact_int = _SCAN_ONCE, _EXACT_INT
        out = []
        for i, raw, pttl in zip(range(len(values)), values, pttls):
            if not isinstance(raw, bytes):
                reason = classify(raw, pttl, now_ms=now_ms, **kw)
            else:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    out.append((i, "not-utf8"))
                    continue
                if len(text) > MAX_DEPTH and text.count("[") + text.count("{") > MAX_DEPTH:
                    reason = classify(raw, pttl, now_ms=now_ms, **kw)
                else:
                    try:
                        obj, end = scan_once(text, 0)
                    except (StopIteration, ValueError, RecursionError):
                        obj = end = None
                    if end != len(text) or not isinstance(obj, dict):
                        reason = classify(raw, pttl, now_ms=now_ms, **kw)
                    else:
                        reason = None
                        for field in fields:
                            if field not in obj:
                                reason = "missing-fields"
                                break
                        if reason is None and efield:
                            expires = obj.get(efield)
                            if (isinstance(expires, int) and not isinstance(expires, bool)
                                    and -exact_int < expires < exact_int):
                                if -100000000000 < expires < 100000000000:
                                    expires *= 1000
                            else:
                                expires = parse_time_ms(expires)
                            if expires is None:
                                reason = "bad-expiry"
                            elif expires <= now_ms:
                                reason = "expired"
                        if reason is None and require_ttl and isinstance(pttl, int) and pttl == -1:
                            reason = "no-ttl"
            if reason is not None:
                out.append((i, reason))
        return out


def check_options(params):
    """Validate the shared session options; raises P3Error with a one-line message."""
    pattern = params.get("pattern")
    if not pattern or not str(pattern).strip():
        raise P3Error("pattern must be a non-empty SCAN MATCH pattern, e.g. session:*")
    count = params.get("scan_count")
    if count is None or not 1 <= int(count) <= MAX_SCAN_COUNT:
        raise P3Error("scan_count must be between 1 and %d, got %s" % (MAX_SCAN_COUNT, count))
    fields = params.get("required_fields") or []
    if any(not str(f).strip() for f in fields):
        raise P3Error("required_fields must not contain empty names")


def printable_key(key):
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return str(key)


def _b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else str(data).encode("utf-8")).decode("ascii")


def _unb64(text, what):
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise ValueError("%s is not base64" % what)


# ---------------------------------------------------------------------------------------------------------------
# Which nodes hold the keyspace
# ---------------------------------------------------------------------------------------------------------------

def keyspace_nodes(settings):
    """(masters, unreadable, cluster_enabled, redis_verdict): masters = addresses serving slots (every reachable
    master of a standalone set-up), unreadable = masters that own slots but cannot be read now."""
    verdict = summarize(probe_nodes(settings), seeds=settings.seed_addresses)
    failed = set(verdict["failed_nodes"])
    cluster = bool(verdict.get("cluster_enabled"))
    masters, unreadable = [], []
    for n in verdict["nodes"]:
        if n["role"] != "master":
            continue
        if cluster and not n["slots"]:
            continue
        if n["address"] in failed or not n["reachable"]:
            unreadable.append(n["address"])
        else:
            masters.append(n["address"])
    if not masters and not unreadable:
        raise P3Error("no Redis master reachable via %s: %s" % (
            ", ".join(settings.seed_addresses), verdict.get("reason") or "no answer"))
    return masters, unreadable, cluster, verdict


def slot_owners(verdict):
    """[(start, end, address)] of the masters' slot ranges, from a redis_client.summarize() verdict."""
    out = []
    failed = set(verdict.get("failed_nodes") or [])
    for n in verdict.get("nodes") or []:
        if n["role"] != "master" or n["address"] in failed:
            continue
        for r in n["slots"]:
            first, dummy, last = r.partition("-")
            out.append((int(first), int(last or first), n["address"]))
    return sorted(out)


def _client(settings, address):
    host, port = parse_address(address)
    return node_client(settings, host, port, decode_responses=False)


def _server_ms(client):
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


# ---------------------------------------------------------------------------------------------------------------
# Census
# ---------------------------------------------------------------------------------------------------------------

def _read_page(client, keys):
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
        pipe.pttl(k)
    res = pipe.execute(raise_on_error=False)
    return res[0::2], res[1::2]


def census(settings, params, sample_size=10):
    """Walk the session keyspace of every master; see the session_census RETURN docs."""
    check_options(params)
    masters, unreadable, cluster, dummy = keyspace_nodes(settings)
    pattern = params["pattern"]
    count = int(params["scan_count"])
    kw = dict(required_fields=params.get("required_fields"), expiry_field=params.get("expiry_field"),
              require_ttl=params.get("require_ttl", True))
    judge = Judge(**kw)
    total = dict(keys=0, valid=0, corrupt=0, no_ttl=0, bytes=0, max_bytes=0, pages=0)
    by_reason = dict((r, 0) for r in REASONS)
    sample = []
    nodes = []
    errors = []
    t0 = time.monotonic()
    for address in masters:
        node = dict(address=address, keys=0, valid=0, corrupt=0, error=None)
        nodes.append(node)
        try:
            client = _client(settings, address)
            now = _server_ms(client)
            cursor = 0
            while True:
                cursor, keys = client.scan(cursor=cursor, match=pattern, count=count)
                total["pages"] += 1
                if keys:
                    values, ttls = _read_page(client, keys)
                    for key, raw, pttl in zip(keys, values, ttls):
                        if raw is None or (isinstance(pttl, int) and pttl == -2):
                            continue  # expired or deleted between SCAN and GET
                        if isinstance(raw, Exception) and "WRONGTYPE" not in str(raw):
                            raise raw
                        node["keys"] += 1
                        if isinstance(pttl, int) and pttl == -1:
                            total["no_ttl"] += 1
                        if isinstance(raw, bytes):
                            total["bytes"] += len(raw)
                            total["max_bytes"] = max(total["max_bytes"], len(raw))
                        reason = judge(raw, pttl, now)
                        if reason is None:
                            node["valid"] += 1
                        else:
                            node["corrupt"] += 1
                            by_reason[reason] += 1
                            if len(sample) < sample_size:
                                sample.append(dict(key=printable_key(key), reason=reason, node=address,
                                                   pttl=pttl if isinstance(pttl, int) else None))
                if int(cursor) == 0:
                    break
        except P3Error as e:
            node["error"] = e.msg
        except Exception as e:
            node["error"] = describe_redis_error(e, settings)
        if node["error"]:
            errors.append("%s: %s" % (address, node["error"]))
        for k in ("keys", "valid", "corrupt"):
            total[k] += node[k]
    return dict(
        pattern=pattern,
        cluster=cluster,
        keys=total["keys"],
        valid=total["valid"],
        corrupt=total["corrupt"],
        by_reason=dict((k, v) for k, v in by_reason.items() if v),
        no_ttl=total["no_ttl"],
        bytes=dict(total=total["bytes"], max=total["max_bytes"],
                   avg=round(float(total["bytes"]) / total["keys"], 1) if total["keys"] else 0),
        nodes=nodes,
        unreadable=unreadable + [n["address"] for n in nodes if n["error"]],
        errors=errors,
        sample=sample,
        pages=total["pages"],
        seconds=round(time.monotonic() - t0, 3),
    )


# ---------------------------------------------------------------------------------------------------------------
# Backup file
# ---------------------------------------------------------------------------------------------------------------

_LINE = b'{"key":"%s","%s":"%s","pttl":%d,"expire_at_ms":%s,"node":"%s","reason":"%s"}\n'
_LINE_VALUE = b'{"key":"%s","value":"%s","pttl":%d,"expire_at_ms":%d,"node":"%s","reason":"%s"}\n'


class BackupError(P3Error):
    """The backup file cannot be written: the purge stops everywhere."""


class BackupWriter(object):
    """Append-only JSONL backup, created exclusively with mode 0600 (the file and its directory are fsynced when it
    is created). write_page() appends a page's lines; a background thread fsyncs what has been written - one fsync
    for every page written meanwhile (group commit) - and `durable` is how many entries are on disk. The purge
    removes a key only once its entry is durable."""

    def __init__(self, path, header):
        self.path = os.path.abspath(path)
        self.header = header
        self.count = 0      # entries written
        self.durable = 0    # entries fsynced
        self.fsyncs = 0
        self.batch = 1      # entries worth an fsync of their own; fewer are synced when wait() asks for them
        self.fd = None
        self.error = None
        self._cond = threading.Condition()
        self._thread = None
        self._closing = False
        self._idle = False  # the sync thread waits for work
        self._wanted = 0    # wait() waits for this many entries

    def _create(self):
        directory = os.path.dirname(self.path)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as e:
            raise P3Error("cannot create the backup file %s: %s" % (self.path, one_line(e.strerror or e)))

    def check(self):
        """Fail before anything is removed when the file cannot be created (then remove the empty probe file)."""
        os.close(self._create())
        os.unlink(self.path)

    def _fail(self, what, e):
        return BackupError("%s the backup file %s failed: %s" % (
            what, self.path, one_line(getattr(e, "strerror", None) or e, 200)))

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _start(self):
        self.fd = self._create()
        try:
            self._write_all(json.dumps(self.header, sort_keys=True).encode("utf-8") + b"\n")
            os.fsync(self.fd)
            dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(dfd)  # the new file's directory entry is on disk too
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._fail("creating", e)
        self._thread = threading.Thread(target=self._sync_loop, name="p3-backup-fsync")
        self._thread.daemon = True
        self._thread.start()

    def _sync_loop(self):
        cond = self._cond
        while True:
            with cond:
                while not self._closing and (self.count - self.durable < self.batch or self.durable >= self.count) \
                        and self._wanted <= self.durable:
                    self._idle = True
                    cond.wait()
                self._idle = False
                if self.durable >= self.count:
                    if self._closing:
                        return
                    continue
                target = self.count
            try:
                os.fsync(self.fd)
            except OSError as e:
                with cond:
                    self.error = self._fail("syncing", e)
                    cond.notify_all()
                return
            with cond:
                self.durable = target
                self.fsyncs += 1
                cond.notify_all()

    def write_page(self, taken, node, server_now):
        """Append a page: (key, reason, kind 'v'|'d', payload, pttl) tuples as LUA_READ returned them; server_now is
        the server's clock (ms) when they were read: the absolute expiry is server_now + pttl. Returns the entry
        count the page ends at: its keys may be removed once `durable` reaches it (wait())."""
        if self.error is not None:
            raise self.error
        if not taken:
            return self.count
        try:
            if self.fd is None:
                self._start()
            b64, node_b, reasons = binascii.b2a_base64, node.encode("utf-8"), {}
            lines = []
            append = lines.append
            for key, reason, kind, payload, pttl in taken:
                reason_b = reasons.get(reason)
                if reason_b is None:
                    reason_b = reasons[reason] = reason.encode("utf-8")
                if (key.__class__ is bytes and payload.__class__ is bytes and pttl.__class__ is int and pttl >= 0
                        and kind == "v"):  # the common line, without the checks below (same bytes)
                    append(_LINE_VALUE % (b64(key, newline=False), b64(payload, newline=False), pttl,
                                          server_now + pttl, node_b, reason_b))
                    continue
                pttl = int(pttl) if pttl is not None else -1
                if not isinstance(payload, bytes):
                    payload = str(payload).encode("utf-8")
                if not isinstance(key, bytes):
                    key = str(key).encode("utf-8")
                append(_LINE % (
                    b64(key, newline=False), b"dump" if kind in ("d", b"d") else b"value",
                    b64(payload, newline=False), pttl, b"null" if pttl < 0 else b"%d" % (server_now + pttl),
                    node_b, reason_b))
            self._write_all(b"".join(lines))
        except BackupError as e:
            self.error = e
            raise
        except P3Error as e:
            self.error = BackupError(e.msg)
            raise self.error
        except (IOError, OSError, ValueError) as e:
            self.error = self._fail("writing", e)
            raise self.error
        with self._cond:
            self.count += len(taken)
            if self._idle and self.count - self.durable >= self.batch:  # one wake-up per batch, not per page
                self._cond.notify_all()
        return self.count

    def wait(self, count):
        """Block until `count` entries are durable; raises BackupError when the sync failed."""
        with self._cond:
            self._wanted = max(self._wanted, count)
            self._cond.notify_all()
            while self.durable < count and self.error is None:
                self._cond.wait()
        if self.durable < count:
            raise self.error

    def close(self):
        if self.fd is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        os.close(self.fd)
        self.fd = None


def backup_path(backup_dir, mode, now=None):
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    return os.path.abspath(os.path.join(backup_dir, "sessions-%s-%s.jsonl" % (mode, stamp)))


def read_backup(path):
    """(header, entries, truncated) of a backup file: entries as dicts (key, value or dump as bytes, pttl,
    expire_at_ms, node, reason); truncated is None or dict(line, offset, bytes) of a last line cut short (the purge
    was killed or the disk filled up while writing it: none of its keys was removed). Raises P3Error for a missing
    file or a malformed complete line (naming the line)."""
    try:
        fh = open(path, "rb")
    except (IOError, OSError) as e:
        raise P3Error("cannot read the backup file %s: %s" % (path, one_line(getattr(e, "strerror", None) or e)))
    with fh:
        first = fh.readline()
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != BACKUP_FORMAT:
            raise P3Error("%s is not a p3.recovery session backup (no %s header line)" % (path, BACKUP_FORMAT))
        if header.get("version") != BACKUP_VERSION:
            raise P3Error("%s: unsupported backup version %r" % (path, header.get("version")))
        entries = []
        truncated = None
        offset = len(first)
        for lineno, line in enumerate(fh, 2):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if ("value" in rec) == ("dump" in rec):
                    raise ValueError("exactly one of value and dump expected")
                entries.append(dict(key=_unb64(rec["key"], "key"),
                                    value=_unb64(rec["value"], "value") if "value" in rec else None,
                                    dump=_unb64(rec["dump"], "dump") if "dump" in rec else None,
                                    pttl=int(rec.get("pttl", -1)), expire_at_ms=rec.get("expire_at_ms"),
                                    node=rec.get("node"), reason=rec.get("reason")))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                if not line.endswith(b"\n"):  # the last line, cut short
                    truncated = dict(line=lineno, offset=start, bytes=len(line))
                    break
                raise P3Error("%s line %d is not a backup entry: %s" % (path, lineno, one_line(e, 120)))
    return header, entries, truncated


# ---------------------------------------------------------------------------------------------------------------
# Purge
# ---------------------------------------------------------------------------------------------------------------
#
# Write-ahead, per page and master: LUA_READ reads a page (SCAN, values or DUMP, PTTL; nothing removed); the keys
# chosen (every key in mode all; in mode corrupt those Judge - classify()'s rule, the census's too - finds corrupt)
# are appended to the backup; once a background fsync has put those lines on disk, LUA_TAKE removes exactly those
# keys, each only if it is still what was read (compare-and-delete: a key changed meanwhile stays, RV vanished).
# Each master has one cursor (SCAN's own guarantee on every server version: Redis >= 7.4 and Valkey 8 keep a
# dictionary per cluster slot and put the slot in the cursor's low bits, so no split of the cursor by its bits is
# valid everywhere) and two connections: the reader, whose next page is requested before the current one is
# judged and written, and the taker, with at most one compare-and-delete call in flight, whose reply is read and
# counted before the next is sent. A taker call that fails or times out is resolved before the run ends: the same
# (idempotent) call again on a new connection says which of its keys are gone (counted removed: each has its
# backup line) and which stay. Killed at any moment, the purge leaves every removed key with a durable backup line.
#
# Why LUA_TAKE compares whole values (issue 13's speed note, measured with bench/session_purge.py, Redis 7.0): the
# price of write-ahead is the second call (the bench's two-call floor - the same read call, then a plain UNLINK of
# the keys, nothing compared - costs ~1.15x the server CPU per key of the single read-and-remove call of before)
# plus the compare (reading each value again into Lua: 1.4-1.85x in all). A length or TTL fingerprint is not sound
# (SETRANGE or SET ... KEEPTTL change a value and keep both); a SHA-1 of the value saved no server CPU beyond the
# noise; WATCH must come before the read (so the read cannot SCAN itself: one call more per page) and costs more
# than the compare (each WATCHed key is checked against the connection's whole list of watched keys).


class _Conn(object):
    """One connection of a node client with at most one script call in flight (connection-level send/read:
    redis-py's pipelines wait for every reply)."""

    def __init__(self, pool, sha, script, batch):
        self.pool = pool
        try:
            self.conn = pool.get_connection()
        except TypeError:  # redis-py < 5.1: the command name is a required argument
            self.conn = pool.get_connection("EVALSHA")
        self.sha, self.script, self.batch = sha, script, batch
        self.args = None
        self.in_flight = False

    def send(self, args):
        self.args = args
        self.conn.send_packed_command([_resp(["EVALSHA", self.sha, 0, self.batch] + args)])
        self.in_flight = True

    def read(self):
        try:
            reply = self.conn.read_response()
        except Exception as e:  # NOSCRIPT: the script cache was flushed meanwhile; the same call with the text
            if not str(e).startswith("No matching script"):
                raise
            self.conn.send_packed_command([_resp(["EVAL", self.script, 0, self.batch] + self.args)])
            reply = self.conn.read_response()
        self.in_flight = False
        return reply

    def close(self):
        if self.conn is None:
            return
        if self.in_flight:  # a reply outstanding: the connection's state is unknown
            self.conn.disconnect()
        self.pool.release(self.conn)
        self.conn = None


def _int(value):
    return int(value) if value is not None else 0


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _take_args(items):
    flags, args = [], [None]
    for key, reason, kind, payload, dummy in items:
        flags.append("d" if kind == "d" else ("t" if reason == "no-ttl" else "v"))
        args.extend((key, payload))
    args[0] = "".join(flags)
    return args


def _resp(args):
    """RESP bytes of a command of bytes/str/int arguments (redis-py encodes each argument in Python: a take call of
    500 keys has 1500)."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for a in args:
        if a.__class__ is not bytes:
            a = str(a).encode("utf-8")
        append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Master(object):
    """One master's walk: the reader (one cursor), the chosen keys waiting for their backup to be durable, the
    taker."""

    def __init__(self, run, settings, address, cluster):
        self.run = run
        self.settings = settings
        self.address = address
        self.node = dict(address=address, scanned=0, matched=0, removed=0, seconds=0.0, error=None)
        self.t0 = time.monotonic()
        self.batch = "0" if cluster else "1"
        self.client = None
        self.reader = self.taker = None
        self.take_sha = None
        self.cursor = 0
        self.scanning = True
        self.waiting = collections.deque()  # (entry count that must be durable, items)
        self.ready = []                     # items whose backup is durable, not sent yet
        self.taking = None                  # items of the take call in flight
        self.held = set()                   # keys chosen and not resolved yet (SCAN may return a key twice)
        self.recent = self.recent_before = frozenset()  # keys of the last two takes (a read may return them)
        self.seen = set()                   # check mode: keys counted (nothing is removed, so SCAN repeats show)

    def connect(self):
        self.client = _client(self.settings, self.address)
        self.reader = _Conn(self.client.connection_pool, self.client.script_load(LUA_READ), LUA_READ, self.batch)
        if not self.run.check_mode:
            self.take_sha = self.client.script_load(LUA_TAKE)
            self.taker = _Conn(self.client.connection_pool, self.take_sha, LUA_TAKE, self.batch)

    def fail(self, error):
        if self.node["error"] is None:
            self.node["error"] = error if isinstance(error, str) else (
                error.msg if isinstance(error, P3Error) else describe_redis_error(error, self.settings))
        self.scanning = False

    def backlog(self):
        return sum(len(items) for dummy, items in self.waiting) + len(self.ready) + len(self.taking or ())

    def pump(self, fifo):
        """Send what may be sent now: the next page's read, a take of keys whose backup is durable."""
        run = self.run
        if self.node["error"] is not None or run.stopped:
            return
        deadline, reserve = self.settings.deadline, self.settings.connect_timeout + 2 * self.settings.socket_timeout
        left = deadline.remaining()
        if left is not None and left < reserve:
            # redis_deadline: nothing new is sent once only the time to resolve a take in flight is left (a new
            # connection and one call), so a take cut by a frozen node can still be resolved within the deadline
            self.fail(DeadlineExceeded("%s (nothing new sent in the last %ss, kept to resolve a take in flight)" % (
                deadline.message(self.address), num_text(reserve))))
            return
        if (self.scanning and not self.reader.in_flight and not run.capped
                and self.backlog() < run.ahead):
            self.reader.send([self.cursor, run.pattern, run.count])
            fifo.append((self, "read"))
        if self.taker is not None and self.taking is None:
            durable = run.writer.durable if run.writer is not None else 0
            while self.waiting and self.waiting[0][0] <= durable:
                self.ready.extend(self.waiting.popleft()[1])
            if self.ready:
                self.taking, self.ready = self.ready[:run.take_batch], self.ready[run.take_batch:]
                self.taker.send(_take_args(self.taking))
                fifo.append((self, "take"))

    def on_read(self, fifo):
        run, node = self.run, self.node
        try:
            reply = self.reader.read()
        except Exception as e:
            self.reader.close()
            self.fail(e)
            return
        if self.node["error"] is not None or run.stopped:
            return  # this master (or the backup) failed meanwhile: nothing more is chosen
        cursor, server_ms, busy_us, keys, values, types, dumps, pttls = reply
        self.cursor = cursor
        self.scanning = _int(cursor) != 0
        node["scanned"] += len(keys)
        self.pump(fifo)  # the next page is read while this one is judged and written
        server_ms = _int(server_ms)
        types = _text(types)
        held = self.held
        if run.mode == "all" and not types:
            chosen = [(k, "all", "v", v, t) for k, v, t in zip(keys, values, pttls)]
        else:
            chosen = []
            dumps = list(dumps or [])
            strings = []
            for i, ty in enumerate(types or "s" * len(keys)):
                if ty == "s":
                    strings.append(i)
                elif ty == "d":
                    chosen.append((i, "wrong-type", "d", dumps.pop(0)))
            if run.mode == "all":
                chosen = [(keys[i], "all", kind, payload, pttls[i]) for i, dummy, kind, payload in chosen]
                chosen += [(keys[i], "all", "v", values[i], pttls[i]) for i in strings]
            else:
                if len(strings) == len(keys):
                    bad = run.judge.page(values, pttls, server_ms)
                else:
                    bad = [(strings[j], reason) for j, reason in run.judge.page(
                        [values[i] for i in strings], [pttls[i] for i in strings], server_ms)]
                chosen = ([(keys[i], "wrong-type", "d", payload, pttls[i]) for i, dummy, kind, payload in chosen]
                          + [(keys[i], reason, "v", values[i], pttls[i]) for i, reason in bad])
        if run.check_mode:
            chosen = [c for c in chosen if c[0] not in self.seen]
        elif held or self.recent:
            r0, r1 = self.recent, self.recent_before
            chosen = [c for c in chosen if c[0] not in held and c[0] not in r0 and c[0] not in r1]
        node["matched"] += len(chosen)
        room = run.max_keys - run.selected
        if len(chosen) > room:
            run.capped = True
            chosen = chosen[:max(0, room)]
        run.selected += len(chosen)
        if chosen:
            if run.check_mode:
                self.seen.update(c[0] for c in chosen)
                run.record(node, chosen)
            else:
                try:
                    need = run.writer.write_page(chosen, self.address, server_ms)
                except BackupError as e:
                    run.selected -= len(chosen)
                    run.stop(e)
                    return
                self.waiting.append((need, chosen))
                held.update(c[0] for c in chosen)
        run.page_done(node, busy_us)

    def on_take(self):
        items, self.taking = self.taking, None
        try:
            outcome, resolved = _text(self.taker.read()[2]), False
        except Exception as e:
            self.taker.close()
            outcome, resolved = self.resolve(items, e), True
        # '-' in a resolving call: maybe removed by the call that failed - counted removed (it has its backup line)
        gone = "r-" if resolved else "r"
        self.run.record(self.node, [item for item, r in zip(items, outcome) if r in gone])
        self.run.stats["vanished"] += sum(1 for r in outcome if r not in gone)
        self.recent_before, self.recent = self.recent, frozenset(item[0] for item in items)
        self.held.difference_update(self.recent)

    def resolve(self, items, error):
        """The take call failed or timed out: its keys may or may not be gone. The same call (compare-and-delete,
        idempotent) again on a new connection, until a deadline: its keys gone now are counted removed (each has
        its durable backup line), the others stay. Returns the outcome ('' when it could not be resolved)."""
        cause = describe_redis_error(error, self.settings)
        # within the call's total deadline (redis_deadline): past it, the keys are reported unresolved
        own = time.monotonic() + max(10.0, 3 * float(self.settings.socket_timeout or 0))
        deadline = self.settings.deadline.cut(own)
        last = cause
        client = None
        while time.monotonic() < deadline:
            conn = None
            try:
                client = client or _client(self.settings, self.address)
                conn = _Conn(client.connection_pool, self.take_sha, LUA_TAKE, self.batch)
                conn.send(_take_args(items))
                outcome = _text(conn.read()[2])
                conn.close()
                gone = outcome.count("r") + outcome.count("-")
                self.fail("a compare-and-delete call failed (%s); resolved: %d of its %d keys are gone (each has "
                          "its backup line), the rest stay" % (cause, gone, len(items)))
                return outcome
            except Exception as e:  # BUSY, a timeout, the node restarting: again until the deadline
                last = describe_redis_error(e, self.settings)
                if conn is not None:
                    conn.close()
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.run.stats["unresolved"] += len(items)
        self.fail("a compare-and-delete call failed (%s) and could not be resolved (%s): %d keys may be gone; "
                  "each has its backup line" % (cause, last, len(items)))
        return ""

    def close(self):
        for conn in (self.reader, self.taker):
            if conn is not None:
                conn.close()
        self.node["seconds"] = round(time.monotonic() - self.t0, 3)


class _Run(object):
    """State shared by the masters of one purge: counts, cap, backup, progress. Everything here runs in one thread
    (the backup's fsync thread aside)."""

    def __init__(self, params, mode, max_keys, writer, check_mode, progress):
        self.pattern = params["pattern"]
        self.count = int(params["scan_count"])
        fields = params.get("required_fields")
        self.kw = dict(required_fields=list(fields) if fields is not None else list(DEFAULT_FIELDS),
                       expiry_field=params.get("expiry_field"), require_ttl=params.get("require_ttl", True))
        self.judge = Judge(**self.kw)
        self.mode = mode
        self.max_keys = max_keys
        self.writer = writer
        self.check_mode = check_mode
        self.progress = progress
        self.stats = dict(scanned=0, matched=0, removed=0, vanished=0, unresolved=0, pages=0)
        self.by_reason = {}
        self.capped = False
        self.stopped = None     # the backup failed: nothing more is sent anywhere
        self.max_page_ms = 0.0
        self.selected = 0       # chosen for removal so far, every master (<= max_keys)
        # one take call removes at most take_batch keys; a master reads ahead at most `ahead` keys of its takes
        self.take_batch = min(1000, max(100, 5 * self.count))
        self.ahead = 4 * self.take_batch + self.count

    def stop(self, error):
        if self.stopped is None:
            self.stopped = error.msg if isinstance(error, P3Error) else one_line(error, 300)

    def page_done(self, node, busy_us):
        self.stats["pages"] += 1
        self.max_page_ms = max(self.max_page_ms, _int(busy_us) / 1000.0)
        if self.progress is not None:
            self.progress(self.stats, node)

    def record(self, node, removed):
        """removed: (key, reason, kind, payload, pttl) of keys removed (in check mode: that would be)."""
        if not removed:
            return
        node["removed"] += len(removed)
        if self.mode == "all":
            self.by_reason["all"] = self.by_reason.get("all", 0) + len(removed)
        else:
            for item in removed:
                self.by_reason[item[1]] = self.by_reason.get(item[1], 0) + 1


def purge(settings, params, mode="corrupt", max_keys=1000, backup_file=None, check_mode=False, progress=None):
    """Remove the session keys that fail validation (mode corrupt) or every key matching the pattern (mode all),
    on every master, page by page, each key only after its backup line is durable; see the session_purge RETURN
    docs. backup_file None = no backup (gated by the caller)."""
    check_options(params)
    masters, unreadable, cluster, dummy = keyspace_nodes(settings)
    writer = None
    if backup_file and not check_mode:
        writer = BackupWriter(backup_file, dict(
            format=BACKUP_FORMAT, version=BACKUP_VERSION, created=utc_timestamp(), pattern=params["pattern"],
            mode=mode, source=masters, required_fields=params.get("required_fields"),
            require_ttl=params.get("require_ttl", True)))
        writer.check()
    run = _Run(params, mode, max_keys, writer, check_mode, progress)
    if writer is not None:
        writer.batch = run.take_batch
    if writer is None and not check_mode:
        writer = run.writer = _NoBackup()
    walkers = []
    fifo = collections.deque()  # (master, 'read' | 'take') in the order sent
    t0 = time.monotonic()
    try:
        for address in masters:
            m = _Master(run, settings, address, cluster)
            walkers.append(m)
            try:
                m.connect()
            except Exception as e:
                m.fail(e)
                continue
            m.pump(fifo)
        while True:
            if fifo:
                m, kind = fifo.popleft()
                if kind == "read":
                    m.on_read(fifo)
                else:
                    m.on_take()
                for w in walkers:
                    w.pump(fifo)
                continue
            # nothing in flight: keys waiting for their backup to be durable, or done
            need = [w.waiting[0][0] for w in walkers
                    if w.waiting and w.node["error"] is None and not run.stopped]
            if not need:
                break
            try:
                writer.wait(min(need))
            except BackupError as e:
                run.stop(e)
            for w in walkers:
                w.pump(fifo)
    finally:
        for w in walkers:
            w.close()
        if writer is not None:
            writer.close()
    for w in walkers:
        for k in ("scanned", "matched", "removed"):
            run.stats[k] += w.node[k]
    seconds = time.monotonic() - t0
    stats = run.stats
    nodes = [w.node for w in walkers]
    errors = ["%s: %s" % (n["address"], n["error"]) for n in nodes if n["error"]]
    if run.stopped:
        errors.insert(0, "backup: %s; nothing more was removed" % run.stopped)
    entries = getattr(writer, "count", 0)
    return dict(
        pattern=run.pattern,
        mode=mode,
        cluster=cluster,
        scanned=stats["scanned"],
        matched=stats["matched"],
        removed=stats["removed"],
        vanished=stats["vanished"],
        unresolved=stats["unresolved"],
        by_reason=run.by_reason,
        capped=run.capped,
        max_keys=max_keys,
        pages=stats["pages"],
        seconds=round(seconds, 3),
        keys_per_second=round(stats["removed"] / seconds, 1) if seconds > 0 else None,
        max_page_ms=round(run.max_page_ms, 2),
        nodes=nodes,
        unreadable=unreadable,
        errors=errors,
        backup=dict(path=writer.path, entries=entries, fsyncs=writer.fsyncs)
        if isinstance(writer, BackupWriter) and entries else None,
    )


class _NoBackup(object):
    """backup=false: every chosen key is removable at once (the caller gated the unrecoverable removal)."""
    count = durable = fsyncs = 0
    path = None

    def write_page(self, taken, node, server_now):
        return 0

    def wait(self, count):
        return

    def close(self):
        return


# ---------------------------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------------------------

def restore(settings, path, replace=False, check_mode=False, batch=500):
    """Put the keys of a backup file back, each on the master that owns its slot now: strings with
    SET key value [PXAT expire_at_ms] [NX], other types with RESTORE key expire_at_ms payload ABSTTL [REPLACE].

    Per key: identical (the key exists with the same value / DUMP payload: nothing to do), conflict (another value
    exists and replace is false), expired (its TTL ran out since the backup), restored. See session_restore RETURN.
    """
    header, entries, truncated = read_backup(path)
    masters, unreadable, cluster, verdict = keyspace_nodes(settings)
    owners = slot_owners(verdict) if cluster else []

    def owner(key):
        if not cluster:
            return masters[0] if masters else None
        slot = key_slot(key)
        for a, b, address in owners:
            if a <= slot <= b:
                return address
        return None

    groups = {}
    out = dict(entries=len(entries), restored=0, identical=0, conflicts=0, expired=0, unroutable=0, errors=[],
               conflict_keys=[], pattern=header.get("pattern"), mode=header.get("mode"),
               created=header.get("created"))
    for e in entries:
        address = owner(e["key"])
        if address is None or address not in masters:
            out["unroutable"] += 1
            continue
        groups.setdefault(address, []).append(e)
    for address, items in sorted(groups.items()):
        try:
            client = _client(settings, address)
            now = _server_ms(client)
            for i in range(0, len(items), batch):
                chunk = items[i:i + batch]
                pipe = client.pipeline(transaction=False)
                for e in chunk:
                    if e["value"] is not None:
                        pipe.get(e["key"])
                    else:
                        pipe.dump(e["key"])
                current = pipe.execute(raise_on_error=False)
                todo = []
                for e, cur in zip(chunk, current):
                    if isinstance(cur, Exception):
                        if "WRONGTYPE" not in str(cur):
                            raise cur
                        cur = b""  # exists with another type: never identical to a string
                    if cur is not None and cur == (e["value"] if e["value"] is not None else e["dump"]):
                        out["identical"] += 1
                    elif e["expire_at_ms"] is not None and int(e["expire_at_ms"]) <= now:
                        out["expired"] += 1
                    elif cur is not None and not replace:
                        out["conflicts"] += 1
                        if len(out["conflict_keys"]) < 20:
                            out["conflict_keys"].append(printable_key(e["key"]))
                    else:
                        todo.append(e)
                if todo and not check_mode:
                    pipe = client.pipeline(transaction=False)
                    for e in todo:
                        if e["value"] is not None:
                            args = ["SET", e["key"], e["value"]]
                            if e["expire_at_ms"] is not None:
                                args += ["PXAT", int(e["expire_at_ms"])]
                            if not replace:
                                args.append("NX")
                        else:
                            args = ["RESTORE", e["key"],
                                    int(e["expire_at_ms"]) if e["expire_at_ms"] is not None else 0, e["dump"]]
                            if replace:
                                args.append("REPLACE")
                            if e["expire_at_ms"] is not None:
                                args.append("ABSTTL")
                        pipe.execute_command(*args)
                    for e, res in zip(todo, pipe.execute(raise_on_error=False)):
                        if res is None:  # SET NX: someone wrote the key meanwhile
                            out["conflicts"] += 1
                        elif isinstance(res, Exception):
                            text = one_line(str(res), 160)
                            if "BUSYKEY" in text:
                                out["conflicts"] += 1
                            elif len(out["errors"]) < 20:
                                out["errors"].append("%s %s: %s" % (address, printable_key(e["key"]), text))
                        else:
                            out["restored"] += 1
                else:
                    out["restored"] += len(todo)  # would restore
        except P3Error as e:
            out["errors"].append("%s: %s" % (address, e.msg))
        except Exception as e:
            out["errors"].append("%s: %s" % (address, describe_redis_error(e, settings)))
    out["unreadable"] = unreadable
    out["truncated"] = truncated
    return out


def require_redis(module):
    if not HAS_REDIS:
        from ansible.module_utils.basic import missing_required_lib
        module.fail_json(msg=missing_required_lib("redis"))
