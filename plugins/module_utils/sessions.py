# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Session keyspace plumbing of p3.recovery (runbook scenario 1, Session Bridge Failure): the validation rule,
the SCAN census over every master, the selective non-blocking purge with a backup, and the restore.

Never KEYS. The purge walks every master one page at a time with one small Lua script per page: the script runs
SCAN <cursor> MATCH <pattern> COUNT <scan_count> on its node, judges each key with the rule of classify() (mode
corrupt; values it cannot judge exactly - non-ASCII bytes, ISO 8601 expiries - go back to classify() and are taken
by LUA_TAKE_IF_SAME only if unchanged), and takes the chosen keys atomically: GET (strings) or DUMP (other types),
PTTL, UNLINK. So the server-side work per call is bounded by scan_count, no key travels to the server, and the
backup holds exactly what was removed.

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
    scan_count=dict(type="int", default=200),
)

# Taking a key (Lua, shared by the scripts below): a string's value (GET: cheap, restored with SET ... PXAT) or,
# for another type, its DUMP payload (restored with RESTORE ... ABSTTL); then PTTL and UNLINK. Appends
# key, kind ('v' value | 'd' dump), payload, pttl to `out`; returns false when the key is gone.
_LUA_TAKE = """
local function take_key(k, out, value)
  local kind, payload = 'v', value
  if payload == nil then
    payload = redis.pcall('GET', k)
    if type(payload) == 'table' then
      kind, payload = 'd', redis.call('DUMP', k)
    end
  end
  if not payload then return false end
  out[#out + 1] = k
  out[#out + 1] = kind
  out[#out + 1] = payload
  out[#out + 1] = redis.call('PTTL', k)
  redis.call('UNLINK', k)
  return true
end
"""

# One page of mode all, server-side: SCAN <cursor> MATCH <pattern> COUNT <count> on this node, then take each key
# found, at most <limit>. One call per page: the work per call is bounded by COUNT, no key travels to the server,
# and the backup holds exactly what was removed. Returns {cursor, scanned, over, [key, kind, payload, pttl, ...]}.
# ARGV: cursor, pattern, count, limit.
LUA_PAGE_ALL = _LUA_TAKE + """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys, limit, out, over, n = page[2], tonumber(ARGV[4]), {}, 0, 0
for i = 1, #keys do
  if n >= limit then
    over = over + 1
  elseif take_key(keys[i], out) then
    n = n + 1
  end
end
return {page[1], #keys, over, out}
"""

# For (key, fingerprint) pairs: a key is taken only if it still is what was judged corrupt - a string whose SHA1 is
# the fingerprint, or (empty fingerprint) a key of another type than string. Returns [key, kind, payload, pttl, ...].
LUA_TAKE_IF_SAME = _LUA_TAKE + """
local out = {}
for i = 1, #ARGV, 2 do
  local k, want = ARGV[i], ARGV[i + 1]
  local t = redis.call('TYPE', k)['ok']
  if want == '' then
    if t ~= 'none' and t ~= 'string' then take_key(k, out) end
  elseif t == 'string' then
    local v = redis.call('GET', k)
    if redis.sha1hex(v) == want then take_key(k, out, v) end
  end
end
return out
"""

