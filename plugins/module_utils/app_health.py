# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verdicts on the application's health and pulse endpoints (pure functions over http_client responses)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible_collections.p3.recovery.plugins.module_utils.common import num_text, one_line
from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response, truncate

GOOD = frozenset(["ok", "healthy", "up", "pass", "passed", "green", "ready", "true", "alive", "connected", "active",
                  "success"])  # P3 adds receipt: {status: "success"} to its answers (createReceipt)
BAD = frozenset(["unhealthy", "degraded", "down", "fail", "failed", "failing", "error", "critical", "ko", "red",
                 "false", "dead", "unavailable", "disconnected", "inactive"])
MAX_JSON_BODY = 64 * 1024


def status_of(value):
    """A component's status as a lower-case word: 'ok', 'unhealthy', ... or the raw text (for error strings)."""
    if isinstance(value, bool):
        return "ok" if value else "fail"
    if isinstance(value, dict):
        for key in ("status", "state", "health", "ok", "healthy"):
            if key in value:
                return status_of(value[key])
        return None
    if value is None:
        return None
    return str(value).strip().lower()


def is_bad(status):
    return status is not None and status not in GOOD


def detail_of(value):
    """What to say about a failing component: its error text, or its status plus error/message fields."""
    if isinstance(value, dict):
        parts = []
        st = status_of(value)
        for key in ("error", "message", "reason", "detail", "details"):
            if value.get(key) and not isinstance(value.get(key), (dict, list)):
                parts.append(str(value[key]))
                break
        if not parts and st:
            parts.append(st)
        return one_line(": ".join(parts), 200)
    if isinstance(value, bool):
        return "ok" if value else "failing"
    return one_line(value, 200) if value is not None else "failing"


def failing_components(body):
    """[(name, detail)] of the components a health body reports as failing.

    Understands the lab's {"failing": [...], "checks": {name: "ok" | "<error>"}}, P3's detailed health
    {checks: {name: {status: ...}}} and /api/system/health {database: {status: "unhealthy"}}.
    """
    if not isinstance(body, dict):
        return []
    checks = body.get("checks")
    if not isinstance(checks, dict):
        checks = {}
    failing = body.get("failing")
    if isinstance(failing, list) and failing:
        return [(str(name), detail_of(checks.get(name)) if name in checks else "failing") for name in failing]
    out = []
    candidates = list(checks.items())
    for key, value in body.items():
        if key != "checks" and isinstance(value, dict) and any(k in value for k in ("status", "state", "healthy")):
            candidates.append((key, value))
    for name, value in candidates:
        if is_bad(status_of(value)):
            out.append((str(name), detail_of(value)))
    return out


def health_verdict(resp):
    """http_client response of the health endpoint -> dict(healthy, status, latency_ms, body, reason, failing)."""
    body = resp["json"] if resp["json"] is not None else truncate(resp["text"])
    if resp["json"] is not None and len(resp["raw"]) > MAX_JSON_BODY:
        body = truncate(resp["text"])
    out = dict(healthy=False, status=resp["status"], latency_ms=resp["latency_ms"], body=body, failing=[],
               url=resp["url"], reason=None)
    head = describe_response(resp)
    if resp["status"] is None or resp["error"]:
        out["reason"] = head
        return out
    components = failing_components(resp["json"])
    out["failing"] = [c[0] for c in components]
    overall = status_of(resp["json"].get("status")) if isinstance(resp["json"], dict) else None
    what = "; ".join("%s: %s" % (n, d) for n, d in components)
    if not resp["ok"]:
        if not what:
            what = _body_hint(resp)
        out["reason"] = "%s: %s" % (head, what) if what else head
        return out
    if components or (overall in BAD):
        out["reason"] = "%s but status=%s%s" % (head, overall or "?", (": " + what) if what else "")
        return out
    out["healthy"] = True
    out["reason"] = "%s%s in %s ms" % (head, (" status=%s" % overall) if overall else "", _ms(resp["latency_ms"]))
    return out


def _body_hint(resp, limit=160):
    body = resp["json"]
    if isinstance(body, dict):
        for key in ("error", "message", "reason", "detail"):
            if body.get(key) and not isinstance(body[key], (dict, list)):
                return one_line(body[key], limit)
        return one_line(json.dumps(body, sort_keys=True), limit)
    return one_line(resp["text"], limit)


def _ms(value):
    return "%d" % round(value) if value is not None else "?"


def _first(d, keys):
    for k in keys:
        if isinstance(d, dict) and isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool):
            return d[k]
    return None


def pulse_verdict(resp, min_peers=1):
    """http_client response of the pulse endpoint -> dict(healthy, status, peers, relay, active, reason)."""
    out = dict(healthy=False, skipped=False, status=resp["status"], latency_ms=resp["latency_ms"], peers=None,
               relay=None, active=None, url=resp["url"], reason=None)
    head = describe_response(resp)
    if resp["status"] is None or resp["error"]:
        out["reason"] = head
        return out
    if not resp["ok"]:
        hint = _body_hint(resp)
        out["reason"] = "%s: %s" % (head, hint) if hint else head
        return out
    body = resp["json"]
    if not isinstance(body, dict):
        out["reason"] = "%s: body is not JSON (%s)" % (head, (resp["content_type"] or "no content type").split(";")[0])
        return out
    st = body.get("status") if isinstance(body.get("status"), dict) else body
    active = st.get("active") if isinstance(st.get("active"), bool) else None
    relay = st.get("relay") if st.get("relay") is not None else body.get("relay")
    if relay is None and active is not None:
        relay = "up" if active else "down"
    peers = _first(st, ("subscribers", "peers", "nodes", "activeNodes")) if st is not body else None
    if peers is None:
        peers = _first(body, ("subscribers", "peers", "nodes", "activeNodes"))
    out.update(peers=peers, relay=relay, active=active)
    problems = []
    if body.get("ok") is False:
        problems.append("ok=false%s" % ((": " + one_line(body.get("error"), 120)) if body.get("error") else ""))
    if relay is not None and is_bad(status_of(relay)):
        problems.append("relay %s" % relay)
    elif active is False:
        problems.append("pulse inactive")
    if peers is None:
        if min_peers > 0:
            problems.append("no peer count in the answer")
    elif peers < min_peers:
        problems.append("peers %s < %s" % (num_text(peers), min_peers))
    if problems:
        out["reason"] = "%s: %s" % (head, ", ".join(problems))
        return out
    out["healthy"] = True
    shown_peers = num_text(peers) if peers is not None else "?"
    out["reason"] = "%s: relay %s, %s peers >= %s" % (head, relay or "?", shown_peers, min_peers)
    return out


def skipped_pulse():
    return dict(healthy=True, skipped=True, status=None, latency_ms=None, peers=None, relay=None, active=None,
                url=None, reason="not checked (pulse_path is empty)")


def app_verdict(health, pulse):
    """Overall app_probe verdict from the health and pulse sub-verdicts."""
    healthy = bool(health["healthy"] and pulse["healthy"])
    if healthy:
        reason = "health ok; pulse %s" % ("skipped" if pulse.get("skipped") else
                                          "ok (relay %s, %s peers)" % (pulse["relay"] or "?", num_text(pulse["peers"])))
    else:
        reason = "; ".join(v["reason"] for v in (health, pulse) if not v["healthy"])
    return healthy, reason
