# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL activity backend of the modules postgres_activity and postgres_terminate (which only parse their
options and call it): the pg_stat_activity query, per-state ages, blocking chains, the activity verdict
(analyse_activity), the terminate policy (pure selection), the signal SQL and the terminate flow (terminate).

Connections and error mapping live in postgres_client; nothing here opens a socket (the flows get a client). The selection of backends to
terminate is pure Python over rows read once, so check mode reports exactly that selection and never signals.
The signal statement then names each backend by (pid, backend_start) and re-checks the hard guards and the
policy's state and age in SQL, so a pid that was reused or a backend that moved on is never hit.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import fnmatch
import re
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line, probe_result

# pg_stat_activity.state values a policy may select.
STATES = ["active", "idle", "idle in transaction", "idle in transaction (aborted)", "fastpath function call"]
DEFAULT_STATES = ["active", "idle in transaction", "idle in transaction (aborted)"]
# States whose age is the age of the running statement (now() - query_start); every other state's age is how
# long the backend has been in it (now() - state_change), e.g. how long a transaction has sat idle.
RUNNING_STATES = ("active", "fastpath function call")
SIGNAL_FUNCTIONS = ("pg_cancel_backend", "pg_terminate_backend")

SETTINGS_SQL = """
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::int AS reserved_connections,
       pg_is_in_recovery() AS in_recovery,
       current_user::text AS "user",
       current_database()::text AS database,
       COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS superuser,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal_backend
"""

# Every backend (client or not), once. pg_blocking_pids() only for backends waiting on a lock (it is not free).
# can_signal: whether this session may cancel/terminate it (superuser; or a non-superuser target and membership
# in its role or in pg_signal_backend), so a policy never selects what the server would refuse.
BACKENDS_SQL = """
SELECT a.pid,
       a.backend_start::text AS backend_start,
       COALESCE(a.backend_type, '') AS backend_type,
       a.usename::text AS usename,
       a.application_name,
       host(a.client_addr) AS client_addr,
       a.datname::text AS datname,
       a.state,
       a.wait_event_type,
       a.wait_event,
       EXTRACT(EPOCH FROM now() - a.xact_start)::float8 AS xact_age,
       EXTRACT(EPOCH FROM now() - a.query_start)::float8 AS query_age,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS state_age,
       left(a.query, %(query_length)s) AS query,
       length(a.query) AS query_chars,
       COALESCE(r.rolsuper, false) AS superuser,
       a.pid = pg_backend_pid() AS own,
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) ELSE '{}'::int[] END AS blocked_by,
       CASE WHEN a.usesysid IS NULL THEN false
            WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN true
            WHEN COALESCE(r.rolsuper, false) THEN false
            ELSE pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
                 OR pg_has_role(current_user, a.usesysid, 'MEMBER')
       END AS can_signal
  FROM pg_stat_activity a
  LEFT JOIN pg_roles r ON r.oid = a.usesysid
"""

# Still-present targets, read while waiting for them to end.
TARGETS_SQL = """
SELECT a.pid, a.backend_start::text AS backend_start, a.state,
       EXTRACT(EPOCH FROM now() - a.query_start)::float8 AS query_age,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS state_age
  FROM pg_stat_activity a
 WHERE a.pid = ANY(%(pids)s)
"""

# Per-role and per-database CONNECTION LIMITs (-1 = none) and the client backends counted against each.
# Superuser roles are not subject to their limit; a database's limit counts every client backend in it.
LIMITS_SQL = """
SELECT 'role' AS kind, r.rolname::text AS name, r.rolconnlimit AS "limit",
       (SELECT count(*) FROM pg_stat_activity a
         WHERE a.usesysid = r.oid AND a.backend_type = 'client backend')::int AS used
  FROM pg_roles r
 WHERE r.rolconnlimit >= 0 AND r.rolcanlogin AND NOT r.rolsuper
UNION ALL
SELECT 'database' AS kind, d.datname::text AS name, d.datconnlimit AS "limit",
       (SELECT count(*) FROM pg_stat_activity a
         WHERE a.datid = d.oid AND a.backend_type = 'client backend')::int AS used
  FROM pg_database d
 WHERE d.datconnlimit >= 0 AND d.datallowconn
 ORDER BY 1 DESC, 2
"""

