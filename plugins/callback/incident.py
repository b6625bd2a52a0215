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
  - A run waits at most O(lock_timeout) seconds for that lock. When another process still holds it then, the run
    loses nothing - its entries go to a fallback file next to the log,
    C(locked-out-<log name without .jsonl>-<run id>.jsonl) (mode C(0600); not read as an incident log, not pruned),
    the postmortem is not rendered by this run, and one warning line names the log, the wait and the fallback file
    (append it to the log, C(cat locked-out-... >> incident-....jsonl), once the other run is done).
  - Every entry and the run's record name who ran it and from where - the AWX job id, job template, user, workflow
    and schedule (C(awx_*) or C(tower_*) extra variables) and the OS user and host - and the incident it belongs to.
  - The run's record (incident id, state, verdict, severity, root cause in words, remaining steps, who, the run's
    timeline) is kept in a private file named by the environment variable C(P3_INCIDENT_RECORD) while the run goes
    on, so the playbooks' final task publishes it with C(set_stats) as C(p3_incident) (role
    C(p3.recovery.incident_record)); AWX keeps it in the job's artifacts. See C(docs/incidents.md).
  - O(directory) may also be set with the extra variable C(p3_incident_dir) (for example a persistent volume of
    the AWX execution node).
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
        (C(incident-<id>.jsonl)) and render one postmortem (C(postmortem-<id>.md)). The extra variable
        C(p3_incident_id) (for example from an AWX survey or workflow) sets it too.
      - When unset the incident is derived - the latest incident of the same target (C(p3_incident_target), else
        AWX's inventory name, else the inventory's host names) is reused while it is still open (unhealthy and not
        verified restored, or restored with a remaining step) and its last run ended less than O(reuse_hours) ago;
        else a run that sees anything unhealthy or changes anything opens a new one, C(inc-<UTC time>-<8 hex>).
        A healthy run that changes nothing and finds no open incident belongs to none (its timeline goes to
        C(runs-<UTC day>.jsonl) and the PostgreSQL sink).
      - A plain name part - an id with C(/) or C(..) is rejected (nothing is written, with a warning), and the
        final paths are checked to stay inside O(directory).
    type: str
    env:
      - name: P3_INCIDENT_ID
    ini:
      - section: p3_incident
        key: incident_id
  reuse_hours:
    description: How long after its last run an open incident of the same target is reused by a run without
      O(incident_id). The extra variable C(p3_incident_reuse_hours) sets it too.
    type: float
    default: 12
    env:
      - name: P3_INCIDENT_REUSE_HOURS
    ini:
      - section: p3_incident
        key: reuse_hours
  database_url:
    description:
      - Optional persistent sink - a PostgreSQL DSN (the admin DSN, for example) whose user can create and write
        O(table). Each run inserts one row (incident id, run id, target, playbook, times, state, verdict, severity,
        root cause, who ran it and from where, the run's record with its timeline, and the incident's postmortem),
        and open incidents are looked up there first - what an AWX job, whose directory is thrown away, needs.
      - The extra variable C(p3_incident_database_url) sets it too (an AWX credential can inject either). The DSN
        and its password are never recorded; a sink that cannot be written gives one warning line naming the
        table and host, and the run goes on.
    type: str
    env:
      - name: P3_INCIDENT_DATABASE_URL
    ini:
      - section: p3_incident
        key: database_url
  table:
    description: Table of the PostgreSQL sink (created when missing); rows older than O(keep_days) and beyond the
      newest 10000 are deleted by each run.
    type: str
    default: p3_incident_runs
    env:
      - name: P3_INCIDENT_TABLE
    ini:
      - section: p3_incident
        key: table
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
  lock_timeout:
    description: Seconds to wait for the exclusive lock of the incident log (another run appending and rendering)
      before this run's entries go to a fallback file instead (see the description).
    type: float
    default: 30
    env:
      - name: P3_INCIDENT_LOCK_TIMEOUT
    ini:
      - section: p3_incident
        key: lock_timeout
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
import glob
import json
import os
import tempfile
import time

