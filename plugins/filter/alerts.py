# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure transforms for the runbook's monitoring alerts (drift_check).

evaluate_alerts(rules, observations): each rule is {name, severity, op, threshold, observe, unit}; observations map
each rule's observe key to {value, source} (value null when the probe could not measure it, its reason as source).
Returns one entry per rule: name, severity, condition, value, threshold, firing (true / false / null = unknown),
reason (one line). alert_summary(alerts): {healthy, firing, unknown, severity (worst firing)}.
observation(result, field): an alert's observed value from a probe result; redis_memory_usage(topology): the
redis_memory_high observation from a redis_cluster_topology result.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

_OPS = {
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
}
_RANK = {"SEV-1": 1, "SEV-2": 2, "SEV-3": 3, "SEV-4": 4}


def _fmt(value):
    if isinstance(value, float):
        return ("%d" % value) if value.is_integer() else ("%.4g" % value)
    return str(value)


def evaluate_alerts(rules, observations):
    out = []
    for rule in rules or []:
        op = rule.get("op", ">")
        if op not in _OPS:
            raise ValueError("alert %s: op must be one of %s, got %r" % (rule.get("name"), ", ".join(_OPS), op))
        unit = rule.get("unit", "")
        threshold = float(rule["threshold"])
        condition = "%s %s %s%s" % (rule.get("observe"), op, _fmt(threshold), unit)
        obs = (observations or {}).get(rule.get("observe")) or {}
        value = obs.get("value")
        entry = dict(name=rule["name"], severity=rule.get("severity", "SEV-3"), condition=condition, threshold=threshold,
                     value=value, firing=None)
        if value is None:
            entry["reason"] = "unknown: %s" % (obs.get("source") or "not measured")
        else:
            value = float(value)
            entry["value"] = value
            entry["firing"] = bool(_OPS[op](value, threshold))
            entry["reason"] = "%s%s %s (%s)%s" % (
                _fmt(value), unit, "FIRING" if entry["firing"] else "ok", condition,
                (" from " + obs["source"]) if obs.get("source") else "")
        out.append(entry)
    return out


def alert_summary(alerts):
    """{healthy, firing, unknown, severity}: severity is the worst among the firing alerts (null when none)."""
    firing = [a["name"] for a in alerts if a.get("firing") is True]
    unknown = [a["name"] for a in alerts if a.get("firing") is None]
    sevs = [a.get("severity") for a in alerts if a.get("firing") is True]
    worst = min(sevs, key=lambda s: _RANK.get(s, 5)) if sevs else None
    return dict(healthy=not firing and not unknown, firing=firing, unknown=unknown, severity=worst)


def _mib(n):
    return "%.1f MiB" % (n / 1048576.0)


def observation(result, field, healthy_default=None):
    """{value, source} for an alert from a probe result: its field, the probe's reason as the source; {} when the probe
    was skipped (alert not evaluated). healthy_default stands in for a null field of a healthy probe (e.g. no
    request in the window: a failure rate of 0)."""
    result = result or {}
    if result.get("skipped"):
        return {}
    value = result.get(field)
    if value is None and healthy_default is not None and result.get("healthy"):
        value = healthy_default
    source = result.get("reason") or result.get("msg") or "not measured"
    return dict(value=value, source=" ".join(str(source).split()))


def redis_memory_usage(topology):
    """{value, source} for the redis_memory_high alert from a redis_cluster_topology result: the highest used_memory
    of a reachable node as a percentage of its maxmemory, or of the host's memory when maxmemory is 0 (unlimited,
    the node can grow until the host runs out); value null when no node reported memory."""
    if (topology or {}).get("skipped"):
        return {}
    best = None
    for n in (topology or {}).get("nodes") or []:
        used = n.get("used_memory")
        if not n.get("reachable") or used is None:
            continue
        limit, of = n.get("maxmemory"), "maxmemory"
        if not limit:
            limit, of = n.get("total_system_memory"), "system memory (maxmemory 0)"
        if not limit:
            continue
        pct = round(100.0 * used / limit, 2)
        if best is None or pct > best[0]:
            best = (pct, "%s: %s of %s %s" % (n.get("address"), _mib(used), of, _mib(limit)))
    if best is None:
        reason = (topology or {}).get("msg") or (topology or {}).get("reason") or "no node reported its memory"
        return dict(value=None, source=" ".join(str(reason).split())[:200])
    return dict(value=best[0], source=best[1])


def alert_table(alerts):
    """One line per alert: name, OK / FIRING <severity> / UNKNOWN, and the reason."""
    lines = ["%-26s %-14s %s" % ("alert", "state", "reason")]
    for a in alerts or []:
        state = ("FIRING " + str(a.get("severity"))) if a.get("firing") else ("UNKNOWN" if a.get("firing") is None else "OK")
        lines.append("%-26s %-14s %s" % (a.get("name"), state, a.get("reason", "")))
    return lines


class FilterModule(object):
    def filters(self):
        return {
            "evaluate_alerts": evaluate_alerts,
            "alert_summary": alert_summary,
            "alert_table": alert_table,
            "observation": observation,
            "redis_memory_usage": redis_memory_usage,
        }