USAGE_SQL = """
SELECT count(*)::int AS used FROM pg_stat_activity WHERE backend_type = 'client backend'
"""

# SQL twin of backend_age(): the age the policy compares with min_age_seconds.
AGE_SQL = ("EXTRACT(EPOCH FROM now() - CASE WHEN a.state IN ('active', 'fastpath function call') "
           "THEN a.query_start ELSE a.state_change END)")


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------

def _f(value):
    return None if value is None else float(value)


def backend_age(row):
    """Seconds the backend has been doing what its state says: the running statement's age for active backends,
    the time spent in the state otherwise (idle in transaction: how long the transaction has sat idle)."""
    if row.get("state") in RUNNING_STATES:
        age = _f(row.get("query_age"))
    else:
        age = _f(row.get("state_age"))
    return max(0.0, age) if age is not None else 0.0


def protection(row, include_superusers=False):
    """Why a backend may never be signalled by us, or None. The order is the order of the checks in the report."""
    if row.get("own"):
        return "own"
    if row.get("backend_type") != "client backend":
        return "not_client"
    if row.get("superuser") and not include_superusers:
        return "superuser"
    if not row.get("can_signal", True):
        return "not_permitted"
    return None


def name_matches(name, patterns):
    """Shell-style (fnmatch, case-sensitive) match of name against any pattern; a missing name is ''."""
    name = name or ""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def policy_verdict(row, policy):
    """None when the (unprotected) backend matches the policy, else the first filter that excludes it."""
    if row.get("state") not in policy["states"]:
        return "state"
    if backend_age(row) < policy["min_age_seconds"]:
        return "age"
    app = row.get("application_name")
    if policy.get("include_applications") and not name_matches(app, policy["include_applications"]):
        return "application"
    if name_matches(app, policy.get("exclude_applications")):
        return "application"
    user = row.get("usename")
    if policy.get("include_users") and not name_matches(user, policy["include_users"]):
        return "user"
    if name_matches(user, policy.get("exclude_users")):
        return "user"
    if policy.get("include_databases") and not name_matches(row.get("datname"), policy["include_databases"]):
        return "database"
    return None


def select_backends(rows, policy):
    """Apply the guards and the policy to pg_stat_activity rows.

    Returns dict(selected=[rows, oldest first, at most max_count], matched=int, capped=int,
    protected={reason: count}, excluded={filter: count}).
    """
    protected = dict(own=0, not_client=0, superuser=0, not_permitted=0)
    excluded = dict(state=0, age=0, application=0, user=0, database=0)
    matched = []
    for row in rows:
        guard = protection(row, policy.get("include_superusers", False))
        if guard:
            protected[guard] += 1
            continue
        why = policy_verdict(row, policy)
        if why:
            excluded[why] += 1
            continue
        matched.append(row)
    matched.sort(key=lambda r: (-backend_age(r), r.get("pid") or 0))
    cap = policy.get("max_count")
    selected = matched[:cap] if cap is not None else matched
    return dict(selected=selected, matched=len(matched), capped=len(matched) - len(selected),
                protected=protected, excluded=excluded)


def still_matches(row, target, policy):
    """A target read again while waiting: same backend (pid and start) and still in a selected state and old
    enough. A backend whose statement ended (state changed, or a new statement is younger than min_age) does not."""
    if row is None or row.get("backend_start") != target.get("backend_start"):
        return False
    if row.get("state") not in policy["states"]:
        return False
    return backend_age(row) >= policy["min_age_seconds"]


