# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident record of the p3.recovery.incident callback: who ran a run and from where, which incident it
belongs to (given, or the open incident of the same target reused, or a new one), the incident's state and its
root cause in words, and the optional PostgreSQL sink (one row per run). Pure functions, except the sink."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import getpass
import hashlib
import json
import os
import re
import socket

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line, redact_text

# AWX / Automation Controller job variables (tower_* on older releases) kept in the record: who ran it, from where.
AWX_FIELDS = ("job_id", "job_template_name", "user_name", "workflow_job_id", "workflow_job_name", "job_launch_type",
              "schedule_name", "execution_node", "inventory_name", "project_revision")
STATES = ("none", "open", "degraded", "resolved")
TABLE = "p3_incident_runs"
MAX_TIMELINE = 300  # entries kept per run in a record / a row (the rest counted, not kept)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def who(extra_vars, environ=None):
    """Who ran this run and from where: the awx_* (or tower_*) job variables when AWX launched it, the OS user and
    host of the process always. Only these names are read: no other variable, so no secret."""
    extra_vars = extra_vars or {}
    environ = os.environ if environ is None else environ
    out = {}
    for field in AWX_FIELDS:
        for prefix in ("awx_", "tower_"):
            value = extra_vars.get(prefix + field)
            if value not in (None, ""):
                out["awx_" + field] = str(value)
                break
    try:
        out["os_user"] = getpass.getuser()
    except Exception:  # pylint: disable=broad-except
        out["os_user"] = environ.get("USER") or str(os.getuid())
    out["host"] = socket.gethostname()
    out["via"] = "awx" if "awx_job_id" in out else "shell"
    return out


def target_of(extra_vars, hosts=()):
    """What the incident is about, to group runs: p3_incident_target, else AWX's inventory name, else the sorted
    inventory host names."""
    extra_vars = extra_vars or {}
    for key in ("p3_incident_target", "awx_inventory_name", "tower_inventory_name"):
        if extra_vars.get(key):
            return one_line(str(extra_vars[key]), 200)
    return one_line("hosts:" + ",".join(sorted(set(str(h) for h in hosts))), 200)


def new_incident_id(now, target):
    """inc-<UTC time>-<8 hex of the target>: a plain file name part, sortable by time."""
    return "inc-%s-%s" % (now.strftime("%Y%m%dT%H%M%SZ"), hashlib.sha256(target.encode("utf-8")).hexdigest()[:8])


def day_id(now):
    return now.strftime("%Y%m%d")


# ---------------------------------------------------------------------------------------------------------------
# State and root cause of an incident, from its entries (the callback's timeline entries, oldest first)
# ---------------------------------------------------------------------------------------------------------------

def _groups(entries):
    """Consecutive entries of one task of one run (a quick_diagnostics call gives one entry per probe)."""
    groups = []
    for i, e in enumerate(entries):
        key = (e.get("run"), e.get("task", "").split(" [")[0])
        if not groups or groups[-1][0] != key:
            groups.append((key, []))
        groups[-1][1].append((i, e))
    return groups


def restored_at(entries):
    """The time the service was verified restored: the first probe round after the last unhealthy verdict whose
    probes are all healthy - in a later run, or a later diagnose (two probes at least) of the same run, as
    recover_all's final one; None when never, or when nothing was unhealthy."""
    bad = [i for i, e in enumerate(entries) if e.get("healthy") is False]
    if not bad:
        return None
    last_bad = bad[-1]
    bad_run = entries[last_bad].get("run")
    for _key, members in _groups(entries):
        if members[0][0] <= last_bad:
            continue
        probes = [e for _i, e in members if e.get("kind") == "probe"]
        if probes and all(e.get("healthy") is True for e in probes) and (
                len(probes) >= 2 or members[0][1].get("run") != bad_run):
            return probes[-1]["ts"]
    return None


def remaining_steps(entries):
    """The remaining steps the latest probe round names (healthy but degraded: e.g. restart a Redis node)."""
    rounds = [[e for _i, e in members if e.get("kind") == "probe"] for _k, members in _groups(entries)]
    rounds = [r for r in rounds if r]
    steps = []
    for e in rounds[-1] if rounds else []:
        for d in e.get("degraded") or []:
            step = d.get("next") if isinstance(d, dict) else str(d)
            if step and step not in steps:
                steps.append(step)
    return steps


def incident_state(entries):
    """none (nothing unhealthy, nothing changed), open (unhealthy, not verified restored), degraded (restored, a
    remaining step named), resolved."""
    unhealthy = any(e.get("healthy") is False for e in entries)
    changed = any(e.get("changed") for e in entries)
    if not unhealthy:
        if remaining_steps(entries):
            return "degraded"
        return "resolved" if changed else "none"
    if not restored_at(entries):
        return "open"
    return "degraded" if remaining_steps(entries) else "resolved"


