# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure transforms of the database scenario (role p3.recovery.database): input checks with one-line messages, the
decision (database_decision: terminate or not, scoped how) and the restart choice after the terminate
(database_restart), the pool arithmetic (app instances x pool max against max_connections) reported as a
recommendation, and the report's verdict. Each filter is documented in its <name>.yml."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.p3.recovery.plugins.module_utils.common import one_line
from ansible_collections.p3.recovery.plugins.plugin_utils.inputs import fmt as _fmt, input_errors, number as _number

STATES = ["active", "idle", "idle in transaction", "idle in transaction (aborted)", "fastpath function call"]
RESTART_MODES = ["never", "auto", "always"]

# name, kind, low, low inclusive, high (plugin_utils.inputs)
NUMBER_RULES = [
    ("p3_db_max_usage_pct", "number", 0, False, 100),
    ("p3_db_min_age_seconds", "number", 0, True, None),
    ("p3_db_long_running_seconds", "number", 0, True, None),
    ("p3_db_max_count", "integer", 1, True, None),
    ("p3_db_cancel_grace_seconds", "number", 0, True, None),
    ("p3_db_timeout", "number", 0, False, None),
    ("p3_db_settle_timeout", "number", 0, True, None),
    ("p3_db_verify_timeout", "number", 0, True, None),
    ("p3_db_app_instances", "integer", 0, True, None),
    ("p3_db_app_pool_max", "integer", 1, True, None),
    ("p3_db_query_length", "integer", 0, True, None),
    ("p3_db_evidence_items", "integer", 0, True, None),
]


def database_input_errors(values):
    """One line per bad variable of the database role (values: name -> value); empty when all are fine."""
    errors = input_errors(values, NUMBER_RULES, [("p3_db_restart_app", RESTART_MODES)])
    if "p3_db_states" in values:
        states = values["p3_db_states"]
        if isinstance(states, str) or not isinstance(states, (list, tuple)) or not states:
            errors.append("p3_db_states must be a non-empty list of: %s" % ", ".join(STATES))
        else:
            bad = [s for s in states if s not in STATES]
            if bad:
                errors.append("p3_db_states: unknown state %s (use: %s)" % (_fmt(bad[0]), ", ".join(STATES)))
    return errors


def pool_budget(instances, pool_max, max_connections=None, superuser_reserved=3, reserved=0, threshold_pct=80,
                where="the app's pool configuration"):
    """The pool arithmetic of the runbook's step 3 ("increase pool size"), as numbers and a recommendation."""
    instances = int(instances or 0)
    pool_max = int(pool_max or 0)
    demand = instances * pool_max
    out = dict(instances=instances, pool_max=pool_max, demand=demand, max_connections=None, ordinary_slots=None,
               demand_pct=None, threshold_pct=float(threshold_pct), fits=None, recommendation=None)
    formula = "%d app instance%s x pool max %d = %d connections" % (instances, "" if instances == 1 else "s", pool_max, demand)
    if max_connections is None or _number(max_connections) is None:
        out["recommendation"] = ("%s; max_connections unknown (the database could not be read), compare it with "
                                 "max_connections yourself before changing any pool size." % formula)
        return out
    max_connections = int(max_connections)
    su = int(superuser_reserved or 0)
    res = int(reserved or 0)
    ordinary = max(0, max_connections - su - res)
    pct = round(100.0 * demand / max_connections, 1) if max_connections else None
    out.update(max_connections=max_connections, ordinary_slots=ordinary, demand_pct=pct)
    slots = "%d ordinary slots (max_connections %d - %d superuser-reserved%s)" % (
        ordinary, max_connections, su, (" - %d reserved" % res) if res else "")
    needed = demand + su + res
    if demand > ordinary:
        out["fits"] = False
        out["recommendation"] = (
            "%s > %s: the app's pools alone can exhaust the database, so increasing the pool size (the runbook's "
            "step 3) would make it worse. A human decision: lower the pool max in %s, or raise max_connections "
            "to at least %d (more with other clients, and keep usage under %s%%), or put a pooler such as PgBouncer "
            "in front." % (formula, slots, where, needed, _fmt(threshold_pct)))
    elif pct is not None and pct >= float(threshold_pct):
        out["fits"] = True
        out["recommendation"] = (
            "%s fits in %s, but full pools alone are %s%% of max_connections, at or over the %s%% alert: the alert "
            "will fire under normal peak load. A human decision: lower the pool max in %s or raise max_connections; "
            "do not increase the pool size." % (formula, slots, _fmt(pct), _fmt(threshold_pct), where))
    else:
        out["fits"] = True
        out["recommendation"] = (
            "%s fits in %s (%s%% of max_connections at full pools): the pools are not the cause, and increasing "
            "them (the runbook's step 3) would not help. Look at what held the connections (by application and "
            "user in the report) and fix that client." % (formula, slots, _fmt(pct)))
    return out