def validate_policy(params):
    """The terminate policy from module params, or P3Error naming the bad option."""
    min_age = params.get("min_age_seconds")
    if min_age is None or min_age < 0:
        raise P3Error("min_age_seconds must be >= 0, got %s" % min_age)
    states = params.get("states") or []
    if not states:
        raise P3Error("states must name at least one of: %s" % ", ".join(STATES))
    max_count = params.get("max_count")
    if max_count is not None and max_count < 1:
        raise P3Error("max_count must be >= 1, got %s" % max_count)
    for key in ("include_applications", "exclude_applications", "include_users", "exclude_users",
                "include_databases"):
        for pattern in params.get(key) or []:
            if pattern is None:
                raise P3Error("%s must not contain a null pattern (use '' to match an empty name)" % key)
    grace = params.get("cancel_grace_seconds")
    if grace is not None and grace < 0:
        raise P3Error("cancel_grace_seconds must be >= 0, got %s" % grace)
    wait = params.get("wait_seconds")
    if wait is not None and wait < 0:
        raise P3Error("wait_seconds must be >= 0, got %s" % wait)
    return dict(
        min_age_seconds=float(min_age),
        states=list(states),
        include_applications=list(params.get("include_applications") or []),
        exclude_applications=list(params.get("exclude_applications") or []),
        include_users=list(params.get("include_users") or []),
        exclude_users=list(params.get("exclude_users") or []),
        include_databases=list(params.get("include_databases") or []),
        include_superusers=bool(params.get("include_superusers")),
        max_count=max_count,
    )


def build_signal_sql(function, targets, policy, server_version_num=None):
    """(sql, params) that sends `function` to exactly the targets (dicts with pid and backend_start) that still
    pass the hard guards (client backend, not us, no superuser unless allowed) and the policy's state and age.

    The candidates are materialised first, so the function is called only for rows that passed every condition
    (PostgreSQL 12+ needs MATERIALIZED for that; before 12 every CTE is materialised). Returns rows (pid, signalled).
    """
    if function not in SIGNAL_FUNCTIONS:
        raise ValueError("unsupported signal function %r" % function)
    pids = [int(t["pid"]) for t in targets]
    starts = [str(t["backend_start"]) for t in targets]
    guards = [
        "a.backend_type = 'client backend'",
        "a.pid <> pg_backend_pid()",
        "a.state = ANY(%(states)s)",
        "%s >= %%(min_age)s" % AGE_SQL,
    ]
    if not policy.get("include_superusers"):
        guards.append("NOT COALESCE(r.rolsuper, false)")
    materialized = "" if server_version_num is not None and int(server_version_num) < 120000 else "MATERIALIZED "
    sql = (
        "WITH t AS %s(\n"
        "  SELECT a.pid\n"
        "    FROM pg_stat_activity a\n"
        "    JOIN unnest(%%(pids)s::int[], %%(starts)s::timestamptz[]) AS x(pid, backend_start)\n"
        "      ON x.pid = a.pid AND x.backend_start = a.backend_start\n"
        "    LEFT JOIN pg_roles r ON r.oid = a.usesysid\n"
        "   WHERE %s\n"
        ")\n"
        "SELECT pid, %s(pid) AS signalled FROM t" % (materialized, "\n     AND ".join(guards), function)
    )
    params = dict(pids=pids, starts=starts, states=list(policy["states"]), min_age=float(policy["min_age_seconds"]))
    return sql, params


def evidence(row, query_length=None):
    """A backend as reported: who, what, how old. query already cut by SQL; marked when it was cut."""
    query = row.get("query")
    if query_length == 0:
        query = None
    if query is not None:
        query = one_line(query, 0)
        if query_length is not None and (row.get("query_chars") or 0) > query_length:
            query = query + "..."
    out = dict(
        pid=row.get("pid"),
        user=row.get("usename"),
        application=row.get("application_name"),
        client_addr=row.get("client_addr"),
        database=row.get("datname"),
        state=row.get("state"),
        age_seconds=_round(backend_age(row)),
        query_age_seconds=_round(row.get("query_age")),
        xact_age_seconds=_round(row.get("xact_age")),
        backend_start=row.get("backend_start"),
        wait_event=_wait(row),
        query=query,
    )
    return out