def probe_name(e):
    m = re.search(r"\[([^\]]+)\]$", e.get("task", ""))
    return e.get("probe") or (m.group(1) if m else (e.get("action") or "").split(".")[-1] or e.get("task", "?"))


def what_was_done(entries):
    """What the actions that changed something report they did (their timeline: action target detail), each once;
    an action without a timeline by its message, else its task and host."""
    fixes = []
    for e in entries:
        if not e.get("changed"):
            continue
        done = []
        for t in e.get("timeline") or []:
            if isinstance(t, dict):
                done.append(one_line(" ".join(str(t.get(k, "")) for k in ("action", "target", "detail") if t.get(k)), 200))
        if not done:
            done = [one_line(e.get("msg") or "%s on %s" % (e.get("task", "?"), e.get("host", "?")), 200)]
        for d in done:
            if d and d not in fixes:
                fixes.append(d)
    return fixes


def root_cause(entries):
    """The root cause in words: what was broken (the first unhealthy verdicts, the triage's root causes first), what
    fixed it (what the actions report they did, each once), and the outcome (restored at, the remaining step, or
    what is still failing)."""
    roots = []
    for e in entries:
        if e.get("kind") == "triage":
            for name in e.get("root_causes") or []:
                if name not in roots:
                    roots.append(name)
    broken = {}
    for e in entries:
        if e.get("healthy") is False and e.get("kind") in ("probe", "failure", "action"):
            name = probe_name(e)
            broken.setdefault(name, one_line(e.get("reason") or e.get("msg") or "unhealthy", 240))
    causes = []  # the triage's root causes in its words (check - reason), from the first triage that named any
    for e in entries:
        if e.get("kind") == "triage" and e.get("causes"):
            causes = [c for c in e["causes"] if isinstance(c, dict) and c.get("check")]
            break
    order = [n for n in roots if n in broken] + [n for n in broken if n not in roots]
    fixes = what_was_done(entries)
    parts = []
    if causes:
        named = set(c["check"] for c in causes)
        others = [n for n in broken if n not in named]
        parts.append("Broken: " + "; ".join("%s - %s" % (c["check"], c.get("reason", "")) for c in causes[:4])
                     + (" (also failing as a consequence: %s)" % ", ".join(others[:8]) if others else "") + ".")
    elif order:
        parts.append("Broken: " + "; ".join("%s - %s" % (n, broken[n]) for n in order[:6])
                     + (" (root cause: %s)" % ", ".join(roots) if roots else "") + ".")
    else:
        parts.append("Broken: nothing was seen unhealthy.")
    parts.append(("Fixed by: " + "; ".join(fixes[:12]) + ("; ..." if len(fixes) > 12 else "") + ".") if fixes
                 else "Fixed by: no action changed anything.")
    restored = restored_at(entries)
    steps = remaining_steps(entries)
    if restored and steps:
        parts.append("Outcome: service restored at %s, redundancy degraded - remaining step: %s." % (
            restored, "; ".join(steps)))
    elif restored:
        parts.append("Outcome: service restored at %s (all probes healthy)." % restored)
    elif order:
        last = [e for e in entries if e.get("kind") == "probe"]
        last_run = last[-1].get("run") if last else None
        still = sorted(set(probe_name(e) for e in last if e.get("run") == last_run and e.get("healthy") is False))
        parts.append("Outcome: not yet restored%s." % (" - still failing: " + ", ".join(still) if still else ""))
    elif steps:
        parts.append("Outcome: service up, redundancy degraded - remaining step: %s." % "; ".join(steps))
    return " ".join(parts)


def run_record(entries, history, incident_id, run, playbook, target, started, actor, sinks=None):
    """The record of one run (what set_stats publishes as p3_incident and the PostgreSQL sink stores):
    the run's own timeline (capped at MAX_TIMELINE entries), the incident's state and root cause judged over the
    incident's whole history plus this run."""
    every = list(history or []) + list(entries)
    probes = [e for e in entries if e.get("kind") == "probe"]
    rounds = [[e for _i, e in members if e.get("kind") == "probe"] for _k, members in _groups(entries)]
    rounds = [r for r in rounds if r]
    sevs = [e.get("severity") for e in every if e.get("kind") == "triage" and e.get("severity")]
    state = incident_state(every) if incident_id else "none"
    record = dict(
        incident_id=incident_id,
        run=run,
        playbook=playbook,
        target=target,
        started=started,
        finished=entries[-1]["ts"] if entries else started,
        healthy=(all(e.get("healthy") is True for e in rounds[-1]) if rounds else None),
        changed=any(bool(e.get("changed")) for e in entries),
        failed=any(e.get("status") == "failed" for e in entries),
        state=state,
        severity=min(sevs, key=lambda v: v[-1]) if sevs else None,
        root_cause=root_cause(every) if incident_id else root_cause(entries),
        remaining=remaining_steps(every),
        who=dict(actor or {}),
        timeline=list(entries[:MAX_TIMELINE]),
        timeline_dropped=max(0, len(entries) - MAX_TIMELINE),
        probes=len(probes),
        sinks=dict(sinks or {}),
    )
    return record