def _apps(backends):
    counts = {}
    for b in backends or []:
        key = b.get("application") or "(none)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join("%s: %d" % (k, counts[k]) for k in sorted(counts, key=lambda k: (-counts[k], k)))


def database_outcome(report):
    """healthy, changed, reason (one line) and summary (lines for a debug task) of a recover_database report body.

    report: dict with checks (list of {name, healthy, reason}), check_mode, decision {act, why},
    actions {terminate: module result or {skipped: true}, restart: {hosts: [...], why}}, recommendation {pool}.
    """
    checks = report.get("checks") or []
    failing = [c for c in checks if c.get("healthy") is False]
    healthy = not failing
    check_mode = bool(report.get("check_mode"))
    decision = report.get("decision") or {}
    actions = report.get("actions") or {}
    term = actions.get("terminate") or {}
    restart = actions.get("restart") or {}
    restarted = list(restart.get("hosts") or [])
    terminated = list(term.get("terminated") or [])
    cancelled = list(term.get("cancelled") or [])
    selected = list(term.get("selected") or [])
    changed = bool(terminated or cancelled or restarted) and not check_mode
    target = term.get("target") or (report.get("before") or {}).get("database", {}).get("target") or "the database"

    did = []
    if term.get("skipped") or not term:
        did.append("nothing terminated")
    elif check_mode:
        did.append("would terminate %d backends on %s (%s)" % (len(selected), target, _apps(selected) or "none")
                   if selected else "would terminate nothing on %s" % target)
    else:
        chosen = [b for b in selected if b.get("pid") in terminated]
        did.append("terminated %d backends on %s (%s)" % (len(terminated), target, _apps(chosen) or "none")
                   if terminated else "terminated nothing on %s (%s)" % (target, term.get("msg") or "no match"))
        if cancelled:
            did.append("%d ended by cancel" % len(cancelled))
    if restarted:
        did.append("restarted %s" % ", ".join(restarted))
    elif restart.get("requested") and check_mode:
        did.append("would restart the app")

    state = "; ".join("%s: %s" % (c.get("name"), c.get("reason")) for c in (failing or checks) if c.get("healthy") is not None)
    if check_mode:
        reason = "check mode: %s; nothing changed; now %s" % ("; ".join(did), state)
    elif healthy and not decision.get("act"):
        reason = "nothing to do: %s" % state
    elif healthy:
        reason = "recovered: %s; %s" % ("; ".join(did), state)
    else:
        reason = "not recovered: %s; %s" % (state, "; ".join(did))
        if decision.get("act") and not term.get("skipped") and term and not selected:
            reason += ("; nothing matched the policy: widen it (p3_db_min_age_seconds, p3_db_states, the include and "
                       "exclude lists) or restart the app (p3_db_restart_app=always)")

    summary = []
    before = (report.get("before") or {}).get("database") or {}
    if before.get("reason"):
        summary.append("before   %s" % one_line(before["reason"], 200))
    if decision.get("why"):
        summary.append("decision %s" % one_line(decision["why"], 200))
    summary.append("action   %s" % one_line("; ".join(did), 200))
    if restart.get("why"):
        summary.append("restart  %s" % one_line(restart["why"], 200))
    for c in checks:
        if c.get("healthy") is not None:
            verdict = "OK" if c.get("healthy") else "UNHEALTHY"
            summary.append("after    %-8s %-9s %s" % (c.get("name"), verdict, one_line(c.get("reason"), 160)))
    pool = (report.get("recommendation") or {}).get("pool") or {}
    if pool.get("recommendation"):
        summary.append("pools    %s" % one_line(pool["recommendation"], 800))
    return dict(healthy=healthy, changed=changed, reason=one_line(reason, 1000), summary=summary)