def _wait(row):
    if not row.get("wait_event_type"):
        return None
    return "%s:%s" % (row.get("wait_event_type"), row.get("wait_event"))


def _round(value):
    return None if value is None else round(float(value), 1)


def client_backends(rows):
    return [r for r in rows if r.get("backend_type") == "client backend"]


def usage(rows, settings):
    """Connection usage from rows and settings: used (client backends, us included), max, slots, percent."""
    used = len(client_backends(rows))
    return usage_from_count(used, settings)


def usage_from_count(used, settings):
    max_conn = int(settings["max_connections"])
    su = int(settings.get("superuser_reserved_connections") or 0)
    reserved = int(settings.get("reserved_connections") or 0)
    ordinary = max(0, max_conn - su - reserved)
    return dict(
        used=used,
        max=max_conn,
        superuser_reserved=su,
        reserved=reserved,
        ordinary_max=ordinary,
        available=max(0, ordinary - used),
        usage_pct=round(100.0 * used / max_conn, 1) if max_conn else 0.0,
        # Only a superuser gets in once the ordinary slots are full: if more backends than ordinary slots are in
        # use and we are one of them, we came in through a reserved slot.
        via_reserved_slot=used > ordinary,
    )


def group_counts(rows):
    by_state, by_app, by_user, by_addr = {}, {}, {}, {}
    for r in client_backends(rows):
        for bucket, key in ((by_state, r.get("state") or "unknown"),
                            (by_app, r.get("application_name") or "(none)"),
                            (by_user, r.get("usename") or "(unknown)"),
                            (by_addr, r.get("client_addr") or "local")):
            bucket[key] = bucket.get(key, 0) + 1
    other = {}
    for r in rows:
        if r.get("backend_type") != "client backend":
            key = r.get("backend_type") or "unknown"
            other[key] = other.get(key, 0) + 1
    return dict(by_state=by_state, by_application=by_app, by_user=by_user, by_client_addr=by_addr,
                other_backends=other)


def long_running(rows, threshold):
    """Client backends (not ours) over threshold: a statement running (query), a transaction open (transaction),
    or a transaction sitting idle (idle_in_transaction). Oldest first; each names why."""
    out = []
    for r in client_backends(rows):
        if r.get("own"):
            continue
        why = []
        state = r.get("state") or ""
        if state in RUNNING_STATES and (_f(r.get("query_age")) or 0) >= threshold:
            why.append("query")
        if r.get("xact_age") is not None and _f(r.get("xact_age")) >= threshold:
            why.append("transaction")
        if state.startswith("idle in transaction") and (_f(r.get("state_age")) or 0) >= threshold:
            why.append("idle_in_transaction")
        if why:
            out.append((r, why))
    out.sort(key=lambda x: (-max(_f(x[0].get("query_age")) or 0, _f(x[0].get("xact_age")) or 0,
                                 backend_age(x[0])), x[0].get("pid") or 0))
    return out


def blocking_chains(rows):
    """Lock waits and who is at the root of them.

    Returns (waits, roots): waits = [(row, blocked_by)] for every backend waiting on a lock held by others;
    roots = [(pid, blocked_count)] for backends that block others (directly or through a chain) while not
    waiting themselves (members of a wait cycle count as roots too), most blocking first.
    """
    blocked_by = {}
    by_pid = {}
    for r in rows:
        by_pid[r.get("pid")] = r
        pids = [int(p) for p in (r.get("blocked_by") or []) if p]
        if pids:
            blocked_by[r.get("pid")] = pids
    waits = [(by_pid[p], blocked_by[p]) for p in sorted(blocked_by)]
    blockers = set(p for ps in blocked_by.values() for p in ps)
    # reverse edges: blocker -> directly blocked pids
    children = {}
    for waiter, ps in blocked_by.items():
        for p in ps:
            children.setdefault(p, set()).add(waiter)

    def reach(pid):
        seen, stack = set(), [pid]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in seen and c != pid:
                    seen.add(c)
                    stack.append(c)
        return seen

    roots = []
    for p in sorted(blockers):
        if p not in blocked_by or _in_cycle(p, blocked_by):
            roots.append((p, len(reach(p))))
    roots.sort(key=lambda x: (-x[1], x[0]))
    return waits, roots


