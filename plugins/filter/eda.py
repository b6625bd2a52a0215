# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure transforms of the Event-Driven Ansible loop (role drift_check, tasks_from eda_respond).

eda_response(rule): the response of an alert rule - {playbook, resource}.
eda_run_summary(stdout): what an ansible-playbook run with the json stdout callback did - ok, failed, changed and
the tasks that changed (in check mode: would change) or failed.
eda_outcome(guard, response, child): what the loop did about one alert, in words, for the log and the notification.
eda_notification(outcome, channel): the Slack-compatible JSON body (text, attachments) with Alertmanager-style
annotations (summary, description).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import re

MAX_TASKS = 20


def eda_response(rule):
    """{playbook, resource} of a p3_alert_rules entry: its playbook, its resource (default: the playbook)."""
    rule = rule or {}
    playbook = rule.get("playbook") or ""
    return dict(playbook=playbook, resource=rule.get("resource") or playbook or rule.get("name") or "?")


def _one(text, limit=300):
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


_TASK = re.compile(r"^TASK \[(.*)\] \**$")
_RESULT = re.compile(r"^(ok|changed|fatal|failed): \[([^\]]+)\](?::? ?(FAILED!|UNREACHABLE!))?(?: => (.*))?$")
_RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def _result_json(first, lines):
    """The JSON result printed after '=> ' (one line, or an indented block closed by '}' at column 0)."""
    text = first
    if first.strip() == "{":
        block = [first]
        for line in lines:
            block.append(line)
            if line.startswith("}"):
                break
        text = "\n".join(block)
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def eda_run_summary(stdout):
    """What an ansible-playbook run printed with the default stdout callback (ANSIBLE_CALLBACK_RESULT_FORMAT=json,
    ANSIBLE_NOCOLOR=1): {parsed (a PLAY RECAP was seen), ok, failed, changed, unreachable, changed_tasks,
    failed_tasks ([{task, host, msg}], at most MAX_TASKS each), summary (the msg of the last task that printed one),
    stats {host: {ok, changed, unreachable, failed}}}."""
    out = dict(parsed=False, ok=False, failed=False, changed=False, changed_tasks=[], failed_tasks=[],
               unreachable=False, summary=None, stats={})
    lines = iter((stdout if isinstance(stdout, str) else "").splitlines())
    task = None
    for line in lines:
        m = _TASK.match(line)
        if m:
            task = m.group(1)
            continue
        m = _RECAP.match(line)
        if m:
            out["parsed"] = True
            out["stats"][m.group(1)] = dict(ok=int(m.group(2)), changed=int(m.group(3)), unreachable=int(m.group(4)),
                                            failed=int(m.group(5)))
            continue
        m = _RESULT.match(line)
        if not m:
            continue
        status, host, flag, rest = m.groups()
        res = _result_json(rest, lines) if rest else {}
        msg = res.get("msg")
        if isinstance(msg, list):
            msg = "; ".join(str(x) for x in msg)
        if msg and status in ("ok", "changed") and not (task or "").startswith("p3.recovery.incident_record"):
            out["summary"] = _one(msg, 600)
        entry = dict(task=task or "?", host=host, msg=_one(msg or res.get("reason") or ""))
        if status in ("fatal", "failed") or flag:
            if len(out["failed_tasks"]) < MAX_TASKS:
                out["failed_tasks"].append(entry)
        elif status == "changed" and len(out["changed_tasks"]) < MAX_TASKS:
            out["changed_tasks"].append(entry)
    stats = out["stats"]
    out["failed"] = any(s["failed"] + s["unreachable"] for s in stats.values())
    out["unreachable"] = any(s["unreachable"] for s in stats.values())
    out["changed"] = any(s["changed"] for s in stats.values())
    out["ok"] = bool(stats) and not out["failed"]
    return out


