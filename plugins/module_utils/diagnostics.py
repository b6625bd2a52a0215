# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook's diagnostics probes as functions over a target, shared by the one-probe modules (app_probe,
postgres_probe, metrics_probe, redis_probe, session_handshake_probe, session_auth_probe, session_census,
bullmq_probe, chain_probe) and by quick_diagnostics, which runs them concurrently in one module process under one
deadline. Each returns the probe result dict (common.probe_result) and never exits the module.

Each probe imports its backend's client where it runs (HTTP: app_health/http_client, Redis: bullmq, chain, metrics),
so that a one-probe module pays only for its own backend at every start (redis_probe loads no HTTP stack, the HTTP
probes no redis-py; tests/unit/test_import_cost.py holds this)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error,
    describe_error,
    one_line,
    probe_result,
    run_parallel,
)
from ansible_collections.p3.recovery.plugins.module_utils.pg_activity import (
    BACKENDS_SQL,
    LIMITS_SQL,
    SETTINGS_SQL,
    connect_hint,
    connection_limits,
    evidence as backend_evidence,
    limited,
    limits_reason,
    long_running,
)


# ---------------------------------------------------------------------------------------------------------------
# App: health endpoint + pulse status
# ---------------------------------------------------------------------------------------------------------------

def app_probe(target, health_path="/health", pulse_path="/pulse/status", min_peers=1):
    from ansible_collections.p3.recovery.plugins.module_utils.app_health import (
        app_verdict, health_verdict, pulse_verdict, skipped_pulse)
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


def slow_queries_verdict(rows, seconds, target, query_length=200, max_items=10):
    """The runbook's "find long-running queries" judged (pure): statements running (state active) for at least
    seconds, other than ours, oldest first. Healthy when there is none."""
    slow = [r for r, why in long_running(rows, seconds) if "query" in why]
    items = [backend_evidence(r, query_length) for r in slow[:max_items]]
    out = dict(threshold_seconds=float(seconds), count=len(slow), queries=items)
    if not slow:
        return probe_result(True, "no statement running >= %ss on %s" % (_pct(seconds), target), **out)
    oldest = items[0]
    return probe_result(False, "%d statement%s running >= %ss on %s (oldest %ss, pid %s, %s: %s)" % (
        len(slow), "" if len(slow) == 1 else "s", _pct(seconds), target, oldest["query_age_seconds"], oldest["pid"],
        oldest["application"] or oldest["user"], one_line(oldest["query"] or "", 80)), **out)