def _in_cycle(pid, blocked_by):
    """pid waits (through a chain) on itself."""
    seen, stack = set(), list(blocked_by.get(pid, ()))
    while stack:
        p = stack.pop()
        if p == pid:
            return True
        if p in seen:
            continue
        seen.add(p)
        stack.extend(blocked_by.get(p, ()))
    return False


def connection_limits(limit_rows, threshold):
    """Rows of LIMITS_SQL -> [{kind, name, limit, used, usage_pct, state}], state at_limit (used >= limit),
    near_limit (usage_pct >= threshold, the same alert threshold as for max_connections) or ok. A limit of 0 is a
    deliberate lock-out, not exhaustion: ok."""
    out = []
    for r in limit_rows or ():
        limit = int(r.get("limit") if r.get("limit") is not None else -1)
        if limit < 0:
            continue
        used = int(r.get("used") or 0)
        usage_pct = round(100.0 * used / limit, 1) if limit else 0.0
        state = "ok" if limit == 0 else "at_limit" if used >= limit else "near_limit" if usage_pct >= threshold else "ok"
        out.append(dict(kind=r.get("kind"), name=r.get("name"), limit=limit, used=used, usage_pct=usage_pct,
                        state=state))
    return out


def limits_reason(items):
    """One line naming every role/database at or near its own CONNECTION LIMIT ('' when none)."""
    parts = []
    for i in items:
        if i["state"] == "at_limit":
            parts.append("%s %s at its CONNECTION LIMIT %d (%d/%d)" % (i["kind"], i["name"], i["limit"], i["used"],
                                                                       i["limit"]))
    for i in items:
        if i["state"] == "near_limit":
            parts.append("%s %s near its CONNECTION LIMIT %d (%d/%d, %s%%)" % (
                i["kind"], i["name"], i["limit"], i["used"], i["limit"], pct(i["usage_pct"])))
    return "; ".join(parts)


def limited(items):
    """Names of the roles and databases at or near their own limit: {roles: [...], databases: [...]}."""
    bad = [i for i in items if i["state"] != "ok"]
    return dict(roles=[i["name"] for i in bad if i["kind"] == "role"],
                databases=[i["name"] for i in bad if i["kind"] == "database"])


_LIMIT_MSG = re.compile(r'too many connections for (role|database) "([^"]*)"', re.I)
_RESERVED_MSG = re.compile(r"reserved for (non-replication )?superuser|too many connections|too many clients", re.I)


def connect_hint(msg):
    """Add what to do when the ordinary slots are full, or which CONNECTION LIMIT was hit, to a connection error."""
    m = _LIMIT_MSG.search(msg or "")
    if m:
        return "%s (%s %s is at its CONNECTION LIMIT: a per-%s limit, not max_connections)" % (
            msg, m.group(1).lower(), m.group(2), m.group(1).lower())
    if _RESERVED_MSG.search(msg or "") and "superuser_reserved_connections" not in msg:
        return "%s (connect as a superuser: only superusers get the superuser_reserved_connections slots)" % msg
    return msg


def pct(value):
    return ("%d" % value) if float(value).is_integer() else ("%.1f" % value)


# ---------------------------------------------------------------------------------------------------------------
# postgres_activity: the verdict
# ---------------------------------------------------------------------------------------------------------------

def _oldest(rows):
    """The oldest running query, open transaction and idle-in-transaction session of the other client backends."""
    out = dict(query_seconds=None, transaction_seconds=None, idle_in_transaction_seconds=None)
    for r in client_backends(rows):
        if r.get("own"):
            continue
        if r.get("state") == "active" and r.get("query_age") is not None:
            out["query_seconds"] = max(out["query_seconds"] or 0.0, float(r["query_age"]))
        if r.get("xact_age") is not None:
            out["transaction_seconds"] = max(out["transaction_seconds"] or 0.0, float(r["xact_age"]))
        if (r.get("state") or "").startswith("idle in transaction"):
            out["idle_in_transaction_seconds"] = max(out["idle_in_transaction_seconds"] or 0.0, backend_age(r))
    return dict((k, None if v is None else round(v, 1)) for k, v in out.items())