def eda_outcome(guard, response=None, child=None):
    """What the loop did about one alert: decision, alert, resource, playbook, ran (real/check/none), ok, failed,
    changed, plan (tasks that would change), done (tasks that changed), notify (worth telling a human), text."""
    guard = guard or {}
    response = response or {}
    alert = guard.get("alert") or {}
    decision = guard.get("decision") or "?"
    playbook = response.get("playbook") or ""
    out = dict(decision=decision, alert=alert, resource=(guard.get("breaker") or {}).get("resource"),
               playbook=playbook, reason=guard.get("reason") or "", ran="none", ok=True, failed=False,
               changed=bool(guard.get("changed")) and decision not in ("duplicate", "ignored"), plan=[], done=[],
               breaker=guard.get("breaker") or {}, summary=None,
               notify=decision in ("act", "plan", "refused", "resolved"))
    name = "%s (%s, since %s)" % (alert.get("name", "?"), alert.get("fingerprint", "?"), alert.get("startsAt") or "?")
    if decision in ("act", "plan") and not playbook:
        out["text"] = "%s: no response is mapped to this alert - nothing run, a human must look" % name
        out["ran"] = "none"
        return out
    if child is not None and not child.get("skipped"):
        summary = eda_run_summary(child.get("stdout"))
        rc = child.get("rc")
        out["ran"] = "check" if decision == "plan" else "real"
        out["ok"] = rc == 0 and summary["ok"]
        out["failed"] = not out["ok"]
        if decision == "plan":
            out["plan"] = summary["changed_tasks"]
        else:
            out["done"] = summary["changed_tasks"]
            out["changed"] = out["changed"] or summary["changed"]
        out["failed_tasks"] = summary["failed_tasks"]
        out["summary"] = summary["summary"]
        if not summary["parsed"]:
            err = [x for x in str(child.get("stderr") or "").splitlines() if "ERROR" in x or "rror" in x]
            out["failed_tasks"] = [dict(task=playbook, host="localhost",
                                        msg=_one(child.get("msg") if child.get("msg") and rc is None else
                                                 (err[-1] if err else "rc %s, no play recap" % rc)))]
        if child.get("msg") and "timed out" in str(child.get("msg")).lower():
            out["failed_tasks"].append(dict(task=playbook, host="localhost", msg=_one(child["msg"])))
    if decision == "act":
        what = "; ".join("%s%s" % (t["task"], (": " + t["msg"]) if t.get("msg") else "") for t in out["done"][:6])
        out["text"] = "%s: ran %s - %s%s%s" % (
            name, playbook, "succeeded" if out["ok"] else "FAILED",
            (", changed: " + what) if what else ", nothing needed changing",
            (" - " + out["summary"]) if out.get("summary") else "")
    elif decision == "plan":
        what = "; ".join(t["task"] for t in out["plan"][:8])
        out["text"] = "%s: %s is not allowed to act unattended - planned it in check mode%s%s; a human decides" % (
            name, playbook, (", it would change: " + what) if what else ", it would change nothing",
            "" if out["ok"] else " (the check run failed)")
    elif decision == "refused":
        out["text"] = "%s: REFUSED - %s" % (name, out["reason"])
    else:
        out["text"] = "%s: %s" % (name, out["reason"])
    if out["failed"] and out.get("failed_tasks"):
        out["text"] += " | failed: " + "; ".join("%s: %s" % (t["task"], t["msg"]) for t in out["failed_tasks"][:3])
    out["text"] = _one(out["text"], 1500)
    return out


_COLOR = {"act": "good", "plan": "warning", "refused": "danger", "resolved": "good"}


def eda_notification(outcome, channel=None):
    """The Slack-compatible body of an outcome: text, attachments (fields), annotations (summary, description) and
    the machine-readable p3_eda (decision, alert, resource, playbook, ran, ok, plan, done)."""
    o = outcome or {}
    alert = o.get("alert") or {}
    decision = o.get("decision", "?")
    color = "danger" if o.get("failed") else _COLOR.get(decision, "#888888")
    head = {"act": "acted", "plan": "planned (not allowed unattended)", "refused": "refused (circuit breaker)",
            "resolved": "episode ended"}.get(decision, decision)
    fields = [dict(title="alert", value="%s %s" % (alert.get("name", "?"), alert.get("status", "")), short=True),
              dict(title="decision", value=decision, short=True),
              dict(title="fingerprint", value=alert.get("fingerprint", ""), short=True),
              dict(title="startsAt", value=alert.get("startsAt", ""), short=True)]
    if o.get("playbook"):
        fields.append(dict(title="response", value="%s (%s)" % (o["playbook"], o.get("ran", "none")), short=True))
    if o.get("plan"):
        fields.append(dict(title="plan (check mode)", value="\n".join(
            "- %s%s" % (t["task"], (": " + t["msg"]) if t.get("msg") else "") for t in o["plan"][:MAX_TASKS]),
            short=False))
    body = dict(
        text="[p3.recovery EDA] %s %s: %s" % (alert.get("name", "?"), head, o.get("text", "")),
        attachments=[dict(color=color, fallback=o.get("text", ""), fields=fields)],
        annotations=dict(summary="p3.recovery EDA %s on %s" % (head, alert.get("name", "?")),
                         description=o.get("text", "")),
        p3_eda=dict((k, o.get(k)) for k in ("decision", "alert", "resource", "playbook", "ran", "ok", "failed",
                                            "plan", "done", "breaker")),
    )
    if channel:
        body["channel"] = channel
    return body


def _mib(n):
    return "%.1f MiB" % ((n or 0) / 1048576.0)


def memory_lines(report):
    """A redis_memory_report result as lines: the reason, one line per master, the biggest prefixes and keys."""
    r = report or {}
    lines = [r.get("reason", "")]
    for n in r.get("nodes") or []:
        lines.append("%-22s used %s of maxmemory %s%s, %s keys, %d measured%s" % (
            n.get("address"), _mib(n.get("used_memory")), _mib(n.get("maxmemory")) if n.get("maxmemory") else "unlimited",
            (" (%.1f%%)" % n["used_pct"]) if n.get("used_pct") is not None else "", n.get("keys"), n.get("sampled", 0),
            (" - " + n["error"]) if n.get("error") else ""))
    lines.append("biggest prefixes:")
    for p in r.get("prefixes") or []:
        lines.append("  %-30s %8d keys %12s (largest %s)" % (p["prefix"], p["keys"], _mib(p["bytes"]), _mib(p["max_bytes"])))
    lines.append("biggest keys:")
    for k in r.get("top_keys") or []:
        lines.append("  %-40s %12s on %s" % (k["key"], _mib(k["bytes"]), k["node"]))
    return lines


class FilterModule(object):
    def filters(self):
        return {
            "eda_response": eda_response,
            "eda_run_summary": eda_run_summary,
            "eda_outcome": eda_outcome,
            "eda_notification": eda_notification,
            "memory_lines": memory_lines,
        }