# Judge a page of keys (ARGV after the options) with the rule of classify(), on the server, and take (DUMP + PTTL
# + UNLINK) the corrupt ones atomically, at most `limit`. Values the script cannot judge exactly like classify()
# (non-ASCII bytes: UTF-8 validity; an expiry given as a non-numeric string: ISO 8601) come back undecided, for
# classify() and LUA_TAKE_IF_SAME. Like LUA_PAGE_ALL it SCANs one page itself. Returns
# {cursor, scanned, over, [key, kind, payload, pttl, ...], [reason, ...], [undecided key, ...]} (reasons in the
# order of the taken keys).
# ARGV: take (1/0), now_ms, require_ttl (1/0), expiry_field, limit, cursor, pattern, count, n_fields, fields...
LUA_JUDGE = _LUA_TAKE + """
local take, now, require_ttl = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[3] == '1'
local efield, limit, nf = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[9])
local page = redis.call('SCAN', ARGV[6], 'MATCH', ARGV[7], 'COUNT', ARGV[8])
local keys = page[2]
local fields = {}
for j = 1, nf do fields[j] = ARGV[9 + j] end
local taken, reasons, undecided, over, n = {}, {}, {}, 0, 0
for i = 1, #keys do
  local k = keys[i]
  local reason, v = nil, redis.pcall('GET', k)
  if not v then
    reason = nil
  elseif type(v) == 'table' then
    reason, v = 'wrong-type', nil
  else
    if string.find(v, '[\\128-\\255]') then
      reason = '?'
    else
      local ok, obj = pcall(cjson.decode, v)
      if not ok then
        reason = 'not-json'
      elseif type(obj) ~= 'table' or string.match(v, '^[ \\t\\r\\n]*(.)') ~= '{' then
        reason = 'not-object'
      else
        for j = 1, nf do
          if obj[fields[j]] == nil then reason = 'missing-fields' break end
        end
        if not reason and efield ~= '' then
          local e = obj[efield]
          if type(e) == 'string' then
            if string.match(e, '^[ \\t\\r\\n]*%-?%d+%.?%d*[ \\t\\r\\n]*$') then e = tonumber(e) else reason = '?' end
          end
          if not reason then
            if type(e) ~= 'number' or e ~= e or e == math.huge or e == -math.huge then
              reason = 'bad-expiry'
            else
              if math.abs(e) < 1e11 then e = e * 1000 end
              if e >= 0 then e = math.floor(e) else e = math.ceil(e) end
              if e <= now then reason = 'expired' end
            end
          end
        end
        if not reason and require_ttl and redis.call('PTTL', k) == -1 then reason = 'no-ttl' end
      end
    end
  end
  if reason == '?' then
    undecided[#undecided + 1] = k
  elseif reason then
    if n >= limit then
      over = over + 1
    else
      n = n + 1
      if take then
        take_key(k, taken, v)
      else
        taken[#taken + 1] = k
        taken[#taken + 1] = 'v'
        taken[#taken + 1] = ''
        taken[#taken + 1] = 0
      end
      reasons[#reasons + 1] = reason
    end
  end
end
return {page[1], #keys, over, taken, reasons, undecided}
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


def _fingerprint(raw):
    import hashlib
    return hashlib.sha1(raw).hexdigest()


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
                        reason = classify(raw, pttl, now_ms=now, **kw)
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

class BackupWriter(object):
    """Append-only JSONL backup, created exclusively with mode 0600, flushed after every page.

    Pages are encoded and written by a background thread (bounded queue of 4 pages), so the base64 work overlaps
    the next page's round trip to Redis; close() waits for every queued page and re-raises a write error.
    """

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self.count = 0
        self.fh = None
        self._queue = None
        self._thread = None
        self._error = None

    def _worker(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write(*item)
                except Exception as e:  # re-raised by put() / close()
                    self._error = e

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, P3Error):
                raise error
            raise P3Error("writing the backup file %s failed: %s" % (self.path, one_line(error, 200)))

    def _open(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise P3Error("cannot create the backup file %s: %s" % (self.path, one_line(e.strerror or e)))
        self.fh = os.fdopen(fd, "w")
        self.fh.write(json.dumps(self.header, sort_keys=True) + "\n")

    def check(self):
        """Fail before anything is removed when the file cannot be created (then remove the empty probe file)."""
        self._open()
        self.fh.close()
        self.fh = None
        os.unlink(self.path)

    def write_page(self, taken, node, server_now):
        """Queue a page: (key, reason, kind 'v'|'d', payload, pttl) tuples, as the take scripts returned them."""
        if not taken:
            return
        self._raise()
        if self._thread is None:
            import queue
            import threading
            self._open()
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._worker, name="p3-session-backup")
            self._thread.daemon = True
            self._thread.start()
        self.count += len(taken)
        self._queue.put((taken, node, server_now))

    def _write(self, taken, node, server_now):
        lines = []
        for key, reason, kind, payload, pttl in taken:
            pttl = int(pttl) if pttl is not None else -1
            expire = (server_now + pttl) if pttl > 0 else None
            lines.append('{"key":"%s","%s":"%s","pttl":%d,"expire_at_ms":%s,"node":"%s","reason":"%s"}\n' % (
                _b64(key), "dump" if kind in (b"d", "d") else "value", _b64(payload), pttl,
                "null" if expire is None else "%d" % expire, node, reason))
        self.fh.write("".join(lines))
        self.fh.flush()

    def close(self):
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.fh is not None:
            self.fh.flush()
            try:
                os.fsync(self.fh.fileno())
            except OSError:
                pass
            self.fh.close()
            self.fh = None
        self._raise()


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

def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _take_undecided(client, script, keys, now, kw, room, check_mode):
    """classify() the keys LUA_JUDGE left undecided and take the corrupt ones (LUA_TAKE_IF_SAME: only if unchanged).
    Returns ([(key, reason, dump, pttl)], corrupt keys over the cap)."""
    values, ttls = _read_page(client, keys)
    chosen, reasons, args = [], {}, []
    for key, raw, pttl in zip(keys, values, ttls):
        if raw is None or (isinstance(pttl, int) and pttl == -2):
            continue
        if isinstance(raw, Exception) and "WRONGTYPE" not in str(raw):
            raise raw
        reason = classify(raw, pttl, now_ms=now, **kw)
        if reason is None:
            continue
        chosen.append(key)
        reasons[key] = reason
        args.extend([key, "" if isinstance(raw, Exception) else _fingerprint(raw)])
    over = max(0, len(chosen) - max(0, room))
    if over:
        chosen = chosen[:max(0, room)]
        args = args[:2 * len(chosen)]
    if not chosen:
        return [], over
    if check_mode:
        return [(k, reasons[k], None, None, None) for k in chosen], over
    flat = script(args=args)
    return [(k, reasons[k], kind, v, t) for k, kind, v, t in zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4])], over


def purge(settings, params, mode="corrupt", max_keys=1000, backup_file=None, check_mode=False, progress=None):
    """Remove the session keys that fail validation (mode corrupt) or every key matching the pattern (mode all),
    on every master, page by page; see the session_purge RETURN docs. backup_file None = no backup (gated by the
    caller)."""
    check_options(params)
    masters, unreadable, cluster, dummy = keyspace_nodes(settings)
    pattern = params["pattern"]
    count = int(params["scan_count"])
    kw = dict(required_fields=params.get("required_fields"), expiry_field=params.get("expiry_field"),
              require_ttl=params.get("require_ttl", True))
    writer = None
    if backup_file and not check_mode:
        writer = BackupWriter(backup_file, dict(
            format=BACKUP_FORMAT, version=BACKUP_VERSION, created=_now_iso(), pattern=pattern, mode=mode,
            source=masters, required_fields=kw["required_fields"], require_ttl=kw["require_ttl"]))
        writer.check()
    stats = dict(scanned=0, matched=0, removed=0, vanished=0, pages=0)
    by_reason = {}
    nodes = []
    capped = False
    max_page_ms = 0.0
    t0 = time.monotonic()
    try:
        for address in masters:
            if capped:
                break
            node = dict(address=address, scanned=0, matched=0, removed=0, seconds=0.0, error=None)
            nodes.append(node)
            n0 = time.monotonic()
            try:
                client = _client(settings, address)
                page_all = client.register_script(LUA_PAGE_ALL)
                judge = client.register_script(LUA_JUDGE)
                take_if_same = client.register_script(LUA_TAKE_IF_SAME)
                now = _server_ms(client)
                fields = list(kw["required_fields"] if kw["required_fields"] is not None else DEFAULT_FIELDS)
                judge_opts = ["0" if check_mode else "1", now, "1" if kw["require_ttl"] else "0",
                              kw["expiry_field"] or "", 0, 0, pattern, count, len(fields)] + fields
                cursor = b"0"
                while True:
                    room = max_keys - stats["removed"] - node["removed"]
                    taken = []  # (key, reason, kind, payload, pttl)
                    p0 = time.monotonic()
                    if mode == "all" and check_mode:
                        cursor, keys = client.scan(cursor=cursor, match=pattern, count=count)
                        scanned, over = len(keys), max(0, len(keys) - room)
                        taken = [(k, "all", None, None, None) for k in keys[:room]]
                    elif mode == "all":
                        cursor, scanned, over, flat = page_all(args=[cursor, pattern, count, room])
                        taken = [(k, "all", kind, v, t)
                                 for k, kind, v, t in zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4])]
                    else:
                        judge_opts[4], judge_opts[5] = room, cursor
                        cursor, scanned, over, flat, reasons, undecided = judge(args=judge_opts)
                        taken = [(k, _text(r), kind, v, t) for (k, kind, v, t), r in
                                 zip(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4]), reasons)]
                        if undecided:
                            more, more_over = _take_undecided(client, take_if_same, undecided, now, kw,
                                                              room - len(taken), check_mode)
                            taken.extend(more)
                            over = int(over) + more_over
                    max_page_ms = max(max_page_ms, (time.monotonic() - p0) * 1000.0)
                    stats["pages"] += 1
                    node["scanned"] += int(scanned)
                    node["matched"] += len(taken) + int(over)
                    capped = capped or int(over) > 0
                    if taken and writer is not None and not check_mode:
                        writer.write_page(taken, address, now)
                    node["removed"] += len(taken)
                    for _k, r, _kind, _v, _t in taken:
                        by_reason[r] = by_reason.get(r, 0) + 1
                    if progress is not None:
                        progress(stats, node)
                    if capped or int(cursor) == 0:
                        break
            except P3Error as e:
                node["error"] = e.msg
            except Exception as e:
                node["error"] = describe_redis_error(e, settings)
            node["seconds"] = round(time.monotonic() - n0, 3)
            for k in ("scanned", "matched", "removed"):
                stats[k] += node[k]
    finally:
        if writer is not None:
            writer.close()
    seconds = time.monotonic() - t0
    errors = ["%s: %s" % (n["address"], n["error"]) for n in nodes if n["error"]]
    return dict(
        pattern=pattern,
        mode=mode,
        cluster=cluster,
        scanned=stats["scanned"],
        matched=stats["matched"],
        removed=stats["removed"],
        vanished=stats["vanished"],
        by_reason=by_reason,
        capped=capped,
        max_keys=max_keys,
        pages=stats["pages"],
        seconds=round(seconds, 3),
        keys_per_second=round(stats["removed"] / seconds, 1) if seconds > 0 else None,
        max_page_ms=round(max_page_ms, 2),
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
