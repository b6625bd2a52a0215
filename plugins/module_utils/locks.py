# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run-level recovery locks: one lock per resource, kept in a shared store so it holds across controllers and AWX
nodes, and expiring by itself when the run that took it is killed.

Two stores, one API (acquire / release / read):

- redis: a key ``{p3recovery}:lock:<resource>`` taken with ``SET NX PX`` (one Lua script: take, or renew when the
  same run holds it, or report the holder), released with compare-and-delete (only while it is still ours). All
  locks share one hash tag, so one slot: on a Redis Cluster that slot's master must serve. A cluster with a failed
  master or uncovered slots refuses every key command (CLUSTERDOWN, also for the slots it still covers), so a lock
  that must hold while Redis itself is broken belongs in PostgreSQL.
- postgres: a row of a lock table (``p3_recovery_locks`` by default, created when missing), taken with
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE the row is ours or expired``, so the database's own clock decides
  expiry. A superuser still gets in through the reserved slots while the app exhausts the rest. (A session-level
  advisory lock would die with the connection of the module that took it: Ansible runs each task in its own
  process.)

A lock is identified by a run id (random, one per playbook run) and carries a display owner (user@host, AWX job,
pid, playbook) and the time it was taken, so a locked-out run can say who recovers and since when.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import getpass
import json
import os
import re
import socket
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, close_quietly, hostport, num_text, one_line
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import describe_redis_error, key_node_client

KEY_PREFIX = "{p3recovery}:lock:"
DEFAULT_TABLE = "p3_recovery_locks"
_RESOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,199}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def utc_iso(ts=None):
    ts = time.time() if ts is None else ts
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_resource(name):
    if not name or not _RESOURCE.match(str(name)):
        raise P3Error("resource must be 1-200 characters of letters, digits and _.:@/- (got %r)" % one_line(name, 60))
    return str(name)


def check_table(name):
    if not name or not _TABLE.match(str(name)):
        raise P3Error("table must be an identifier, optionally schema-qualified (got %r)" % one_line(name, 60))
    return str(name)


def default_owner(environ=None, purpose=None):
    """Who holds a lock, for humans: user@host, the AWX/Tower job when there is one, the pid, the purpose."""
    environ = os.environ if environ is None else environ
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = environ.get("USER") or "uid%d" % os.getuid()
    parts = ["%s@%s" % (user, socket.gethostname())]
    job = environ.get("AWX_JOB_ID") or environ.get("JOB_ID") or environ.get("TOWER_JOB_ID")
    if job:
        parts.append("AWX job %s" % job)
    parts.append("pid %d" % os.getppid())
    text = ", ".join(parts)
    if purpose:
        text += " (%s)" % one_line(purpose, 120)
    return text


def holder_text(resource, holder):
    """'redis-cluster is already being recovered by X since T (lock expires in N s)'."""
    return "%s is already being recovered by %s since %s (lock expires in %ss unless renewed)" % (
        resource, holder.get("owner") or "an unknown run", holder.get("since") or "an unknown time",
        num_text(round(holder.get("expires_in") or 0, 1)))


# ---------------------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------------------

