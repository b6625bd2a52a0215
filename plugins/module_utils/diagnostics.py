# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook's quick-diagnostics probes as functions over a target, shared by the one-probe modules
(app_probe, postgres_probe, metrics_probe, redis_probe) and by quick_diagnostics, which runs them concurrently
in one module process. Each returns the probe result dict (common.probe_result) and never exits the module."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ansible_collections.p3.recovery.plugins.module_utils.app_health import (
    app_verdict,
    health_verdict,
    pulse_verdict,
    skipped_pulse,
)
from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error,
    describe_error,
    one_line,
    probe_result,
    run_parallel,
)
from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response
from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
from ansible_collections.p3.recovery.plugins.module_utils.pg_activity import (
    LIMITS_SQL,
    SETTINGS_SQL,
    connect_hint,
    connection_limits,
    limited,
    limits_reason,
)


# ---------------------------------------------------------------------------------------------------------------
# App: health endpoint + pulse status
# ---------------------------------------------------------------------------------------------------------------

def app_probe(target, health_path="/health", pulse_path="/pulse/status", min_peers=1):
    paths = [health_path or "/"]
    if pulse_path:
        paths.append(pulse_path)
    responses = target.get_many(paths)
    health = health_verdict(responses[0])
    pulse = pulse_verdict(responses[1], min_peers=min_peers) if pulse_path else skipped_pulse()
    healthy, reason = app_verdict(health, pulse)
    return probe_result(healthy, reason, health=health, pulse=pulse)


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL: SELECT 1, version, connections used vs max_connections
# ---------------------------------------------------------------------------------------------------------------

# The server settings the probe reports: the same query postgres_activity uses (one definition).
PG_SETTINGS_SQL = SETTINGS_SQL

PG_ACTIVITY_SQL = """
SELECT COALESCE(state, 'unknown') AS state,
       COALESCE(NULLIF(application_name, ''), '(none)') AS application_name,
       COALESCE(usename::text, '(unknown)') AS usename,
       count(*)::int AS n,
       max(EXTRACT(EPOCH FROM now() - query_start)) FILTER (WHERE state = 'active' AND pid <> pg_backend_pid())
         AS longest_active_seconds
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
 GROUP BY 1, 2, 3
"""

PG_EVIDENCE_KEYS = ("latency_ms", "server_version", "server_version_num", "usage_pct", "connections", "in_recovery",
                    "user", "superuser", "database", "limits", "limited")
PG_SETTING_KEYS = ("server_version", "server_version_num", "in_recovery", "user", "superuser", "database")


def check_usage_threshold(threshold):
    if not 0 < threshold <= 100:
        raise P3Error("max_usage_pct must be in (0, 100], got %s" % threshold)


def _pct(value):
    return ("%d" % value) if float(value).is_integer() else ("%.1f" % value)