def scrub(obj, secrets):
    """obj as JSON with every secret in secrets masked (belt and braces: entries are redacted already)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return json.loads(redact_text(text, [s for s in secrets if s])) if secrets else json.loads(text)


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL sink: one row per run in a table the admin DSN can write (created when missing), bounded
# ---------------------------------------------------------------------------------------------------------------

def _table(name):
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name or ""):
        raise P3Error("incident table name must be a plain lower-case SQL identifier, got %r" % (name,))
    return name


def create_sql(table):
    t = _table(table)
    return ("CREATE TABLE IF NOT EXISTS %s (id bigserial PRIMARY KEY, incident_id text, run_id text NOT NULL UNIQUE, "
            "target text NOT NULL, playbook text NOT NULL, started_at timestamptz NOT NULL, "
            "finished_at timestamptz NOT NULL, state text NOT NULL, healthy boolean, changed boolean NOT NULL, "
            "severity text, root_cause text NOT NULL, who jsonb NOT NULL, record jsonb NOT NULL, postmortem text, "
            "recorded_at timestamptz NOT NULL DEFAULT now())" % t,
            "CREATE INDEX IF NOT EXISTS %s_target_idx ON %s (target, finished_at DESC)" % (t, t),
            "CREATE INDEX IF NOT EXISTS %s_incident_idx ON %s (incident_id, started_at)" % (t, t))


def pg_client(dsn, timeout=5.0, query_timeout=None):
    """A PostgresClient of an admin DSN (the incident sink's, the EDA guard's state): connect within timeout
    seconds, each statement within query_timeout (default twice timeout)."""
    from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import PostgresClient, resolve_conninfo
    conninfo, secrets = resolve_conninfo(dict(dsn=dsn, connect_timeout=timeout))
    return PostgresClient(conninfo, timeout=timeout, query_timeout=query_timeout or timeout * 2, secrets=secrets)


def pg_table_exists(client, table):
    return client.scalar("SELECT to_regclass(%s) IS NOT NULL AS e", (table,))


def pg_open_incident(client, table, target, reuse_hours):
    """(incident_id, history entries) of the target's latest incident when it is still open or degraded and its
    last run finished less than reuse_hours ago; else (None, [])."""
    t = _table(table)
    if not pg_table_exists(client, t):
        return None, []
    rows = client.query("SELECT incident_id, state FROM %s WHERE target = %%s AND incident_id IS NOT NULL AND "
                        "finished_at > now() - make_interval(secs => %%s) ORDER BY finished_at DESC, id DESC LIMIT 1" % t,
                        (target, float(reuse_hours) * 3600))
    if not rows or rows[0]["state"] not in ("open", "degraded"):
        return None, []
    incident_id = rows[0]["incident_id"]
    return incident_id, pg_history(client, t, incident_id)


def pg_history(client, table, incident_id):
    rows = client.query("SELECT record->'timeline' AS timeline FROM %s WHERE incident_id = %%s ORDER BY started_at, id"
                        % _table(table), (incident_id,))
    out = []
    for r in rows:
        out.extend(r["timeline"] or [])
    return out


def pg_write(client, table, record, postmortem, keep_days=0, max_rows=10000):
    """Create the table when missing, insert the run's row, delete rows older than keep_days and beyond the newest
    max_rows. Returns the number of rows pruned."""
    t = _table(table)
    for sql in create_sql(t):
        client.query(sql)
    client.query("INSERT INTO %s (incident_id, run_id, target, playbook, started_at, finished_at, state, healthy, "
                 "changed, severity, root_cause, who, record, postmortem) VALUES (%%s, %%s, %%s, %%s, %%s, %%s, %%s, "
                 "%%s, %%s, %%s, %%s, %%s::jsonb, %%s::jsonb, %%s) ON CONFLICT (run_id) DO NOTHING" % t,
                 (record["incident_id"], record["run"], record["target"], record["playbook"], record["started"],
                  record["finished"], record["state"], record["healthy"], record["changed"], record["severity"],
                  record["root_cause"], json.dumps(record["who"], sort_keys=True),
                  json.dumps(record, sort_keys=True, default=str), postmortem))
    pruned = 0
    if keep_days and keep_days > 0:
        pruned += len(client.query("DELETE FROM %s WHERE finished_at < now() - make_interval(days => %%s) RETURNING id"
                                   % t, (int(keep_days),)))
    if max_rows and max_rows > 0:
        pruned += len(client.query("DELETE FROM %s WHERE id IN (SELECT id FROM %s ORDER BY id DESC OFFSET %%s) "
                                   "RETURNING id" % (t, t), (int(max_rows),)))
    return pruned


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
