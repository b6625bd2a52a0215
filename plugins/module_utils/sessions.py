# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Session keyspace plumbing of p3.recovery (runbook scenario 1, Session Bridge Failure): the validation rule,
the SCAN census over every master, the selective non-blocking purge with a backup, and the restore.

Never KEYS. The purge works every master at once, with one small Lua script per page that runs
SCAN <cursor> MATCH <pattern> COUNT <scan_count> itself (so the server-side work per call is bounded by
scan_count); each master's table is walked by SCAN_STREAMS cursor streams, each with one call in flight, and the
next page's call is sent before the previous reply is processed, so Redis never waits for this process. Mode all
takes the page's keys in the script (value or DUMP, PTTL, UNLINK: the backup holds exactly what was removed).
Mode corrupt reads the page's values and TTLs, judges them in Python with Judge (the rule of classify(), the
census's too), and a later call removes each corrupt key only if it is still exactly the value that was judged
(compare-and-delete, LUA_PAGE_CORRUPT).

Backup format (JSON lines, file mode 0600, flushed after every page): a header line
  {"format": "p3.recovery.redis-dump", "version": 1, "created": ISO, "pattern": ..., "mode": ..., "source": [...]}
then one line per removed key:
  {"key": base64, "value": base64 (strings) | "dump": base64 DUMP payload (other types), "pttl": ms or -1,
   "expire_at_ms": absolute server ms or null, "node": "host:port", "reason": "not-json" | ... | "all"}
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import binascii
import datetime
import json
import math
import os
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import (
    HAS_REDIS,
    describe_redis_error,
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

# The page scripts (Lua, one call per SCAN page and master). Each SCANs one page itself (SCAN <cursor> MATCH
# <pattern> COUNT <count>), so the server-side work of a call is bounded by COUNT; none ever runs KEYS. Each starts
# and ends with TIME: the reply carries the server's clock (the backup's absolute expiries are that clock + PTTL)
# and how long the call held the server (max_page_ms). On a standalone server keys are read with MGET and removed
# with UNLINK in chunks of 1000 (the unpack() limit); a cluster node refuses multi-key commands across slots inside
# a script, so there (ARGV[1] = '0') it is one GET / UNLINK per key.

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
  if batch then
    for s = 1, #keys, 1000 do redis.call('UNLINK', unpack(keys, s, math.min(#keys, s + 999))) end
  else
    for i = 1, #keys do redis.call('UNLINK', keys[i]) end
  end
end
"""

# Mode all: take every key of the page, at most <limit>: a string's value (MGET; restored with SET ... PXAT) or,
# for another type, its DUMP payload (restored with RESTORE ... ABSTTL), then PTTL, then UNLINK - atomically, so
# the backup holds exactly what was removed.
# ARGV: batch (1 standalone / 0 cluster), cursor, pattern, count, limit.
# Returns {cursor, scanned, over, server_ms, busy_us, keys, kinds ('v' value | 'd' dump, one char per key; '' when
# all are values), payloads, pttls}.
LUA_PAGE_ALL = _LUA_BATCH + """
local call = redis.call
local t0 = call('TIME')
local page = call('SCAN', ARGV[2], 'MATCH', ARGV[3], 'COUNT', ARGV[4])
local keys, limit = page[2], tonumber(ARGV[5])
local n, vals, ttls = #keys, {}, {}
if n > 0 and n <= 1000 then
  vals = mget(keys, 1, n)
else
  for s = 1, n, 1000 do
    local got = mget(keys, s, math.min(n, s + 999))
    for i = 1, #got do vals[s + i - 1] = got[i] end
  end
end
local simple = n <= limit
for i = 1, n do
  if not vals[i] then simple = false break end
end
local taken, kinds, payloads, over = keys, '', vals, 0
if simple then
  -- the common page: every key a string, under the cap - the SCAN and MGET tables are the reply
  for i = 1, n do ttls[i] = call('PTTL', keys[i]) end
else
  local kind_list, j = {}, 0
  taken, payloads = {}, {}
  for i = 1, n do
    local k, v, kind = keys[i], vals[i], 'v'
    if not v then
      v = redis.pcall('GET', k)
      if type(v) == 'table' then kind, v = 'd', call('DUMP', k) end
    end
    if v then
      if j >= limit then
        over = over + 1
      else
        j = j + 1
        taken[j], kind_list[j], payloads[j], ttls[j] = k, kind, v, call('PTTL', k)
      end
    end
  end
  kinds = table.concat(kind_list)
end
unlink(taken)
local t1 = call('TIME')
return {page[1], n, over, t0[1] * 1000 + math.floor(t0[2] / 1000), (t1[1] - t0[1]) * 1000000 + t1[2] - t0[2],
        taken, kinds, payloads, ttls}
"""

# Mode corrupt: read a page for classify() in Python - value (MGET), type flag, PTTL - and, in the same call, take
# the keys judged corrupt in an earlier page only if they are still what was judged (compare-and-delete):
#   flag 'w' (judged: not a string): taken if it exists and is still not a string (DUMP payload);
#   flag 'v' (judged by its value): taken if GET still returns exactly the value judged;
#   flag 't' (judged no-ttl): the same, and the key must still have no TTL.
# A key that changed in between is left alone (the purge counts it as vanished).
# ARGV: batch, cursor ('' = no page, takes only), pattern, count, read PTTL (1/0), n_take, then n_take times
# key, judged value ('' for flag w), flag.
# Returns {cursor, scanned, server_ms, busy_us, take kinds ('v' | 'd' | '-' not taken, one char per take),
# take pttls, take dumps (for the 'd' ones, in order), keys, values (false when not a string), types ('s' string
# | 'w' another type | '-' gone, one char per key; '' when all are strings), pttls (empty when not read)}.
LUA_PAGE_CORRUPT = _LUA_BATCH + """
local t0 = redis.call('TIME')
local nt, tk, tp, td = tonumber(ARGV[6]), {}, {}, {}
for i = 0, nt - 1 do
  local k, want, flag = ARGV[7 + 3 * i], ARGV[8 + 3 * i], ARGV[9 + 3 * i]
  local kind, ttl = '-', -2
  if flag == 'w' then
    local ty = redis.call('TYPE', k)['ok']
    if ty ~= 'none' and ty ~= 'string' then
      td[#td + 1] = redis.call('DUMP', k)
      kind, ttl = 'd', redis.call('PTTL', k)
      redis.call('UNLINK', k)
    end
  elseif redis.pcall('GET', k) == want then
    local left = redis.call('PTTL', k)
    if flag ~= 't' or left == -1 then
      kind, ttl = 'v', left
      redis.call('UNLINK', k)
    end
  end
  tk[i + 1], tp[i + 1] = kind, ttl
end
local cursor, keys, vals, types, ttls = ARGV[2], {}, {}, '', {}
if cursor ~= '' then
  local call = redis.call
  local page = call('SCAN', cursor, 'MATCH', ARGV[3], 'COUNT', ARGV[4])
  cursor, keys = page[1], page[2]
  local n = #keys
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
  if odd then  -- not every key a string: say which ('' = all strings, the common page)
    local tys = {}
    for i = 1, n do
      local ty = 's'
      if not vals[i] then
        ty = '-'
        if type(redis.pcall('GET', keys[i])) == 'table' then ty = 'w' end
      end
      tys[i] = ty
    end
    types = table.concat(tys)
  end
  if ARGV[5] == '1' then
    for i = 1, n do ttls[i] = call('PTTL', keys[i]) end
  end
end
local t1 = redis.call('TIME')
return {cursor, #keys, t0[1] * 1000 + math.floor(t0[2] / 1000), (t1[1] - t0[1]) * 1000000 + t1[2] - t0[2],
        table.concat(tk), tp, td, keys, vals, types, ttls}
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


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timeline_entry(action, target, detail):
    return dict(ts=_now_iso(), action=action, target=target, detail=one_line(detail, 500))


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
    """Append-only JSONL backup, created exclusively with mode 0600, written and flushed after every page (the purge
    writes a page while the server already works on the next one); close() fsyncs."""

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self.count = 0
        self.fh = None

    def _open(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise P3Error("cannot create the backup file %s: %s" % (self.path, one_line(e.strerror or e)))
        self.fh = os.fdopen(fd, "wb")
        self.fh.write(json.dumps(self.header, sort_keys=True).encode("utf-8") + b"\n")

    def check(self):
        """Fail before anything is removed when the file cannot be created (then remove the empty probe file)."""
        self._open()
        self.fh.close()
        self.fh = None
        os.unlink(self.path)

    def write_page(self, taken, node, server_now):
        """Append a page: (key, reason, kind 'v'|'d', payload, pttl) tuples, as the take scripts returned them;
        server_now is the server's clock (ms) when the page was taken: the absolute expiry is server_now + pttl."""
        if not taken:
            return
        try:
            if self.fh is None:
                self._open()
            b64, node_b, reasons = binascii.b2a_base64, node.encode("utf-8"), {}
            lines = []
            append = lines.append
            for key, reason, kind, payload, pttl in taken:
                reason_b = reasons.get(reason)
                if reason_b is None:
                    reason_b = reasons[reason] = reason.encode("utf-8")
                if (key.__class__ is bytes and payload.__class__ is bytes and pttl.__class__ is int and pttl >= 0
                        and kind in ("v", b"v")):  # the common line, without the checks below (same bytes)
                    append(_LINE_VALUE % (b64(key, newline=False), b64(payload, newline=False), pttl,
                                          server_now + pttl, node_b, reason_b))
                    continue
                pttl = int(pttl) if pttl is not None else -1
                if not isinstance(payload, bytes):
                    payload = str(payload).encode("utf-8")
                if not isinstance(key, bytes):
                    key = str(key).encode("utf-8")
                append(_LINE % (
                    b64(key, newline=False), b"dump" if kind in (b"d", "d") else b"value",
                    b64(payload, newline=False), pttl, b"null" if pttl < 0 else b"%d" % (server_now + pttl),
                    node_b, reason_b))
            self.fh.write(b"".join(lines))
            self.fh.flush()
        except BackupError:
            raise
        except P3Error as e:
            raise BackupError(e.msg)
        except (IOError, OSError, ValueError) as e:
            raise BackupError("writing the backup file %s failed: %s" % (self.path, one_line(e, 200)))
        self.count += len(taken)

    def close(self):
        if self.fh is not None:
            self.fh.flush()
            try:
                os.fsync(self.fh.fileno())
            except OSError:
                pass
            self.fh.close()
            self.fh = None


def backup_path(backup_dir, mode, now=None):
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    return os.path.join(backup_dir, "sessions-%s-%s.jsonl" % (mode, stamp))


def read_backup(path):
    """Yield the entries of a backup file as dicts (key, dump as bytes, pttl, expire_at_ms, node, reason).
    Raises P3Error for a missing file or a malformed line (naming the line)."""
    try:
        fh = open(path, "r")
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
        for lineno, line in enumerate(fh, 2):
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
            except (ValueError, KeyError, TypeError) as e:
                raise P3Error("%s line %d is not a backup entry: %s" % (path, lineno, one_line(e, 120)))
    return header, entries


# ---------------------------------------------------------------------------------------------------------------
# Purge
# ---------------------------------------------------------------------------------------------------------------

class _Wire(object):
    """One connection of a node client (one cursor stream) that keeps one script call in flight: the next page is
    requested before the previous reply is processed (classify(), backup), so the server and this process work at
    the same time.
    redis-py's own pipelines wait for every reply, hence the connection-level send/read."""

    def __init__(self, client, script, cluster):
        self.batch = "0" if cluster else "1"
        self.sha = client.script_load(script)  # EVALSHA: the server does not hash the script text every page
        self.pool = client.connection_pool
        try:
            self.conn = self.pool.get_connection()
        except TypeError:  # redis-py < 5.1: the command name is a required argument
            self.conn = self.pool.get_connection("EVALSHA")
        self.script = script
        self.args = None
        self.in_flight = False

    def send(self, args):
        self.args = args
        self.conn.send_command("EVALSHA", self.sha, 0, self.batch, *args)
        self.in_flight = True

    def read(self):
        try:
            reply = self.conn.read_response()
        except Exception as e:  # NOSCRIPT: the script cache was flushed meanwhile; the same call with the text
            if not str(e).startswith("No matching script"):
                raise
            self.conn.send_command("EVAL", self.script, 0, self.batch, *self.args)
            reply = self.conn.read_response()
        self.in_flight = False
        return reply

    def close(self):
        if self.in_flight:  # a failure with a reply outstanding: the connection's state is unknown
            self.conn.disconnect()
        self.pool.release(self.conn)


def _int(value):
    return int(value) if value is not None else 0


class _Run(object):
    """State shared by the masters of one purge: counts, cap, backup, progress. The masters are worked at the same
    time (one call in flight on each); everything here runs in this one thread."""

    def __init__(self, params, mode, max_keys, writer, check_mode, progress):
        self.pattern = params["pattern"]
        self.count = int(params["scan_count"])
        fields = params.get("required_fields")
        self.kw = dict(required_fields=list(fields) if fields is not None else list(DEFAULT_FIELDS),
                       expiry_field=params.get("expiry_field"), require_ttl=params.get("require_ttl", True))
        self.judge = Judge(**self.kw)
        self.cluster = False
        self.mode = mode
        self.max_keys = max_keys
        self.writer = writer
        self.check_mode = check_mode
        self.progress = progress
        self.stats = dict(scanned=0, matched=0, removed=0, vanished=0, pages=0)
        self.by_reason = {}
        self.capped = False
        self.max_page_ms = 0.0
        self.total = 0      # removed so far, every master
        self.pending = 0    # mode corrupt: judged corrupt, their take not answered yet (every master)
        self.reserved = 0   # mode all: limits of the calls in flight (every master)
        self.in_flight = 0  # calls in flight (every master)
        self.judged = {}    # mode corrupt: address -> keys counted as corrupt there (at most max_keys in all)

    def page_done(self, node, busy_us):
        self.stats["pages"] += 1
        self.max_page_ms = max(self.max_page_ms, _int(busy_us) / 1000.0)
        if self.progress is not None:
            self.progress(self.stats, node)

    def record(self, node, address, server_ms, taken):
        """taken: (key, reason, kind, payload, pttl) of keys removed (in check mode: that would be)."""
        if not taken:
            return
        node["removed"] += len(taken)
        self.total += len(taken)
        if self.mode == "all":
            self.by_reason["all"] = self.by_reason.get("all", 0) + len(taken)
        else:
            for item in taken:
                self.by_reason[item[1]] = self.by_reason.get(item[1], 0) + 1

    def write(self, address, server_ms, taken):
        if taken and self.writer is not None:
            self.writer.write_page(taken, address, server_ms)


# What a node's walker (a generator) yields to the scheduler in purge(): SENT = a call is in flight, read its reply
# and send it in; WAIT = resume me (with None) when no other master has a call in flight.
_SENT, _WAIT = "sent", "wait"


# Every master is walked by SCAN_STREAMS (params scan_streams: 1, 2 or 4) script streams at once, each on its own
# connection with one call in flight: while one stream's reply travels to this process and the next call travels
# back, the server works on the other stream's page instead of waiting. SCAN's cursor is a reversed bucket index
# whose lowest bits change only after every higher bit has been visited (also while the table grows, shrinks or
# rehashes), so stream r starts at cursor r and is done when the cursor returns to 0 or its lowest bits are no
# longer r: the streams split the table between them with the same guarantee as one SCAN (every key present
# throughout is returned at least once). One SCAN call visits buckets until it has COUNT keys, so a stream's last
# call can run on into the next stream's first buckets (and a table smaller than the streams gives some buckets
# to two of them): in mode all the page script removes what it returns, so a key is never returned twice; mode
# corrupt counts and takes a key judged twice on a node once (_Run.judged).
SCAN_STREAMS = 2


def _more(cursor, start, mask):
    """Whether a stream that started at cursor `start` continues at `cursor` (see SCAN_STREAMS)."""
    cursor = int(cursor)
    return cursor != 0 and (cursor & mask) == start


def _walk_all(run, client, wire, node, address, start=0, mask=0):
    """Mode all on one master: LUA_PAGE_ALL page after page, the next page in flight while this one's backup is
    written. The cap is exact: each call's limit is reserved until its reply is counted; a call gets at most 20
    pages' worth (far more than one SCAN page returns), so every master can have one in flight; when less than
    that is left, a call waits until it is the only one in flight and then gets all that is left."""
    if run.check_mode:
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor=cursor, match=run.pattern, count=run.count)
            room = max(0, run.max_keys - run.total)
            node["scanned"] += len(keys)
            node["matched"] += len(keys)
            node["removed"] += min(room, len(keys))
            run.total += min(room, len(keys))
            run.by_reason["all"] = run.by_reason.get("all", 0) + min(room, len(keys))
            run.capped = run.capped or len(keys) > room
            run.page_done(node, 0)
            if run.capped or int(cursor) == 0:
                return
    share = run.count * 20
    cursor = start
    while True:
        # a limit for the next call
        free = run.max_keys - run.total - run.reserved
        while free < share and run.in_flight > 0:
            yield _WAIT
            free = run.max_keys - run.total - run.reserved
        # limit 0 once max_keys are removed: the page then only says whether more keys exist (capped)
        limit = max(0, min(free, share))
        wire.send([cursor, run.pattern, run.count, limit])
        run.reserved += limit
        run.in_flight += 1
        try:
            reply = yield _SENT
        finally:
            run.reserved -= limit
            run.in_flight -= 1
        while True:
            cursor, scanned, over, server_ms, busy_us, keys, kinds, payloads, ttls = reply
            node["scanned"] += _int(scanned)
            node["matched"] += len(keys) + _int(over)
            run.capped = run.capped or _int(over) > 0
            taken = [(k, "all", kind, v, t)
                     for k, kind, v, t in zip(keys, _text(kinds) or "v" * len(keys), payloads, ttls)]
            run.record(node, address, _int(server_ms), taken)
            if run.capped or not _more(cursor, start, mask):
                run.write(address, _int(server_ms), taken)
                run.page_done(node, busy_us)
                return
            free = run.max_keys - run.total - run.reserved
            if free < share and run.in_flight > 0:
                run.write(address, _int(server_ms), taken)
                run.page_done(node, busy_us)
                break  # wait for the others, above
            # the next page goes out before this one's backup is written: the server works meanwhile
            limit = max(0, min(free, share))
            wire.send([cursor, run.pattern, run.count, limit])
            run.reserved += limit
            run.in_flight += 1
            run.write(address, _int(server_ms), taken)
            run.page_done(node, busy_us)
            try:
                reply = yield _SENT
            finally:
                run.reserved -= limit
                run.in_flight -= 1


def _walk_corrupt(run, client, wire, node, address, start=0, mask=0):
    """Mode corrupt on one master: LUA_PAGE_CORRUPT reads a page (values, types, TTLs); Judge (classify()'s rule,
    the census's too) judges it here while the server already reads the next one; the keys judged corrupt ride
    along with a later call, which takes each only if it is still exactly what was judged (see LUA_PAGE_CORRUPT),
    so nothing valid is ever removed because it changed in between. The cap is counted here, across masters:
    keys judged but not yet taken count against it until their take is answered."""
    with_ttl = "1" if run.kw["require_ttl"] else "0"
    ready = []      # judged corrupt, not sent yet: (key, value, flag, reason)
    sent = []       # sent with the call in flight

    def send(cursor):
        args = [cursor, run.pattern, run.count, with_ttl, len(sent)]
        for key, value, flag, dummy in sent:
            args.extend((key, value if value is not None else "", flag))
        wire.send(args)

    send(start)
    scanning = True
    while True:
        try:
            reply = yield _SENT
        finally:
            run.pending -= len(sent)
        (cursor, scanned, server_ms, busy_us, tkinds, tpttls, tdumps, keys, values, types, pttls) = reply
        server_ms = _int(server_ms)
        taken, dumps = [], list(tdumps or [])
        for (key, value, dummy, reason), kind, pttl in zip(sent, _text(tkinds), tpttls or []):
            if kind == "v":
                taken.append((key, reason, "v", value, pttl))
            elif kind == "d":
                taken.append((key, reason, "d", dumps.pop(0), pttl))
            else:
                run.stats["vanished"] += 1
        sent = []
        if scanning:
            node["scanned"] += _int(scanned)
            scanning = _more(cursor, start, mask) and not run.capped
        flying = False
        if scanning or ready:  # the next call right away: this page is judged while the server works on it
            sent, ready = ready, []
            send(cursor if scanning else "")
            flying = True
        run.record(node, address, server_ms, taken)
        run.write(address, server_ms, taken)
        if keys:
            room = run.max_keys - run.total - run.pending
            types = _text(types) or "s" * len(keys)
            strings = [i for i, ty in enumerate(types) if ty == "s"]
            if len(strings) == len(keys):
                corrupt = run.judge.page(values, pttls if with_ttl == "1" else [0] * len(keys), server_ms)
            else:
                corrupt = [(strings[j], reason) for j, reason in run.judge.page(
                    [values[i] for i in strings], [pttls[i] if with_ttl == "1" else 0 for i in strings],
                    server_ms)]
                corrupt += [(i, "wrong-type") for i, ty in enumerate(types) if ty == "w"]
                corrupt.sort()
            judged = run.judged.setdefault(address, set())
            for i, reason in corrupt:
                if keys[i] in judged:  # the other stream's page returned it too (see SCAN_STREAMS): counted once
                    continue
                node["matched"] += 1
                if room <= 0:
                    run.capped = True
                    continue
                room -= 1
                judged.add(keys[i])
                if run.check_mode:
                    run.record(node, address, server_ms, [(keys[i], reason, None, None, None)])
                else:
                    flag = "w" if reason == "wrong-type" else ("t" if reason == "no-ttl" else "v")
                    ready.append((keys[i], values[i], flag, reason))
                    run.pending += 1
        run.page_done(node, busy_us)
        if not flying:
            if not ready:
                return
            sent, ready = ready, []  # the last page's takes
            send("")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def purge(settings, params, mode="corrupt", max_keys=1000, backup_file=None, check_mode=False, progress=None):
    """Remove the session keys that fail validation (mode corrupt) or every key matching the pattern (mode all),
    on every master, page by page; see the session_purge RETURN docs. backup_file None = no backup (gated by the
    caller)."""
    check_options(params)
    per_master = params.get("scan_streams") or SCAN_STREAMS
    if per_master not in (1, 2, 4):  # a power of two: the streams split the cursor by its lowest bits
        raise P3Error("scan_streams must be 1, 2 or 4, got %s" % per_master)
    masters, unreadable, cluster, dummy = keyspace_nodes(settings)
    writer = None
    run = _Run(params, mode, max_keys, None, check_mode, progress)
    run.cluster = cluster
    if backup_file and not check_mode:
        writer = BackupWriter(backup_file, dict(
            format=BACKUP_FORMAT, version=BACKUP_VERSION, created=_now_iso(), pattern=run.pattern, mode=mode,
            source=masters, required_fields=params.get("required_fields"), require_ttl=run.kw["require_ttl"]))
        writer.check()
        run.writer = writer
    nodes = []
    walkers = []
    t0 = time.monotonic()

    def finish(w, error=None):
        if error is not None:
            w["node"]["error"] = error.msg if isinstance(error, P3Error) else describe_redis_error(error, settings)
        w["state"] = None
        w["gen"].close()  # gives back a reservation it still holds
        if w["wire"] is not None:
            w["wire"].close()
        w["node"]["seconds"] = round(time.monotonic() - w["t0"], 3)

    def step(w, value):
        try:
            w["state"] = w["gen"].send(value)
        except StopIteration:
            finish(w)
        except BackupError:
            raise  # every master stops: nothing more is removed without its backup
        except Exception as e:
            finish(w, e)

    try:
        # every master at once, SCAN_STREAMS script calls in flight on each: a cluster's masters work in parallel
        for address in masters:
            node = dict(address=address, scanned=0, matched=0, removed=0, seconds=0.0, error=None)
            nodes.append(node)
            streams = 1 if mode == "all" and check_mode else per_master
            walk, script = (_walk_all, LUA_PAGE_ALL) if mode == "all" else (_walk_corrupt, LUA_PAGE_CORRUPT)
            client = None
            for start in range(streams):
                w = dict(node=node, wire=None, gen=None, state=None, t0=time.monotonic())
                try:
                    if client is None:  # one client per master; each stream's _Wire takes a connection of its pool
                        client = _client(settings, address)
                    if not (mode == "all" and check_mode):
                        w["wire"] = _Wire(client, script, cluster)
                    w["gen"] = walk(run, client, w["wire"], node, address, start, streams - 1)
                except Exception as e:
                    node["error"] = e.msg if isinstance(e, P3Error) else describe_redis_error(e, settings)
                    if w["wire"] is not None:
                        w["wire"].close()
                    break
                walkers.append(w)
                step(w, None)
        while True:
            flying = [w for w in walkers if w["state"] == _SENT]
            for w in flying:
                try:
                    reply = w["wire"].read()
                except Exception as e:
                    finish(w, e)
                    continue
                step(w, reply)
            if not any(w["state"] == _SENT for w in walkers):
                waiting = [w for w in walkers if w["state"] == _WAIT]
                if not waiting:
                    break
                step(waiting[0], None)
    finally:
        for w in walkers:
            if w["state"] is not None:
                finish(w)
        if writer is not None:
            writer.close()
    for node in nodes:
        for k in ("scanned", "matched", "removed"):
            run.stats[k] += node[k]
    seconds = time.monotonic() - t0
    stats = run.stats
    errors = ["%s: %s" % (n["address"], n["error"]) for n in nodes if n["error"]]
    return dict(
        pattern=run.pattern,
        mode=mode,
        cluster=cluster,
        scanned=stats["scanned"],
        matched=stats["matched"],
        removed=stats["removed"],
        vanished=stats["vanished"],
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
        backup=dict(path=backup_file, entries=writer.count) if writer is not None and writer.count else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------------------------

def _key_slot(key):
    from redis.crc import key_slot
    return key_slot(key)


def restore(settings, path, replace=False, check_mode=False, batch=500):
    """Put the keys of a backup file back, each on the master that owns its slot now: strings with
    SET key value [PXAT expire_at_ms] [NX], other types with RESTORE key expire_at_ms payload ABSTTL [REPLACE].

    Per key: identical (the key exists with the same value / DUMP payload: nothing to do), conflict (another value
    exists and replace is false), expired (its TTL ran out since the backup), restored. See session_restore RETURN.
    """
    header, entries = read_backup(path)
    masters, unreadable, cluster, verdict = keyspace_nodes(settings)
    owners = slot_owners(verdict) if cluster else []

    def owner(key):
        if not cluster:
            return masters[0] if masters else None
        slot = _key_slot(key)
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
    return out


def require_redis(module):
    if not HAS_REDIS:
        from ansible.module_utils.basic import missing_required_lib
        module.fail_json(msg=missing_required_lib("redis"))