def _on(settings, name):
    return boolean(settings.get(name, False), strict=False)


def database_decision(seen, settings):
    """What the database role does, from the postgres_activity result before the act (seen).

    settings: max_usage_pct, force, include_users (the role's p3_db_* variables). Returns exhausted, act, cause
    (connection_limit, max_connections or None), include_users, include_databases and why (one line).
    A role or database at (or near) its own CONNECTION LIMIT while max_connections is not exhausted: the terminate
    is scoped to that role (include_users) or, when no role is limited, to that database (include_databases)."""
    seen = seen or {}
    settings = settings or {}
    limited = seen.get("limited") or {"roles": [], "databases": []}
    roles = list(limited.get("roles") or [])
    databases = list(limited.get("databases") or [])
    usage = seen.get("usage_pct")
    threshold = settings.get("max_usage_pct")
    over_max = float(usage or 0) >= float(threshold)
    limit_scope = (not over_max) and bool(roles or databases)
    healthy = bool(seen.get("healthy"))
    force = _on(settings, "force")
    include_users = list(settings.get("include_users") or [])
    if limit_scope:
        why = "%s: terminate per policy, only backends of %s" % (
            re.sub(" on [^;]*;.*$", "", str(seen.get("reason") or "")),
            ("role " + ", ".join(roles)) if roles else ("database " + ", ".join(databases)))
    elif not healthy:
        why = "usage %s%% >= %s%%: terminate per policy" % (usage, threshold)
    elif force:
        why = "usage %s%% < %s%%, p3_db_force: terminate per policy anyway" % (usage, threshold)
    else:
        why = "usage %s%% < %s%%: nothing to do" % (usage, threshold)
    return dict(
        exhausted=not healthy,
        act=(not healthy) or force,
        cause="connection_limit" if limit_scope else ("max_connections" if over_max else None),
        include_users=include_users if (include_users or not limit_scope) else roles,
        include_databases=databases if limit_scope and not roles else [],
        why=why,
    )


def database_restart(decision, settled, settings):
    """Restart the app hosts or not, after the terminate and the settle probe: wanted, app_after_terminate, why.

    decision: the database_decision; settled: the app_probe result right after the terminate ({skipped: true} when
    it did not run); settings: restart_app (never, auto, always), check_mode, settle_timeout."""
    decision = decision or {}
    settled = settled or {"skipped": True}
    settings = settings or {}
    mode = settings.get("restart_app")
    act = bool(decision.get("act"))
    check_mode = _on(settings, "check_mode")
    after = None if settled.get("skipped") else settled.get("healthy")
    wanted = (not check_mode) and act and (mode == "always" or (mode == "auto" and after is False))
    if mode == "never":
        why = "p3_db_restart_app=never"
    elif not act:
        why = "nothing was done"
    elif check_mode:
        why = "check mode"
    elif mode == "always":
        why = "p3_db_restart_app=always"
    elif after is False:
        why = "app still unhealthy %s s after the terminate: %s" % (
            settings.get("settle_timeout"), settled.get("reason") or "")
    elif after:
        why = "app healthy again without a restart"
    else:
        why = "app health not checked (p3_db_app_check=false)"
    return dict(wanted=wanted, app_after_terminate=after, why=why)


def database_report(body):
    """The report body with its verdict: healthy, changed and reason (see database_outcome)."""
    out = dict(body)
    outcome = database_outcome(body)
    out.update(healthy=outcome["healthy"], changed=outcome["changed"], reason=outcome["reason"])
    return out


class FilterModule(object):
    def filters(self):
        return {
            "database_decision": database_decision,
            "database_input_errors": database_input_errors,
            "database_outcome": database_outcome,
            "database_report": database_report,
            "database_restart": database_restart,
            "pool_budget": pool_budget,
        }