from ansible.plugins.callback import CallbackBase

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line, parse_timestamp, utc_timestamp
from ansible_collections.p3.recovery.plugins.module_utils import incident as inc
from ansible_collections.p3.recovery.plugins.module_utils.report import (
    flock_exclusive, make_private_dir, path_under, redact, safe_name)

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
        self._run = "%s-%d" % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f"), os.getpid())
        self._extra = {}
        self._hosts = []
        self._resolved = None  # (incident id, explicit/reused?, history entries)
        self._record_dirty = True
        self._record_path = None
        try:
            # The run's record, rewritten before each task while the run goes on: the playbooks' final task reads
            # it (lookup env P3_INCIDENT_RECORD) and publishes it with set_stats. Task workers fork from this
            # process, so they inherit the variable.
            fd, self._record_path = tempfile.mkstemp(prefix="p3-incident-record-", suffix=".json")
            os.close(fd)
            os.environ["P3_INCIDENT_RECORD"] = self._record_path
        except OSError:
            self._record_path = None

    def v2_playbook_on_play_start(self, play):
        if self._resolved is not None:
            return
        try:
            vm = play.get_variable_manager()
            self._extra = dict((str(k), v) for k, v in (getattr(vm, "extra_vars", None) or {}).items())
            inventory = getattr(vm, "_inventory", None)
            self._hosts = sorted(getattr(inventory, "hosts", {}) or {}) if inventory is not None else []
        except Exception:  # pylint: disable=broad-except
            pass
        self._resolve()

    def v2_playbook_on_task_start(self, task, is_conditional):
        if self._record_dirty:
            self._write_record()

    def v2_playbook_on_handler_task_start(self, task):
        if self._record_dirty:
            self._write_record()

    # -- incident ------------------------------------------------------------------------------------
    def _setting(self, var, option):
        value = self._extra.get(var)
        if value in (None, ""):
            value = self._option(option)
        return value

    def _directory(self):
        return str(self._setting("p3_incident_dir", "directory") or "reports")

    def _lock_timeout(self):
        try:
            return max(0.0, float(self._option("lock_timeout")))
        except (TypeError, ValueError):
            return 30.0

    def _dsn(self):
        value = self._setting("p3_incident_database_url", "database_url")
        return str(value) if value else None

    def _table(self):
        return str(self._option("table") or inc.TABLE)

    def _target(self):
        return inc.target_of(self._extra, self._hosts) if not os.environ.get("P3_INCIDENT_TARGET") else \
            one_line(os.environ["P3_INCIDENT_TARGET"], 200)

    def _resolve(self):
        """Which incident this run belongs to: (id, known, history). known: given or reused (else provisional: it
        becomes an incident only if the run sees something unhealthy or changes something)."""
        if self._resolved is not None:
            return self._resolved
        explicit = self._extra.get("p3_incident_id") or self._option("incident_id")
        target = self._target()
        history = []
        if explicit:
            self._resolved = (str(explicit), True, self._history(str(explicit)))
            return self._resolved
        found = None
        try:
            hours = float(self._setting("p3_incident_reuse_hours", "reuse_hours") or 12)
        except (TypeError, ValueError):
            hours = 12.0
        dsn = self._dsn()
        if dsn:
            try:
                with inc.pg_client(dsn) as client:
                    found, history = inc.pg_open_incident(client, self._table(), target, hours)
            except P3Error as e:
                self._display.warning("p3.recovery.incident: database sink %s: %s" % (self._table(), e.msg))
        if not found:
            found, history = open_incident_in(self._directory(), target, hours, time.time())
        if found:
            self._resolved = (found, True, history)
        else:
            self._resolved = (inc.new_incident_id(inc.utcnow(), target), False, [])
        return self._resolved

    def _history(self, incident_id):
        dsn = self._dsn()
        if dsn:
            try:
                with inc.pg_client(dsn) as client:
                    if inc.pg_table_exists(client, self._table()):
                        return inc.pg_history(client, self._table(), incident_id)
                    return []
            except P3Error as e:
                self._display.warning("p3.recovery.incident: database sink %s: %s" % (self._table(), e.msg))
        try:
            log = path_under(self._directory(), "incident-%s.jsonl" % safe_name(incident_id, "incident_id"))
        except P3Error:
            return []
        return read_log(log)

    def _incident_id(self):
        """The run's incident id, or None when it belongs to none (healthy, unchanged, nothing open)."""
        incident_id, known, history = self._resolve()
        if known:
            return incident_id
        return incident_id if inc.incident_state(self._entries) != "none" else None

    def record(self):
        incident_id = self._incident_id()
        history = self._resolve()[2] if incident_id else []
        dsn = self._dsn()
        sinks = {"directory": os.path.abspath(self._directory()),
                 "database": ("%s (%s)" % (self._table(), _pg_target(dsn))) if dsn else None}
        rec = inc.run_record(self._entries, history, incident_id, self._run, self._playbook, self._target(),
                             self._started, inc.who(self._extra), sinks)
        return inc.scrub(rec, _dsn_secrets(dsn))

    def _write_record(self):
        if not self._record_path:
            return
        try:
            write_private(self._record_path, json.dumps(self.record(), sort_keys=True, default=str))
            self._record_dirty = False
        except Exception as e:  # pylint: disable=broad-except
            self._display.warning("p3.recovery.incident: could not write the run record: %s" % e)

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
                                  "status": status, "kind": "triage", "severity": triage["severity"], "reason": reason,
                                  "root_causes": list(triage.get("root_causes") or []),
                                  "causes": [{"check": c.get("check"), "reason": one_line(c.get("reason", ""), 240)}
                                             for c in triage.get("causes") or [] if isinstance(c, dict)],
                                  "target": self._target()})
            self._record_dirty = True
            return
        ours = action.startswith("p3.recovery.")
        if action in _SKIP_ACTIONS or not (ours or res.get("changed") or status == "failed"):
            return
        # a task that only decides (restart_app's "already healthy?" probe) says `vars: {p3_incident_skip: true}`:
        # not evidence of the incident - diagnose recorded the broken state - and, red, it would be the run's last
        # red verdict, so that a single green health gate after the repair could not verify the restore
        task_vars = getattr(task, "vars", None)
        if isinstance(task_vars, dict) and task_vars.get("p3_incident_skip") is True and status != "failed":
            return
        entry = {
            "ts": utc_timestamp(),
            "run": self._run,
            "playbook": self._playbook,
            "host": getattr(host, "name", str(host)),
            "task": getattr(task, "name", "") or action,
            "action": action,
            "status": status,
            "target": self._target(),
        }
        self._record_dirty = True
        if res.get("censored"):
            entry["censored"] = True
        else:
            res = redact(res, bool(self._option("include_sensitive")))
            for key in _EVIDENCE_KEYS:
                if key in res:
                    entry[key] = one_line(res[key], 300) if key in ("reason", "msg") else res[key]
            if res.get("degraded") and isinstance(res["degraded"], list):
                entry["degraded"] = res["degraded"]
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
                           reason=one_line(v.get("reason", ""), 300), kind="probe", probe=v.get("probe"))
                if v.get("degraded"):
                    sub["degraded"] = v["degraded"]
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
        if self._record_path:
            try:
                os.unlink(self._record_path)
            except OSError:
                pass

    def _write(self):
        if not self._entries:
            return
        directory = self._directory()
        incident = self._incident_id()
        try:
            incident = safe_name(incident, "incident_id") if incident else None
        except P3Error as e:
            self._display.warning("p3.recovery.incident: nothing written: %s" % e.msg)
            return
        for e in self._entries:
            e["incident"] = incident
        postmortem = self._write_directory(directory, incident)
        dsn = self._dsn()
        if dsn:
            try:
                rec = self.record()
                with inc.pg_client(dsn) as client:
                    pruned = inc.pg_write(client, self._table(), rec, inc.scrub(postmortem, _dsn_secrets(dsn)) if postmortem else None,
                                          keep_days=self._option("keep_days") or 0)
                self._display.display("p3.recovery.incident: run %s recorded in table %s%s%s" % (
                    self._run, self._table(), (" (incident %s)" % incident) if incident else "",
                    (", %d old row(s) removed" % pruned) if pruned else ""))
            except P3Error as e:
                self._display.warning("p3.recovery.incident: database sink %s: %s" % (self._table(), e.msg))

    def _write_directory(self, directory, incident):
        """Append the run's entries to the incident log (or runs-<day>.jsonl without an incident) and render the
        incident's postmortem; returns the postmortem text (None when there is none)."""
        make_private_dir(directory)
        if incident is None:
            log = path_under(directory, "runs-%s.jsonl" % inc.day_id(inc.utcnow()))
            path = None
        else:
            log = path_under(directory, "incident-%s.jsonl" % incident)
            path = path_under(directory, "postmortem-%s.md" % incident)
        removed = prune(directory, self._option("keep_days") or 0, time.time(), keep=(log, path or log))
        if removed:
            self._display.display("p3.recovery.incident: removed %d incident file(s) older than %d days: %s" % (
                len(removed), self._option("keep_days"), ", ".join(os.path.basename(r) for r in removed)))
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # a log created by an older version (0644) becomes private too
            # One run at a time appends, re-reads and renders: other runs wait here (released on close), at most
            # lock_timeout seconds; then the entries go to a fallback file next to the log, never lost.
            try:
                flock_exclusive(fd, timeout=self._lock_timeout(), what="incident log %s" % log)
            except P3Error as e:
                fallback = path_under(directory, "locked-out-%s-%s.jsonl" % (os.path.basename(log)[:-len(".jsonl")],
                                                                             self._run))
                write_private(fallback, "".join(json.dumps(x, sort_keys=True, default=str) + "\n"
                                                for x in self._entries))
                self._display.warning("p3.recovery.incident: %s: this run's %d entries written to %s instead (append "
                                      "it to the log once the other run is done), no postmortem rendered" % (
                                          e.msg, len(self._entries), fallback))
                return None
            for e in self._entries:
                _write_all(fd, (json.dumps(e, sort_keys=True, default=str) + "\n").encode("utf-8"))
            if path is None:
                self._display.display("p3.recovery.incident: healthy, nothing changed, no open incident: timeline %s"
                                      % log)
                return None
            history = read_log(log)
            if self._dsn():
                # the database holds runs of this incident this directory never saw (other AWX jobs): render from it
                known = set(e.get("run") for e in history)
                history = [e for e in self._resolve()[2] if e.get("run") not in known] + history
                history.sort(key=lambda e: e.get("ts", ""))
            if not any(e.get("healthy") is False or e.get("changed") or e.get("degraded") for e in history):
                return None
            text = render_postmortem(history)
            write_private(path, text)
        finally:
            os.close(fd)
        self._display.display("p3.recovery.incident: incident %s: timeline %s, postmortem draft %s" % (incident, log, path))
        return text