def analyse_activity(rows, settings, params, target, limits=None):
    """Pure: rows of BACKENDS_SQL + SETTINGS_SQL (+ LIMITS_SQL) -> the postgres_activity probe result; params holds
    its options max_usage_pct, long_running_seconds, query_length and max_items."""
    threshold = params["max_usage_pct"]
    qlen = params["query_length"]
    limit = params["max_items"]
    conns = usage(rows, settings)
    conns.update(group_counts(rows))
    lr = long_running(rows, params["long_running_seconds"])
    waits, roots = blocking_chains(rows)
    by_pid = dict((r.get("pid"), r) for r in rows)

    long_list = []
    for row, why in lr[:limit]:
        item = evidence(row, qlen)
        item["long_running"] = why
        long_list.append(item)
    wait_list = []
    for row, blockers in waits[:limit]:
        item = evidence(row, qlen)
        item["blocked_by"] = blockers
        wait_list.append(item)
    root_list = []
    for pid, blocks in roots[:limit]:
        item = evidence(by_pid.get(pid) or dict(pid=pid), qlen)
        item["blocks"] = blocks
        root_list.append(item)

    oldest = _oldest(rows)
    summary = "connections %d/%d (%s%%)" % (conns["used"], conns["max"], pct(conns["usage_pct"]))
    extra = "%d long-running%s, %d lock waits" % (
        len(lr),
        (" (oldest %s s)" % pct(round(max(backend_age(lr[0][0]), float(lr[0][0].get("xact_age") or 0)), 1))) if lr else "",
        len(waits))
    limit_items = connection_limits(limits, threshold)
    over_limit = limits_reason(limit_items)
    healthy = conns["usage_pct"] < threshold and not over_limit
    if conns["usage_pct"] < threshold:
        reason = "%s < %s%% on %s; %s" % (summary, pct(threshold), target, extra)
    else:
        reason = "%s >= %s%% on %s; %s" % (summary, pct(threshold), target, extra)
    if over_limit:
        reason = "%s on %s; %s" % (over_limit, target, reason.replace(" on %s;" % target, ";", 1))
    if conns["via_reserved_slot"]:
        reason += "; connected through a superuser-reserved slot"
    return probe_result(
        healthy, reason,
        reachable=True,
        target=target,
        user=settings["user"],
        superuser=bool(settings["superuser"]),
        server_version=settings["server_version"],
        max_usage_pct=float(threshold),
        long_running_seconds=float(params["long_running_seconds"]),
        usage_pct=conns["usage_pct"],
        connections=conns,
        limits=limit_items,
        limited=limited(limit_items),
        long_running=long_list,
        long_running_count=len(lr),
        oldest=oldest,
        lock_waits=wait_list,
        lock_waits_count=len(waits),
        blocking_roots=root_list,
    )


def unreachable_activity(target, params, msg):
    """The postgres_activity verdict when the server could not be read (msg: why)."""
    return probe_result(
        False, connect_hint(msg),
        reachable=False, target=target, user=None, superuser=None, server_version=None,
        max_usage_pct=float(params["max_usage_pct"]), long_running_seconds=float(params["long_running_seconds"]),
        usage_pct=None, connections=None, limits=[], limited=dict(roles=[], databases=[]), long_running=[], long_running_count=0,
        oldest=dict(query_seconds=None, transaction_seconds=None, idle_in_transaction_seconds=None),
        lock_waits=[], lock_waits_count=0, blocking_roots=[])


