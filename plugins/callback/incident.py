# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
name: incident
type: aggregate
short_description: Record the incident timeline (JSONL) and render the runbook's postmortem from it
version_added: 0.1.0
description:
  - Records, with real UTC timestamps, every result of a C(p3.recovery) module (probe verdicts, actions and the
    C(timeline) entries actions return) and every task that changed something, into a JSON-lines incident log.
    A task that runs several probes (M(p3.recovery.quick_diagnostics)) gives one entry per probe, under that
    probe's module name, with C(via) naming the module that ran it.
  - At the end of a run that saw anything unhealthy or changed anything, writes a postmortem draft in the
    runbook's template (summary, timeline, resolution, action items) filled with what the run saw and did.
  - Secrets are not recorded. Module invocations (arguments) are left out, and results hidden with C(no_log)
    stay hidden. Other sessions' SQL text and live session ids are left out unless O(include_sensitive).
  - The log and the postmortem are created with mode C(0600) and O(directory) with C(0700), whatever the umask.
    Several runs appending to one log at once never interleave (each line is one C(O_APPEND) write, under an
    exclusive C(flock) held while the run appends, re-reads the log and renders the postmortem).
  - Enable it with C(callbacks_enabled = p3.recovery.incident) in C(ansible.cfg) or
    E(ANSIBLE_CALLBACKS_ENABLED=p3.recovery.incident) (for example in an AWX job template's environment).
requirements:
  - enable in configuration
options:
  directory:
    description: Directory for the incident log and the postmortem.
    type: path
    default: reports
    env:
      - name: P3_INCIDENT_DIR
    ini:
      - section: p3_incident
        key: directory
  incident_id:
    description:
      - Name shared by the runs of one incident, so several playbook runs append to one log
        (C(incident-<id>.jsonl)); default is one log per UTC day.
      - A plain name part - an id with C(/) or C(..) is rejected (nothing is written, with a warning), and the
        final paths are checked to stay inside O(directory).
    type: str
    env:
      - name: P3_INCIDENT_ID
    ini:
      - section: p3_incident
        key: incident_id
  include_sensitive:
    description:
      - Record other sessions' SQL text and live session ids as they are. By default SQL text (keys named C(query))
        is replaced by a fingerprint of its normalised form and session ids by a hash, as in the reports
        (M(p3.recovery.write_report)).
    type: bool
    default: false
    env:
      - name: P3_INCIDENT_INCLUDE_SENSITIVE
    ini:
      - section: p3_incident
        key: include_sensitive
  keep_days:
    description:
      - Delete incident logs and postmortem drafts (C(incident-*.jsonl), C(postmortem-*.md)) in O(directory) that
        were last written more than this many days ago, at the end of each run that writes the log - for
        controllers that run scheduled drift checks for months. The current incident's files are never deleted.
      - V(0) keeps everything.
    type: int
    default: 0
    env:
      - name: P3_INCIDENT_KEEP_DAYS
    ini:
      - section: p3_incident
        key: keep_days
"""

import datetime
import fcntl
import glob
import json
import os
import tempfile
import time

from ansible.plugins.callback import CallbackBase

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line, parse_timestamp, utc_timestamp
from ansible_collections.p3.recovery.plugins.module_utils.report import make_private_dir, path_under, redact, safe_name

_SKIP_ACTIONS = ("p3.recovery.write_report",)
_EVIDENCE_KEYS = ("healthy", "reason", "changed", "msg", "severity")


def _attr(obj, new, old):
    """ansible-core >= 2.19 has .result/.task/.host; older releases have ._result/._task/._host."""
    try:
        return getattr(obj, new)
    except AttributeError:
        return getattr(obj, old, None)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "p3.recovery.incident"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._entries = []
        self._playbook = "adhoc"
        self._started = utc_timestamp()
        self._run = "%s-%d" % (datetime.datetime.now(datetime.timezone.utc).strftime("%H%M%S%f"), os.getpid())

    # -- collection -----------------------------------------------------------------------------------
    def v2_playbook_on_start(self, playbook):
        self._playbook = os.path.splitext(os.path.basename(getattr(playbook, "_file_name", "") or "adhoc"))[0]

    def _record(self, result, status):
        try:
            res = _attr(result, "result", "_result") or {}
            task = _attr(result, "task", "_task")
            host = _attr(result, "host", "_host")
            action = getattr(task, "resolved_action", None) or getattr(task, "action", "") or ""
        except Exception:  # pylint: disable=broad-except
            return
        verdict = (res.get("ansible_facts") or {}).get("p3_diagnose")
        if isinstance(verdict, dict) and verdict.get("triage", {}).get("severity"):
            triage = verdict["triage"]
            reason = "failing: %s; next: %s" % (", ".join(triage.get("failing", [])), ", ".join(triage.get("scenarios", [])))
            self._entries.append({"ts": utc_timestamp(), "run": self._run, "playbook": self._playbook,
                                  "host": getattr(host, "name", str(host)), "task": "triage", "action": action,
                                  "status": status, "kind": "triage", "severity": triage["severity"], "reason": reason})
            return
        ours = action.startswith("p3.recovery.")
        if action in _SKIP_ACTIONS or not (ours or res.get("changed") or status == "failed"):
            return
        entry = {
            "ts": utc_timestamp(),
            "run": self._run,
            "playbook": self._playbook,
            "host": getattr(host, "name", str(host)),
            "task": getattr(task, "name", "") or action,
            "action": action,
            "status": status,
        }
        if res.get("censored"):
            entry["censored"] = True
        else:
            res = redact(res, bool(self._option("include_sensitive")))
            for key in _EVIDENCE_KEYS:
                if key in res:
                    entry[key] = one_line(res[key], 300) if key in ("reason", "msg") else res[key]
            tl = res.get("timeline")
            if isinstance(tl, dict):
                tl = [tl]
            if isinstance(tl, list) and tl:
                entry["timeline"] = tl
        entry["kind"] = ("probe" if "healthy" in entry and not entry.get("changed") else
                         "failure" if status == "failed" else "action")
        verdicts = None if res.get("censored") else res.get("verdicts")
        if isinstance(verdicts, list) and verdicts and all(isinstance(v, dict) and "healthy" in v for v in verdicts):
            # Several probes in one task (quick_diagnostics): one probe entry each, under the probe's own module.
            for v in verdicts:
                sub = dict(entry, action=v.get("module") or action, via=action, healthy=v["healthy"],
                           reason=one_line(v.get("reason", ""), 300), kind="probe")
                sub["task"] = "%s [%s]" % (entry["task"], v.get("probe", "?"))
                self._entries.append(sub)
            return
        self._entries.append(entry)

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def _option(self, name):
        try:
            return self.get_option(name)
        except Exception:  # pylint: disable=broad-except
            return None

    # -- output ---------------------------------------------------------------------------------------
    def v2_playbook_on_stats(self, stats):
        try:
            self._write()
        except Exception as e:  # pylint: disable=broad-except
            self._display.warning("p3.recovery.incident: could not write the incident log: %s" % e)

    def _write(self):
        if not self._entries:
            return
        directory = self.get_option("directory") or "reports"
        incident = self.get_option("incident_id") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        try:
            incident = safe_name(incident, "incident_id")
        except P3Error as e:
            self._display.warning("p3.recovery.incident: nothing written: %s" % e.msg)
            return
        make_private_dir(directory)
        log = path_under(directory, "incident-%s.jsonl" % incident)
        path = path_under(directory, "postmortem-%s.md" % incident)
        removed = prune(directory, self.get_option("keep_days") or 0, time.time(), keep=(log, path))
        if removed:
            self._display.display("p3.recovery.incident: removed %d incident file(s) older than %d days: %s" % (
                len(removed), self.get_option("keep_days"), ", ".join(os.path.basename(r) for r in removed)))
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # a log created by an older version (0644) becomes private too
            # One run at a time appends, re-reads and renders: other runs wait here (released on close).
            fcntl.flock(fd, fcntl.LOCK_EX)
            for e in self._entries:
                _write_all(fd, (json.dumps(e, sort_keys=True, default=str) + "\n").encode("utf-8"))
            history = []
            with open(log) as f:
                for line in f:
                    try:
                        history.append(json.loads(line))
                    except ValueError:
                        continue
            if not any(e.get("healthy") is False or e.get("changed") for e in history):
                return
            write_private(path, render_postmortem(history))
        finally:
            os.close(fd)
        self._display.display("p3.recovery.incident: timeline %s, postmortem draft %s" % (log, path))


def _write_all(fd, data):
    """One write(2) per line (O_APPEND: at the end, whole); loop only on a short write."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


def write_private(path, text):
    """Replace path atomically with text, mode 0600 whatever the umask."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".postmortem-", suffix=".md")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            os.unlink(tmp)


def prune(directory, keep_days, now, keep=()):
    """Delete incident-*.jsonl and postmortem-*.md in directory last modified more than keep_days days before now
    (epoch seconds), except the paths in keep; keep_days <= 0 deletes nothing. Returns the deleted paths."""
    if not keep_days or keep_days <= 0:
        return []
    cutoff = now - keep_days * 86400
    keep = set(os.path.abspath(k) for k in keep)
    removed = []
    for pattern in ("incident-*.jsonl", "postmortem-*.md"):
        for path in sorted(glob.glob(os.path.join(directory, pattern))):
            try:
                if os.path.abspath(path) in keep or os.path.getmtime(path) >= cutoff:
                    continue
                os.remove(path)
            except OSError:
                continue  # gone already, or not ours to delete: the run's own log matters more
            removed.append(path)
    return removed


def render_postmortem(entries):
    """The runbook's postmortem template, filled from the recorded timeline."""
    unhealthy = [e for e in entries if e.get("healthy") is False]
    acted = [e for e in entries if e.get("changed")]
    first = entries[0]["ts"] if entries else utc_timestamp()
    detected = unhealthy[0]["ts"] if unhealthy else first
    # Restored: the first later run whose probes were all healthy (a run = one playbook execution).
    restored = None
    if unhealthy:
        runs = []
        for e in entries:
            if not runs or runs[-1][0] != e.get("run"):
                runs.append((e.get("run"), []))
            runs[-1][1].append(e)
        last_bad = max(i for i, run in enumerate(runs) if any(e.get("healthy") is False for e in run[1]))
        for run in runs[last_bad + 1:]:
            es = run[1]
            probes = [e for e in es if e.get("kind") == "probe"]
            if probes and all(e.get("healthy") is True for e in probes):
                restored = probes[-1]["ts"]
                break
    end = restored or entries[-1]["ts"]

    def _t(ts):
        return ts[11:19] if ts else "--:--:--"

    def _dur(a, b):
        s = int((parse_timestamp(b) - parse_timestamp(a)).total_seconds())
        return "%d hours %d minutes %d seconds" % (s // 3600, s % 3600 // 60, s % 60)

    sevs = [e["severity"] for e in entries if e.get("kind") == "triage" and e.get("severity")]
    failing = []
    for e in unhealthy:
        label = "%s: %s" % (e["task"], e.get("reason", ""))
        if label not in failing:
            failing.append(label)
    lines = [
        "## Incident Summary",
        "- **Date:** %s" % detected[:10],
        "- **Duration:** %s (first unhealthy verdict to %s)" % (_dur(detected, end), "service restored" if restored else "last event"),
        "- **Severity:** %s" % (min(sevs, key=lambda v: v[-1]) if sevs else "SEV-? (run p3.recovery.diagnose for the triage)"),
        "- **Impact:** %s" % ("; ".join(failing[:5]) or "[Description of user impact]"),
        "",
        "## Timeline",
        "- %s - Issue detected (%s)" % (_t(detected), unhealthy[0]["task"] if unhealthy else "first run"),
    ]
    for e in entries:
        if e.get("changed") or e.get("kind") == "failure":
            what = e.get("msg") or e.get("reason") or ""
            lines.append("- %s - %s on %s: %s%s" % (_t(e["ts"]), e["task"], e["host"], e["status"], (" - " + what) if what else ""))
            for t in e.get("timeline", []):
                if isinstance(t, dict):
                    detail = one_line(t.get("detail", ""), 200)
                    lines.append("  - %s %s %s %s" % (_t(str(t.get("ts", ""))), t.get("action", ""), t.get("target", ""), detail))
    lines.append("- %s - %s" % (_t(restored), "Service restored (all probes healthy)" if restored else "Service not yet verified healthy"))
    lines += [
        "",
        "## Root Cause",
        "[Technical explanation] — the probes saw: " + ("; ".join(failing[:5]) or "nothing unhealthy"),
        "",
        "## Resolution",
    ]
    lines += ["- %s (%s)" % (e["task"], e["host"]) for e in acted] or ["- [What was done to fix it]"]
    lines += [
        "",
        "## Action Items",
        "- [ ] [Preventive measure 1]",
        "- [ ] [Monitoring improvement]",
        "- [ ] [Documentation update]",
        "",
        "## Lessons Learned",
        "[What we learned from this incident]",
        "",
    ]
    return "\n".join(lines)