# KEYS[1] lock key; ARGV: run id, value (JSON), ttl ms. Returns {state, value, pttl}: 1 taken, 2 renewed (ours),
# 0 held by another run.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, ARGV[2], tonumber(ARGV[3])}
end
local ok, cur = pcall(cjson.decode, v)
if ok and type(cur) == 'table' and cur['run_id'] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {2, v, tonumber(ARGV[3])}
end
return {0, v, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] lock key; ARGV: run id, ttl ms. Compare-and-set: extends the TTL only while the key holds this run's id.
# Returns {1, value, pttl} renewed, {0, value|false, pttl} not ours (another run's, or gone: expired or released).
_RENEW = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, false, -2} end
local ok, cur = pcall(cjson.decode, v)
if ok and type(cur) == 'table' and cur['run_id'] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, v, tonumber(ARGV[2])}
end
return {0, v, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] lock key; ARGV[1] run id ('' = whoever holds it). Returns {1, value} deleted, {0, value|false} not ours.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, false} end
local ok, cur = pcall(cjson.decode, v)
if ARGV[1] == '' or (ok and type(cur) == 'table' and cur['run_id'] == ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return {1, v}
end
return {0, v}
"""


def _decode_holder(value, pttl):
    try:
        data = json.loads(value) if value else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"owner": "a foreign value %r" % one_line(value, 40)}
    return dict(owner=data.get("owner"), since=data.get("since"), run_id=data.get("run_id"),
                expires_in=(pttl / 1000.0) if pttl is not None and pttl >= 0 else None)


class RedisLockStore(object):
    """Locks as keys of a Redis deployment (cluster or standalone), on a plain connection to the node that serves
    the locks' slot (redis_client.key_node_client); a MOVED reply (the slot moved since) is followed once."""

    kind = "redis"

    def __init__(self, settings, connect=None):
        self.settings = settings
        self.connect = connect or key_node_client
        self.client = None
        self.where = ", ".join(settings.seed_addresses)
        self.node = None

    def key(self, resource):
        return KEY_PREFIX + resource

    def close(self):
        close_quietly(self.client)
        self.client = None

    def _open(self, resource, moved=None):
        self.close()
        self.client, owner, _cluster = self.connect(self.settings, self.key(resource), moved=moved)
        self.node = hostport(*owner)

    def _run(self, what, resource, fn):
        moved = None
        for _attempt in range(2):
            try:
                if self.client is None or moved:
                    self._open(resource, moved)
                return fn(self.client)
            except P3Error:
                raise
            except Exception as e:
                if str(e).startswith("MOVED ") and moved is None:
                    moved = str(e)
                    continue
                raise P3Error("%s on %s failed: %s" % (what, self.node or self.where,
                                                       describe_redis_error(e, self.settings)))
        raise P3Error("%s on %s failed: the slot moved twice (%s)" % (what, self.node or self.where, moved))

    def acquire(self, resource, run_id, owner, ttl):
        value = json.dumps({"run_id": run_id, "owner": owner, "since": utc_iso()}, sort_keys=True)
        state, stored, pttl = self._run("taking %s" % self.key(resource), resource, lambda c: c.eval(
            _ACQUIRE, 1, self.key(resource), run_id, value, int(ttl * 1000)))
        holder = _decode_holder(stored, pttl)
        return dict(acquired=int(state) in (1, 2), renewed=int(state) == 2, holder=holder)

    def renew(self, resource, run_id, ttl):
        state, stored, pttl = self._run("renewing %s" % self.key(resource), resource, lambda c: c.eval(
            _RENEW, 1, self.key(resource), run_id, int(ttl * 1000)))
        return dict(renewed=bool(int(state)), holder=_decode_holder(stored, pttl) if stored else None)

    def release(self, resource, run_id, force=False):
        deleted, stored = self._run("releasing %s" % self.key(resource), resource, lambda c: c.eval(
            _RELEASE, 1, self.key(resource), "" if force else run_id))
        return dict(released=bool(int(deleted)), holder=_decode_holder(stored, None) if stored else None)

    def read(self, resource):
        def get(c):
            return c.get(self.key(resource)), c.pttl(self.key(resource))
        stored, pttl = self._run("reading %s" % self.key(resource), resource, get)
        return _decode_holder(stored, pttl) if stored else None


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------------------

class PostgresLockStore(object):
    """Locks as rows of a table; expiry by the database's clock."""

    kind = "postgres"

    def __init__(self, client, table=DEFAULT_TABLE):
        self.client = client
        self.table = check_table(table)
        self.where = client.target

    def _q(self, sql, args=None):
        return self.client.query(sql.replace("@T", self.table), args)

    def ensure_table(self):
        sql = ("CREATE TABLE IF NOT EXISTS @T (resource text PRIMARY KEY, run_id text NOT NULL, owner text NOT NULL,"
               " since timestamptz NOT NULL, expires_at timestamptz NOT NULL)")
        try:
            self._q(sql)
        except P3Error:
            # two runs creating it at once: one loses on the catalog's unique index; the table exists now
            self._q(sql)

    @staticmethod
    def _holder(row):
        return dict(owner=row["owner"], run_id=row["run_id"],
                    since=row["since"].astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    expires_in=max(0.0, float(row["expires_in"])))

    def acquire(self, resource, run_id, owner, ttl):
        self.ensure_table()
        rows = self._q(
            "WITH prev AS (SELECT run_id FROM @T WHERE resource = %s)"
            " INSERT INTO @T AS l (resource, run_id, owner, since, expires_at)"
            " VALUES (%s, %s, %s, now(), now() + make_interval(secs => %s))"
            " ON CONFLICT (resource) DO UPDATE SET run_id = EXCLUDED.run_id, owner = EXCLUDED.owner,"
            " since = CASE WHEN l.run_id = EXCLUDED.run_id THEN l.since ELSE now() END,"
            " expires_at = EXCLUDED.expires_at"
            " WHERE l.run_id = EXCLUDED.run_id OR l.expires_at <= now()"
            " RETURNING owner, run_id, since, extract(epoch FROM expires_at - now()) AS expires_in,"
            " (SELECT run_id FROM prev) AS prev_run_id",
            (resource, resource, run_id, owner, float(ttl)))
        if rows:
            return dict(acquired=True, renewed=rows[0]["prev_run_id"] == run_id, holder=self._holder(rows[0]))
        holder = self.read(resource)
        if holder is None:  # released between our INSERT and the read: take it now
            return self.acquire(resource, run_id, owner, ttl)
        return dict(acquired=False, renewed=False, holder=holder)

    def renew(self, resource, run_id, ttl):
        """Compare-and-set by the database's clock: only a row that is this run's and not yet expired is extended."""
        self.ensure_table()
        rows = self._q("UPDATE @T SET expires_at = now() + make_interval(secs => %s)"
                       " WHERE resource = %s AND run_id = %s AND expires_at > now()"
                       " RETURNING owner, run_id, since, extract(epoch FROM expires_at - now()) AS expires_in",
                       (float(ttl), resource, run_id))
        if rows:
            return dict(renewed=True, holder=self._holder(rows[0]))
        return dict(renewed=False, holder=self.read(resource))

    def release(self, resource, run_id, force=False):
        self.ensure_table()
        if force:
            rows = self._q("DELETE FROM @T WHERE resource = %s RETURNING owner, run_id, since, 0 AS expires_in",
                           (resource,))
        else:
            rows = self._q("DELETE FROM @T WHERE resource = %s AND run_id = %s"
                           " RETURNING owner, run_id, since, 0 AS expires_in", (resource, run_id))
        if rows:
            return dict(released=True, holder=self._holder(rows[0]))
        return dict(released=False, holder=self.read(resource))

    def read(self, resource):
        rows = self._q("SELECT to_regclass(%s) IS NOT NULL AS present", (self.table,))
        if not rows or not rows[0]["present"]:
            return None
        rows = self._q("SELECT owner, run_id, since, extract(epoch FROM expires_at - now()) AS expires_in"
                       " FROM @T WHERE resource = %s AND expires_at > now()", (resource,))
        return self._holder(rows[0]) if rows else None


# ---------------------------------------------------------------------------------------------------------------
# The one entry point modules use
# ---------------------------------------------------------------------------------------------------------------

def lock_action(store, state, resource, run_id, owner, ttl=900, wait=0.0, force=False, check_mode=False,
                sleep=time.sleep, clock=time.monotonic, poll=1.0):
    """Take, renew, release or read the lock of resource. Returns the module result (changed, acquired, locked_out,
    renewed, lost, released, holder, reason, store, where). Raises P3Error when the store cannot be used.

    state renewed: compare-and-set - the expiry is pushed ttl seconds out only while this run (run_id) still holds the
    lock; otherwise nothing is written and lost is true (another run holds it, or it expired or was released)."""
    resource = check_resource(resource)
    out = dict(changed=False, resource=resource, store=store.kind, where=store.where, run_id=run_id, owner=owner,
               acquired=False, renewed=False, locked_out=False, lost=False, released=False, holder=None)
    if state == "renewed":
        if check_mode:  # check mode takes no lock: there is nothing of this run's to renew; report the holder
            holder = store.read(resource)
            out["holder"] = holder
            theirs = holder is not None and holder.get("run_id") != run_id
            out["locked_out"] = theirs
            out["reason"] = holder_text(resource, holder) if theirs else (
                "check mode: the lock of %s is not renewed" % resource)
            return out
        res = store.renew(resource, run_id, ttl)
        out.update(renewed=res["renewed"], acquired=res["renewed"], holder=res["holder"], lost=not res["renewed"])
        if res["renewed"]:
            out["reason"] = "renewed the lock of %s for %ss (%s)" % (resource, num_text(ttl), store.where)
        elif res["holder"]:
            out["locked_out"] = True
            out["reason"] = "lost the lock of %s: %s" % (resource, holder_text(resource, res["holder"]))
        else:
            out["reason"] = "lost the lock of %s: it expired or was released (nobody holds it now)" % resource
        return out
    if state == "query" or (check_mode and state == "acquired"):
        holder = store.read(resource)
        out["holder"] = holder
        theirs = holder is not None and holder.get("run_id") != run_id
        out["locked_out"] = theirs
        if theirs:
            out["reason"] = holder_text(resource, holder)
        elif holder is not None:
            out["reason"] = "%s is locked by this run since %s" % (resource, holder.get("since"))
        else:
            out["reason"] = "%s is not locked" % resource
        if check_mode and state == "acquired" and not theirs:
            out["changed"] = holder is None
            out["reason"] += " (check mode: the lock is not taken)"
        return out
    if state == "released":
        if check_mode:
            holder = store.read(resource)
            out["holder"] = holder
            ours = holder is not None and (force or holder.get("run_id") == run_id)
            out["changed"] = ours
            out["reason"] = ("would release the lock of %s" % resource) if ours else (
                "%s is not locked by this run: nothing to release" % resource)
            return out
        res = store.release(resource, run_id, force=force)
        out.update(released=res["released"], changed=res["released"], holder=res["holder"])
        if res["released"]:
            out["reason"] = "released the lock of %s (held by %s since %s)" % (
                resource, res["holder"]["owner"], res["holder"]["since"])
        elif res["holder"]:
            out["reason"] = "%s is locked by another run (%s since %s): not ours, left alone" % (
                resource, res["holder"]["owner"], res["holder"]["since"])
        else:
            out["reason"] = "%s is not locked (expired or never taken): nothing to release" % resource
        return out
    deadline = clock() + max(0.0, float(wait or 0))
    while True:
        res = store.acquire(resource, run_id, owner, ttl)
        if res["acquired"] or clock() >= deadline:
            break
        sleep(max(0.0, min(poll, deadline - clock())))
    out.update(acquired=res["acquired"], renewed=res["renewed"], holder=res["holder"],
               changed=res["acquired"] and not res["renewed"], locked_out=not res["acquired"])
    if res["acquired"]:
        out["reason"] = "%s the lock of %s for %ss (%s)" % (
            "renewed" if res["renewed"] else "took", resource, num_text(ttl), store.where)
    else:
        out["reason"] = holder_text(resource, res["holder"])
        if wait:
            out["reason"] += "; waited %ss" % num_text(wait)
    return out
