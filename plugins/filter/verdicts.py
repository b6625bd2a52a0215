# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure transforms from probe results to verdicts: checks, triage (runbook severities) and the verdict table."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

RUNBOOK_RESPONSE = {
    "SEV-1": "Immediate",
    "SEV-2": "15 minutes",
    "SEV-3": "1 hour",
    "SEV-4": "4 hours",
}


from ansible_collections.p3.recovery.plugins.module_utils.common import one_line


def to_check(result, name, key=None):
    """A probe result (or one of its sub-results) as {name, healthy, reason}."""
    result = result or {}
    if result.get("skipped"):
        return {"name": name, "healthy": None, "reason": "skipped"}
    src = result.get(key) if key else result
    if not isinstance(src, dict) or "healthy" not in src:
        msg = result.get("msg") or result.get("reason") or "probe returned no verdict"
        return {"name": name, "healthy": False, "reason": one_line(msg, 300)}
    return {"name": name, "healthy": bool(src["healthy"]), "reason": one_line(src.get("reason", ""), 300)}


def _sev_rank(sev):
    try:
        return int(str(sev).split("-")[1])
    except (IndexError, ValueError):
        return 5


def triage(checks, severities=None, scenarios=None, depends=None):
    """Classify a list of checks with the runbook's incident table.

    severities: check name -> SEV-n when that check fails (unknown: SEV-3); scenarios: check name -> playbook to
    run; depends: check name -> the checks it depends on (the health endpoint depends on database and redis, the
    handshake on those and the app, the anchor backlog on the anchor worker and the wallet...). A failing check
    whose dependency also fails is a consequence, not a root cause: its scenario is not recommended (fix the
    dependency first, then diagnose again, as the runbook's recovery order says). Scenarios come out in the order
    of the checks, which the diagnose role lists in the runbook's recovery order (database, redis, express, mesh
    relay, anchor worker).

    The severity is the worst of every failing check, consequences included (the impact counts: the database down
    makes all auth fail, SEV-1). causes names each root cause with its reason, severity and scenario, and a
    one-line form (line) for people.
    """
    severities = severities or {}
    scenarios = scenarios or {}
    depends = depends or {}
    failing = [c for c in checks if c.get("healthy") is False]
    if not failing:
        return {"severity": None, "response_time": None, "failing": [], "root_causes": [], "consequences": [],
                "scenarios": [], "causes": []}
    failing_names = set(c["name"] for c in failing)
    roots, consequences, causes = [], [], []
    for c in failing:
        if failing_names.intersection(depends.get(c["name"], [])):
            consequences.append(c["name"])
        else:
            roots.append(c["name"])
            sev = severities.get(c["name"], "SEV-3")
            scenario = scenarios.get(c["name"])
            causes.append({"check": c["name"], "reason": c.get("reason", ""), "severity": sev, "scenario": scenario,
                           "line": one_line("%s (%s): %s%s" % (c["name"], sev, c.get("reason", ""),
                                                               (" -> %s" % scenario) if scenario else ""), 300)})
    worst = min((severities.get(c["name"], "SEV-3") for c in failing), key=_sev_rank)
    recs = []
    for name in roots:
        s = scenarios.get(name)
        if s and s not in recs:
            recs.append(s)
    return {
        "severity": worst,
        "response_time": RUNBOOK_RESPONSE.get(worst),
        "failing": [c["name"] for c in failing],
        "root_causes": roots,
        "consequences": consequences,
        "scenarios": recs,
        "causes": causes,
    }


def verdict_table(checks, width=110):
    """Render checks as fixed-width lines (one per check) for a debug task."""
    name_w = max([len("check")] + [len(c.get("name", "")) for c in checks])
    lines = ["%-*s  %-9s  %s" % (name_w, "check", "verdict", "reason")]
    for c in checks:
        h = c.get("healthy")
        verdict = "OK" if h is True else ("SKIPPED" if h is None else "UNHEALTHY")
        reason = c.get("reason", "")
        room = max(20, width - name_w - 13)
        if len(reason) > room:
            reason = reason[: room - 3] + "..."
        lines.append("%-*s  %-9s  %s" % (name_w, c.get("name", ""), verdict, reason))
    return lines


_ANSIBLE_KEYS = ("invocation", "changed", "failed", "failed_when_result", "skipped", "_ansible_no_log")


def evidence(result, drop=None):
    """A registered result without Ansible's bookkeeping keys (and without the keys in drop)."""
    drop = set(_ANSIBLE_KEYS) | set(drop or [])
    return dict((k, v) for k, v in (result or {}).items() if k not in drop)


def redis_serving(result):
    """Whether Redis, as a redis_probe (or redis_cluster_topology) result describes it, serves clients: the
    result's own C(serving), which comes from the one node-health model (redis_cluster.judge_node) - a cluster
    serves when the reachable nodes say cluster_state:ok, the views agree and every slot is served by a reachable
    master that is not flagged (a dead replica or a failed-over former master does not stop it; a busy master's
    slots are not served until it answers); a standalone Redis when the probe is healthy. Results without that field
    (older evidence) are judged from their slot counts."""
    result = result or {}
    if result.get("serving") is not None:
        return bool(result["serving"])
    if result.get("cluster_enabled"):
        return (result.get("cluster_state") == "ok" and not result.get("slots_uncovered")
                and result.get("slots_ok") == 16384)
    return bool(result.get("healthy"))


class FilterModule(object):
    def filters(self):
        return {
            "evidence": evidence,
            "redis_serving": redis_serving,
            "to_check": to_check,
            "triage": triage,
            "verdict_table": verdict_table,
        }