def postgres_probe(target, threshold=80):
    evidence = dict((k, None) for k in PG_EVIDENCE_KEYS)
    evidence.update(target=target.target, max_usage_pct=float(threshold))
    client = target.client()
    try:
        t0 = time.monotonic()
        client.connect()
        if client.scalar("SELECT 1") != 1:
            raise P3Error("SELECT 1 on %s did not return 1" % target.target)
        evidence["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 2)
        settings = client.query(PG_SETTINGS_SQL)[0]
        rows = client.query(PG_ACTIVITY_SQL)
        limit_rows = client.query(LIMITS_SQL)
    except P3Error as e:
        return probe_result(False, connect_hint(e.msg), **evidence)
    finally:
        client.close()
    for key in PG_SETTING_KEYS:
        evidence[key] = settings[key]

    by_state, by_app, by_user = {}, {}, {}
    longest = None
    for r in rows:
        for bucket, key in ((by_state, r["state"]), (by_app, r["application_name"]), (by_user, r["usename"])):
            bucket[key] = bucket.get(key, 0) + r["n"]
        if r["longest_active_seconds"] is not None:
            longest = max(longest or 0.0, float(r["longest_active_seconds"]))
    used = sum(r["n"] for r in rows)
    max_conn = settings["max_connections"]
    usage = round(100.0 * used / max_conn, 1) if max_conn else 0.0
    evidence["usage_pct"] = usage
    evidence["connections"] = dict(
        used=used,
        max=max_conn,
        superuser_reserved=settings["superuser_reserved_connections"],
        reserved=settings["reserved_connections"],
        available=max(0, max_conn - settings["superuser_reserved_connections"] - settings["reserved_connections"] - used),
        by_state=by_state,
        by_application=by_app,
        by_user=by_user,
        longest_active_seconds=round(longest, 1) if longest is not None else None,
    )
    summary = "connections %d/%d (%s%%)" % (used, max_conn, _pct(usage))
    # A role or database at its own CONNECTION LIMIT locks its clients out at any max_connections usage: the
    # root cause, named first.
    items = connection_limits(limit_rows, threshold)
    evidence["limits"] = items
    evidence["limited"] = limited(items)
    over_limit = limits_reason(items)
    if over_limit:
        return probe_result(False, "%s on %s; %s %s %s%%" % (
            over_limit, target.target, summary, ">=" if usage >= threshold else "<", _pct(threshold)), **evidence)
    if usage >= threshold:
        return probe_result(False, "%s >= %s%% on %s" % (summary, _pct(threshold), target.target), **evidence)
    return probe_result(True, "%s < %s%% on %s (PostgreSQL %s)" % (
        summary, _pct(threshold), target.target, settings["server_version"].split()[0]), **evidence)


# ---------------------------------------------------------------------------------------------------------------
# Redis: every node, cluster state, slot coverage (the logic lives in redis_client.RedisTarget.probe)
# ---------------------------------------------------------------------------------------------------------------

def redis_probe(target):
    verdict = dict(target.probe())
    healthy = verdict.pop("healthy")
    reason = verdict.pop("reason")
    return probe_result(healthy, reason, **verdict)


# ---------------------------------------------------------------------------------------------------------------
# Prometheus metrics
# ---------------------------------------------------------------------------------------------------------------

class SelectError(P3Error):
    """O(select) did not evaluate; details hold the evidence gathered so far."""


def metrics_probe(target, metrics_path="/metrics", required=None, expression=None):
    resp = target.get(metrics_path or "/metrics")
    required = list(required or [])
    evidence = dict(url=resp["url"], status=resp["status"], latency_ms=resp["latency_ms"], metrics={},
                    summary=m.summarize({}), missing=list(required), selected=None)
    head = describe_response(resp)
    if not resp["ok"]:
        hint = " ".join(resp["text"].split())[:160] if resp["status"] is not None and resp["text"] else ""
        return probe_result(False, "%s: %s" % (head, hint) if hint else head, **evidence)
    try:
        metrics = m.parse_metrics(resp["text"])
    except P3Error as e:
        return probe_result(False, "%s: %s" % (head, e.msg), **evidence)
    summary = m.summarize(metrics)
    missing = m.missing_metrics(metrics, required)
    evidence.update(metrics=metrics, summary=summary, missing=missing)
    if expression:
        try:
            evidence["selected"] = m.select(metrics, expression)
        except P3Error as e:
            raise SelectError(e.msg, **evidence)
    counts = "%d families, %d samples" % (summary["families"], summary["samples"])
    if not metrics:
        return probe_result(False, "%s: no metrics in the answer" % head, **evidence)
    if missing:
        return probe_result(False, "%s: %s; missing: %s" % (head, counts, ", ".join(missing)), **evidence)
    return probe_result(True, "%s: %s%s" % (head, counts, "; all required present" if required else ""), **evidence)


# ---------------------------------------------------------------------------------------------------------------
# Several probes at once
# ---------------------------------------------------------------------------------------------------------------

class ProbeInputError(Exception):
    """Raised instead of exiting when a probe's target rejects its input inside quick_diagnostics."""

    def __init__(self, msg, details=None):
        super(ProbeInputError, self).__init__(msg)
        self.msg = msg
        self.details = details or {}


class ScopedModule(object):
    """A stand-in for AnsibleModule given to one probe's target: fail_json raises ProbeInputError (so one probe's
    bad input becomes that probe's verdict, not the end of the others); everything else is the real module, so
    secrets a target registers land in the real module's no_log values."""

    def __init__(self, module):
        self._module = module

    def fail_json(self, msg, **kwargs):
        kwargs.pop("exception", None)
        raise ProbeInputError(msg, kwargs)

    def exit_json(self, **kwargs):  # never expected from a target; keep it from ending the module
        raise ProbeInputError("a probe tried to exit early")

    def __getattr__(self, name):
        return getattr(self._module, name)


def run_probes(probes, deadline=None):
    """Run {name: callable} concurrently (one thread each); return {name: probe result}.

    A callable that raises gives its probe healthy=false with the one-line cause and error=true, so one bad
    input or unexpected failure never hides the other verdicts. The probes bound their own network waits with
    their timeouts; deadline (seconds) is only a last-resort guard against a probe that ignores them.
    """
    results, errors, late = run_parallel(probes, deadline, "probe")
    out = {}
    for name in probes:
        if name in late:
            out[name] = probe_result(False, "%s probe did not finish within %s s" % (name, deadline), error=True)
        elif name in errors:
            e = errors[name]
            reason = e.msg if isinstance(e, (ProbeInputError, P3Error)) else "%s probe failed: %s" % (
                name, describe_error(e))
            out[name] = probe_result(False, reason, error=True)
        else:
            out[name] = results[name]
    return out


def summary_reason(results):
    bad = ["%s: %s" % (name, one_line(r.get("reason", ""), 200)) for name, r in results.items() if not r.get("healthy")]
    if bad:
        return "%d of %d probes unhealthy - %s" % (len(bad), len(results), "; ".join(bad))
    return "all %d probes healthy (%s)" % (len(results), ", ".join(results))