def _pg_target(dsn):
    try:
        from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import describe_target, parse_dsn
        return describe_target(parse_dsn(dsn))
    except Exception:  # pylint: disable=broad-except
        return "?"


def _dsn_secrets(dsn):
    if not dsn:
        return []
    from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import dsn_secrets
    return dsn_secrets(dsn)


def read_log(path):
    """The entries of a JSON-lines incident log (unparsable lines skipped; [] when missing)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except (IOError, OSError):
        return []
    return out


def open_incident_in(directory, target, reuse_hours, now):
    """(incident id, entries) of the newest incident log in directory written less than reuse_hours ago whose
    entries are about target and whose incident is still open or degraded; else (None, [])."""
    cutoff = now - float(reuse_hours) * 3600
    logs = []
    for path in glob.glob(os.path.join(directory, "incident-*.jsonl")):
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            continue
        if mtime >= cutoff:
            logs.append((mtime, path))
    for _mtime, path in sorted(logs, reverse=True):
        entries = read_log(path)
        if not entries or entries[-1].get("target") != target:
            continue
        if inc.incident_state(entries) in ("open", "degraded"):
            return os.path.basename(path)[len("incident-"):-len(".jsonl")], entries
        return None, []  # the target's latest incident is closed
    return None, []


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
    for pattern in ("incident-*.jsonl", "postmortem-*.md", "runs-*.jsonl"):
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
    # Restored: the first probe round after the last unhealthy verdict whose probes are all healthy (a later run,
    # or a later diagnose of the same run such as recover_all's final one).
    restored = inc.restored_at(entries) if unhealthy else None
    remaining = inc.remaining_steps(entries)
    end = restored or entries[-1]["ts"]

    def _t(ts):
        return ts[11:19] if ts else "--:--:--"

    def _dur(a, b):
        s = int((parse_timestamp(b) - parse_timestamp(a)).total_seconds())
        return "%d hours %d minutes %d seconds" % (s // 3600, s % 3600 // 60, s % 60)

    sevs = [e["severity"] for e in entries if e.get("kind") == "triage" and e.get("severity")]
    failing = []
    for e in unhealthy:
        label = "%s: %s" % (inc.probe_name(e), e.get("reason", ""))
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
    if restored and remaining:
        lines.append("- %s - Service restored, redundancy degraded (remaining step: %s)" % (_t(restored), "; ".join(remaining)))
    else:
        lines.append("- %s - %s" % (_t(restored), "Service restored (all probes healthy)" if restored else "Service not yet verified healthy"))
    incidents = sorted(set(e.get("incident") for e in entries if e.get("incident")))
    runs = []
    for e in entries:
        if e.get("run") not in runs:
            runs.append(e.get("run"))
    lines += [
        "",
        "## Root Cause",
        inc.root_cause(entries),
        "",
        "## Resolution",
    ]
    lines += ["- %s" % f for f in inc.what_was_done(acted)] or ["- [What was done to fix it]"]
    if remaining:
        lines += ["- Remaining: %s" % step for step in remaining]
    lines += [
        "",
        "## Runs",
        "- Incident %s: %d run(s) of %s" % (", ".join(incidents) or "-", len(runs), ", ".join(
            sorted(set(e.get("playbook", "?") for e in entries)))),
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