def validate_activity_params(params):
    """The postgres_activity options, checked before anything connects; P3Error names the bad one."""
    if not 0 < params["max_usage_pct"] <= 100:
        raise P3Error("max_usage_pct must be in (0, 100], got %s" % params["max_usage_pct"])
    if params["long_running_seconds"] < 0:
        raise P3Error("long_running_seconds must be >= 0, got %s" % params["long_running_seconds"])
    if params["query_length"] < 0:
        raise P3Error("query_length must be >= 0, got %s" % params["query_length"])
    if params["max_items"] < 0:
        raise P3Error("max_items must be >= 0, got %s" % params["max_items"])


def read_activity(client, query_length):
    """(settings, backend rows, limit rows) of one postgres_activity read on client (connected here; the caller
    closes it)."""
    client.connect()
    settings = client.query(SETTINGS_SQL)[0]
    rows = client.query(BACKENDS_SQL, dict(query_length=query_length))
    return settings, rows, client.query(LIMITS_SQL)


# ---------------------------------------------------------------------------------------------------------------
# postgres_terminate: the flow
# ---------------------------------------------------------------------------------------------------------------

# How often the terminate flow re-reads its targets while it waits for them to leave.
POLL = 0.1


def _short_usage(u):
    keep = ("used", "max", "usage_pct", "ordinary_max", "available")
    return dict((k, u[k]) for k in keep)


def _by_app(backends):
    counts = {}
    for b in backends:
        key = b.get("application") or "(none)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join("%s: %d" % (k, counts[k]) for k in sorted(counts, key=lambda k: (-counts[k], k)))


def _signal(client, function, targets, policy, version):
    """Send function to the targets still matching; returns the pids it was sent to (signalled true)."""
    if not targets:
        return []
    sql, params = build_signal_sql(function, targets, policy, version)
    rows = client.query(sql, params)
    return sorted(int(r["pid"]) for r in rows if r.get("signalled"))


def _present(client, targets):
    """The targets (pid + backend_start) still in pg_stat_activity, as rows keyed by pid."""
    if not targets:
        return {}
    rows = client.query(TARGETS_SQL, dict(pids=[int(t["pid"]) for t in targets]))
    starts = dict((t["pid"], t["backend_start"]) for t in targets)
    return dict((r["pid"], r) for r in rows if starts.get(r["pid"]) == r["backend_start"])


def terminate(client, target, policy, check_mode=False, warn=None, query_length=200, cancel_first=False,
              cancel_grace_seconds=2, wait_seconds=5):
    """What postgres_terminate does, on client (a postgres_client.PostgresClient, not yet connected; the caller
    closes it) for target (its name in messages): read the backends once, select them with policy (pure:
    select_backends), and unless check_mode cancel (cancel_first) and terminate each by (pid, backend_start) with
    the policy re-checked in SQL, then wait up to wait_seconds for them to leave. warn(msg) is told what was left
    alone (max_count reached, not permitted). Returns the module's result. A P3Error raised after a signal was sent
    carries the result so far in its details (changed true, what was cancelled/terminated), so the failure still
    says what was done."""
    acted = {}
    options = dict(check_mode=check_mode, warn=warn or (lambda msg: None), query_length=query_length,
                   cancel_first=cancel_first, cancel_grace_seconds=cancel_grace_seconds, wait_seconds=wait_seconds)
    try:
        return _terminate(client, target, policy, options, acted)
    except P3Error as e:
        if not acted.get("changed"):
            raise
        done = dict(acted)
        done.pop("msg", None)
        raise P3Error("%s (after terminating %d backends and cancelling %d: %s)" % (
            e.msg, len(done.get("terminated") or []), len(done.get("cancelled") or []),
            ", ".join(str(p) for p in (done.get("terminated") or []) + (done.get("cancelled") or [])) or "-"),
            **done)