def postgres_probe(target, threshold=80, slow_query_seconds=None, query_length=200):
    """SELECT 1, settings, connection usage and limits; with slow_query_seconds also the long-running statements
    (in RV(slow_queries), a verdict of its own; the same connection, one more query)."""
    evidence = dict((k, None) for k in PG_EVIDENCE_KEYS)
    evidence.update(target=target.target, max_usage_pct=float(threshold))
    client = target.client()
    backends = None
    try:
        t0 = time.monotonic()
        client.connect()
        if client.scalar("SELECT 1") != 1:
            raise P3Error("SELECT 1 on %s did not return 1" % target.target)
        evidence["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 2)
        settings = client.query(PG_SETTINGS_SQL)[0]
        rows = client.query(PG_ACTIVITY_SQL)
        limit_rows = client.query(LIMITS_SQL)
        if slow_query_seconds is not None:
            backends = client.query(BACKENDS_SQL, dict(query_length=query_length))
    except P3Error as e:
        reason = connect_hint(e.msg)
        if slow_query_seconds is not None:
            evidence["slow_queries"] = probe_result(False, "not measured: %s" % reason, threshold_seconds=float(
                slow_query_seconds), count=None, queries=[])
        return probe_result(False, reason, **evidence)
    finally:
        client.close()
    if backends is not None:
        evidence["slow_queries"] = slow_queries_verdict(backends, slow_query_seconds, target.target, query_length)
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
    from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
    from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response
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
# Sessions: the handshake (can anyone log in?), the auth failure rate, the session keyspace
# ---------------------------------------------------------------------------------------------------------------

HANDSHAKE_BODY = {"deviceId": "p3-recovery-probe", "capabilities": {"encoding": ["json"]}}


def handshake_probe(target, handshake_path="/api/protocol/session/handshake", body=None, expected_status=(200, 201),
                    required_fields=("sessionId",), session_field="sessionId", session_path="", max_latency_ms=2000):
    """The runbook's handshake curl, judged (see session_handshake_probe): status, JSON answer with the required
    fields, latency, and the new session read back when session_path is set."""
    from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response, request, truncate
    headers = dict(target.headers)
    headers.setdefault("Content-Type", "application/json")
    resp = request(target.url_for(handshake_path), method="POST", timeout=target.timeout, headers=headers,
                   validate_certs=target.validate_certs,
                   data=json.dumps(HANDSHAKE_BODY if body is None else body).encode("utf-8"),
                   secrets=target.secrets, context=target.context)
    head = describe_response(resp)
    answer = resp["json"] if resp["json"] is not None else truncate(resp["text"])
    out = dict(status=resp["status"], latency_ms=resp["latency_ms"], session_id=None, missing_fields=[], body=answer,
               readback_status=None)
    problems = []
    if resp["status"] is None or resp["error"]:
        problems.append(head)
    else:
        if resp["status"] not in expected_status:
            problems.append("%s, expected %s" % (head, "/".join(str(s) for s in expected_status)))
        if not isinstance(resp["json"], dict):
            problems.append("answer is not a JSON object")
        else:
            out["missing_fields"] = [f for f in required_fields if f not in resp["json"]]
            if out["missing_fields"]:
                problems.append("answer lacks %s" % ", ".join(out["missing_fields"]))
            sid = resp["json"].get(session_field)
            out["session_id"] = str(sid) if sid is not None else None
        if resp["latency_ms"] is not None and resp["latency_ms"] > max_latency_ms:
            problems.append("handshake took %s ms > %s ms" % (int(resp["latency_ms"]), max_latency_ms))
    if session_path and not problems:
        if not out["session_id"]:
            problems.append("no %s in the answer to read back" % session_field)
        else:
            back = target.get(session_path.replace("{id}", out["session_id"]))
            out["readback_status"] = back["status"]
            if back["status"] != 200:
                problems.append("session read-back: %s" % describe_response(back))
    if problems:
        reason = "; ".join(problems) if problems[0].startswith(("GET", "POST")) else "%s: %s" % (head, "; ".join(problems))
    else:
        reason = "%s in %s ms%s" % (head, int(round(resp["latency_ms"] or 0)),
                                    "; session read back (200)" if out["readback_status"] == 200 else "")
    return probe_result(not problems, reason, **out)


def _counter_sum(metrics, family, label=None, value=None):
    name = family[:-len("_total")] if family.endswith("_total") and family not in metrics else family
    entry = metrics.get(name)
    if entry is None:
        raise P3Error("metric %s not exposed" % family)
    total = 0.0
    for s in entry["samples"]:
        if s["name"].endswith("_created"):
            continue
        if label and s["labels"].get(label) != value:
            continue
        if isinstance(s["value"], (int, float)):
            total += s["value"]
    return total


def auth_counts(text, failures_metric="p3_auth_failures_total", requests_metric="api_requests_total",
                status_label="status"):
    """(401 answers, all requests) from a metrics page: failures_metric, or (empty) the requests with status 401."""
    from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
    metrics = m.parse_metrics(text)
    if failures_metric:
        failures = _counter_sum(metrics, failures_metric)
    else:
        failures = _counter_sum(metrics, requests_metric, status_label, "401")
    return failures, _counter_sum(metrics, requests_metric)


def auth_rate_verdict(failures, requests, max_failure_pct=5, window_seconds=0):
    """The runbook's alert session_auth_failure_rate (error_rate > 5%) judged (pure)."""
    pct = round(100.0 * failures / requests, 2) if requests else None
    scope = ("in %gs" % window_seconds) if window_seconds else "since start"
    healthy = pct is None or pct <= max_failure_pct
    reason = "401s %d of %d requests %s (%s) %s %s%%" % (
        failures, requests, scope, "no traffic" if pct is None else "%s%%" % pct, "<=" if healthy else ">",
        max_failure_pct)
    return probe_result(healthy, reason, failures=failures, requests=requests, failure_pct=pct,
                        window_seconds=window_seconds)


def auth_rate_probe(target, metrics_path="/metrics", failures_metric="p3_auth_failures_total",
                    requests_metric="api_requests_total", status_label="status", window_seconds=0, max_failure_pct=5,
                    sleep=time.sleep):
    """Scrape the metrics (twice, window_seconds apart, when a window is set) and judge the 401 rate."""
    from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response

    def scrape():
        resp = target.get(metrics_path or "/metrics")
        if not resp["ok"]:
            raise P3Error("metrics scrape failed: %s" % describe_response(resp))
        return auth_counts(resp["text"], failures_metric, requests_metric, status_label)

    try:
        failures, requests = scrape()
        if window_seconds:
            sleep(window_seconds)
            f2, r2 = scrape()
            failures, requests = max(0.0, f2 - failures), max(0.0, r2 - requests)
    except P3Error as e:
        return probe_result(False, e.msg, failures=None, requests=None, failure_pct=None, window_seconds=window_seconds)
    return auth_rate_verdict(failures, requests, max_failure_pct, window_seconds)


def census_verdict(result, max_corrupt=0):
    """A session census (sessions.census) judged: healthy when at most max_corrupt sessions are corrupt and every
    master was read."""
    masters = len(result["nodes"])
    reasons = ", ".join("%s %d" % kv for kv in sorted(result["by_reason"].items()))
    problems = []
    if result["corrupt"] > max_corrupt:
        problems.append("%d corrupt of %d sessions on %d masters (%s) > %d" % (
            result["corrupt"], result["keys"], masters, reasons, max_corrupt))
    if result["unreadable"]:
        problems.append("masters not read: %s" % "; ".join(result["errors"] or result["unreadable"]))
    if problems:
        return probe_result(False, "; ".join(problems), **result)
    return probe_result(True, "%d sessions on %d masters, %d corrupt%s" % (
        result["keys"], masters, result["corrupt"], (" (%s)" % reasons) if reasons else ""), **result)


# ---------------------------------------------------------------------------------------------------------------
# Anchor queue (BullMQ): backlog, failed jobs, and whether any worker serves the queue
# ---------------------------------------------------------------------------------------------------------------

def worker_verdict(queue, workers, node=None, stuck=None):
    """Whether the queue has a worker that takes jobs (pure). workers: the number of connections named by the queue's
    workers (BullMQ's getWorkers: CLIENT LIST names <prefix>:<base64 queue>[:w:<name>]), None when CLIENT LIST is
    refused; stuck: why the connected workers take no job (bullmq.worker_takes_no_job), else None."""
    where = (" on %s" % node) if node else ""
    if workers and stuck:
        return probe_result(False, "anchor worker stuck: queue %s - %s%s" % (queue, stuck, where),
                            worker_connections=workers, stuck=stuck)
    if workers is None:
        return probe_result(True, "worker presence of queue %s not known (CLIENT LIST refused%s)" % (queue, where),
                            worker_connections=None)
    if workers == 0:
        return probe_result(False, "anchor worker absent: queue %s has no worker (no BullMQ worker connection%s)" % (
            queue, where), worker_connections=0)
    return probe_result(True, "queue %s has %d worker connection%s%s" % (
        queue, workers, "" if workers == 1 else "s", where), worker_connections=workers)


def anchor_probe(settings, queue, prefix="bull", max_waiting=1000, max_failed=0, max_wait_age_seconds=None,
                 failed_sample=100, stuck_wait_seconds=None):
    """The anchor queue read once (bullmq.read_queue): the backlog verdict (waiting, failed, age, paused, stalled;
    worker presence is judged apart) and, under C(worker), whether any worker serves the queue and takes jobs."""
    from ansible_collections.p3.recovery.plugins.module_utils import bullmq
    state = bullmq.read_queue(settings, queue, prefix, failed_sample=failed_sample,
                              stuck_wait_seconds=stuck_wait_seconds)
    base = state["base"]
    if state["error"]:
        return probe_result(False, state["error"], worker=probe_result(
            False, "not measured: %s" % state["error"], worker_connections=None), **base)
    extra = state["extra"]
    healthy, reason = bullmq.queue_verdict(state["counts"], extra, dict(
        max_waiting=max_waiting, max_failed=max_failed, max_wait_age_seconds=max_wait_age_seconds,
        require_worker=False, max_stalled=0))
    base.update(extra)
    base["worker"] = worker_verdict(queue, extra["worker_connections"], base["node"], extra.get("worker_stuck"))
    return probe_result(healthy, "%s on %s: %s" % (base["keys"], base["node"], reason), **base)


# ---------------------------------------------------------------------------------------------------------------
# Chain and the anchor wallet
# ---------------------------------------------------------------------------------------------------------------

def wallet_probe(rpc, wallet=None, expected_chain_id=None, low=10 ** 17, critical=5 * 10 ** 16, max_pending=0,
                 pending_confirm_seconds=None, deadline=None):
    """The runbook's eth_blockNumber + cast balance judged (chain.chain_facts; pending transactions are stuck only
    when still pending pending_confirm_seconds later - a wait bounded by deadline, a common.Deadline)."""
    from ansible_collections.p3.recovery.plugins.module_utils.chain import PENDING_CONFIRM_SECONDS, chain_facts
    if pending_confirm_seconds is None:
        pending_confirm_seconds = PENDING_CONFIRM_SECONDS
    facts = chain_facts(rpc, expected_chain_id=expected_chain_id, wallet=wallet, low=low, critical=critical,
                        max_pending=max_pending, pending_confirm_seconds=pending_confirm_seconds, deadline=deadline)
    healthy = facts.pop("healthy")
    reason = facts.pop("reason")
    return probe_result(healthy, reason, **facts)


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