def _terminate(client, target, policy, params, result):
    client.connect()
    settings = client.query(SETTINGS_SQL)[0]
    rows = client.query(BACKENDS_SQL, dict(query_length=params["query_length"]))
    chosen = select_backends(rows, policy)
    before = usage(rows, settings)
    selected = chosen["selected"]
    result.update(
        changed=False,
        target=target,
        user=settings["user"],
        superuser=bool(settings["superuser"]),
        check_mode=params["check_mode"],
        policy=policy,
        matched=chosen["matched"],
        capped=chosen["capped"],
        protected=chosen["protected"],
        excluded=chosen["excluded"],
        selected=[evidence(r, params["query_length"]) for r in selected],
        cancelled=[],
        terminated=[],
        vanished=[],
        still_alive=[],
        connections_before=_short_usage(before),
        connections_after=None,
    )
    if chosen["capped"]:
        params["warn"]("max_count %d reached: %d more matching backends were left alone" % (
            policy["max_count"], chosen["capped"]))
    if chosen["protected"]["not_permitted"]:
        params["warn"]("role %s may not signal %d backends (needs superuser or pg_signal_backend); they were left "
                       "alone" % (settings["user"], chosen["protected"]["not_permitted"]))
    if not selected:
        result["msg"] = "nothing to terminate on %s: no client backend matches the policy (%s)" % (
            target, _why_none(chosen))
        return result
    apps = _by_app(result["selected"])
    if params["check_mode"]:
        result["changed"] = True
        result["msg"] = "would terminate %d backends on %s (%s); check mode, nothing signalled" % (
            len(selected), target, apps)
        return result

    targets = [dict(pid=r["pid"], backend_start=r["backend_start"]) for r in selected]
    cancel_sent = []
    if params["cancel_first"]:
        cancel_sent = _signal(client, "pg_cancel_backend", targets, policy, settings["server_version_num"])
        if cancel_sent:
            result["changed"] = True
            result["cancelled"] = sorted(cancel_sent)
        deadline = time.monotonic() + params["cancel_grace_seconds"]
        remaining = targets
        while True:
            present = _present(client, remaining)
            remaining = [t for t in remaining if still_matches(present.get(t["pid"]), t, policy)]
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        left = set(t["pid"] for t in remaining)
        result["cancelled"] = sorted(p for p in cancel_sent if p not in left)
        targets = remaining

    terminated = _signal(client, "pg_terminate_backend", targets, policy, settings["server_version_num"])
    result["terminated"] = terminated
    if terminated:
        result["changed"] = True
    done = set(terminated) | set(result["cancelled"])
    result["vanished"] = sorted(r["pid"] for r in selected if r["pid"] not in done)
    waiting = [t for t in targets if t["pid"] in terminated]
    deadline = time.monotonic() + params["wait_seconds"]
    while waiting:
        present = _present(client, waiting)
        waiting = [t for t in waiting if t["pid"] in present]
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    result["still_alive"] = sorted(t["pid"] for t in waiting)
    result["changed"] = bool(terminated or cancel_sent)
    after = usage_from_count(int(client.scalar(USAGE_SQL)), settings)
    result["connections_after"] = _short_usage(after)
    parts = ["terminated %d of %d selected backends on %s (%s)" % (len(terminated), len(selected), target, apps)]
    if params["cancel_first"]:
        parts.append("%d ended by cancel" % len(result["cancelled"]))
    if result["vanished"]:
        parts.append("%d had already ended" % len(result["vanished"]))
    if result["still_alive"]:
        parts.append("%d still alive after %ss" % (len(result["still_alive"]), params["wait_seconds"]))
    parts.append("connections %d -> %d of %d" % (before["used"], after["used"], after["max"]))
    result["msg"] = "; ".join(parts)
    return result


def _why_none(chosen):
    parts = []
    for key, label in (("age", "too young"), ("state", "other state"), ("application", "application filter"),
                       ("user", "user filter"), ("database", "database filter")):
        if chosen["excluded"][key]:
            parts.append("%d %s" % (chosen["excluded"][key], label))
    for key, label in (("superuser", "superuser, protected"), ("not_client", "not client backends"),
                       ("not_permitted", "not permitted")):
        if chosen["protected"][key]:
            parts.append("%d %s" % (chosen["protected"][key], label))
    return ", ".join(parts) or "no other client backend"
