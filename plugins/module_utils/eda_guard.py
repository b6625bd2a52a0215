# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The safety guard of the Event-Driven Ansible loop (module p3.recovery.eda_guard): what an alert may start.

State (one JSON file, locked with flock, replaced atomically, so it survives between runs and rulebook restarts):

- episodes: per alert fingerprint, the open episode (the alert's startsAt, when it was first handled, the decision)
  - a firing alert of the open episode (same fingerprint and startsAt) younger than the window is a duplicate
  (Alertmanager re-sends while an alert keeps firing): nothing runs. A resolved notification ends the episode; a
  firing alert with another startsAt is a new episode (it resolved and fired again, the resolved notification lost).
- attempts: per resource (what a response acts on, e.g. the scenario playbook), the times a response was started;
  after breaker_max of them within breaker_window seconds the breaker is open: the alert is refused (a human is
  notified) until the oldest of them leaves the window.

decide() is pure (state in, decision and new state out); GuardStore (a file, one controller) or PgGuardStore (a
row of a PostgreSQL table, several controllers) does the locked read-modify-write - the same interface:
``with store: state = store.read(); ...; store.write(new_state)``.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import fcntl
import json
import os

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    Deadline, DeadlineExceeded, P3Error, num_text, one_line)
from ansible_collections.p3.recovery.plugins.module_utils.report import flock_exclusive

PG_TABLE = "p3_eda_guard"
DECISIONS = ("act", "plan", "duplicate", "refused", "resolved", "ignored")
MAX_EPISODES = 1000
MAX_ATTEMPTS = 200  # per resource


def alert_summary(alert):
    """name, fingerprint, status, startsAt of an alert (the Alertmanager webhook's alert object)."""
    alert = alert or {}
    labels = alert.get("labels") or {}
    return dict(name=str(labels.get("alertname") or alert.get("name") or "?"),
                fingerprint=str(alert.get("fingerprint") or ""),
                status=str(alert.get("status") or ""),
                startsAt=str(alert.get("startsAt") or ""),
                instance=str(labels.get("instance") or ""),
                severity=str(labels.get("severity") or ""))


def empty_state():
    return {"version": 1, "episodes": {}, "attempts": {}}


def _prune(state, now, window, breaker_window):
    """Drop attempts older than the breaker window and closed episodes older than both windows; cap the sizes."""
    keep = max(window, breaker_window, 3600)
    for res in list(state["attempts"]):
        kept = [a for a in state["attempts"][res] if now - float(a.get("t", 0)) < breaker_window][-MAX_ATTEMPTS:]
        if kept:
            state["attempts"][res] = kept
        else:
            del state["attempts"][res]
    eps = state["episodes"]
    for fp in list(eps):
        ep = eps[fp]
        last = float(ep.get("closed_t") or ep.get("t") or 0)
        if now - last > keep and (ep.get("closed_t") or now - float(ep.get("t", 0)) > window):
            del eps[fp]
    if len(eps) > MAX_EPISODES:
        for fp in sorted(eps, key=lambda k: float(eps[k].get("t", 0)))[:len(eps) - MAX_EPISODES]:
            del eps[fp]
    return state


def decide(state, alert, resource, allowed, now, window, breaker_max, breaker_window):
    """(decision, reason, new_state, changed) for one alert.

    decision: act (allowed: run the response), plan (not allowed unattended: run it in check mode and post the
    plan), duplicate (its episode was handled less than window seconds ago), refused (the breaker of resource is
    open: breaker_max responses within breaker_window seconds), resolved (the episode ended), ignored (a resolved
    alert without an open episode)."""
    state = json.loads(json.dumps(state or empty_state()))
    state.setdefault("episodes", {})
    state.setdefault("attempts", {})
    a = alert_summary(alert)
    if not a["fingerprint"]:
        raise P3Error("alert has no fingerprint (not an Alertmanager alert)")
    if a["status"] not in ("firing", "resolved"):
        raise P3Error("alert %s status must be firing or resolved, got %r" % (a["name"], a["status"]))
    _prune(state, now, window, breaker_window)
    eps = state["episodes"]
    ep = eps.get(a["fingerprint"])
    if a["status"] == "resolved":
        if ep and not ep.get("closed_t"):
            ep["closed_t"] = now
            return "resolved", "%s resolved: episode of %s ended (%s since it was handled)" % (
                a["name"], ep.get("startsAt") or "?", _dur(now - float(ep.get("t", now)))), state, True
        return "ignored", "%s resolved: no open episode (nothing was started for it)" % a["name"], state, False
    if ep and not ep.get("closed_t") and ep.get("startsAt") == a["startsAt"] and now - float(ep.get("t", 0)) < window:
        return "duplicate", "%s still firing (since %s): handled %s ago (%s), once per %s" % (
            a["name"], a["startsAt"] or "?", _dur(now - float(ep["t"])), ep.get("decision"), _dur(window)), state, False
    recent = [x for x in state["attempts"].get(resource, []) if now - float(x.get("t", 0)) < breaker_window]
    if breaker_max and len(recent) >= breaker_max:
        decision = "refused"
        reason = ("circuit breaker open for %s: %d responses in the last %s (max %d) - not acting on %s, a human "
                  "must look" % (resource, len(recent), _dur(breaker_window), breaker_max, a["name"]))
    else:
        decision = "act" if allowed else "plan"
        reason = ("%s firing: %s %s" % (a["name"], "running the response for" if allowed else
                                        "not allowed unattended, planning (check mode) the response for", resource))
        state["attempts"].setdefault(resource, []).append(dict(t=now, alert=a["name"], fingerprint=a["fingerprint"],
                                                               decision=decision))
    eps[a["fingerprint"]] = dict(t=now, name=a["name"], startsAt=a["startsAt"], decision=decision, resource=resource)
    return decision, one_line(reason, 400), state, True


def breaker_state(state, resource, now, breaker_max, breaker_window):
    recent = [x for x in (state or {}).get("attempts", {}).get(resource, []) if now - float(x.get("t", 0)) < breaker_window]
    return dict(resource=resource, recent=len(recent), max=breaker_max, window=breaker_window,
                open=bool(breaker_max) and len(recent) >= breaker_max)


def _dur(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    return "%dh" % (seconds // 3600)


class GuardStore(object):
    """The state file, read-modify-written under an exclusive flock (of path + '.lock') taken within timeout
    seconds; written to a temporary file, fsynced and renamed over the old one (mode 0600). In check mode nothing is
    created: the lock is taken only when its file exists already, and write() must not be called."""

    def __init__(self, path, timeout=10.0, check_mode=False):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.timeout = float(timeout)
        self.check_mode = check_mode
        self._fd = None

    def __enter__(self):
        directory = os.path.dirname(self.path)
        try:
            if self.check_mode:
                if not os.path.exists(self.path + ".lock"):
                    return self  # nothing to read under a lock: no run has written state here yet
                self._fd = os.open(self.path + ".lock", os.O_RDWR)
            else:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                self._fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise P3Error("guard state %s: %s" % (self.path, e.strerror or e))
        try:
            flock_exclusive(self._fd, self.timeout, "guard state %s" % self.path)
        except P3Error:
            os.close(self._fd)
            self._fd = None
            raise
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        return False

    def read(self):
        try:
            with open(self.path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return empty_state()
        except (OSError, ValueError) as e:
            raise P3Error("guard state %s unreadable: %s (move it away to start afresh)" % (self.path, e))
        if not isinstance(data, dict) or not isinstance(data.get("episodes"), dict) or \
                not isinstance(data.get("attempts"), dict):
            raise P3Error("guard state %s is not a p3.recovery.eda_guard state file" % self.path)
        return data

    def write(self, state):
        if self.check_mode:
            raise P3Error("guard state %s: no write in check mode" % self.path)
        tmp = "%s.tmp-%d" % (self.path, os.getpid())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(state, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise P3Error("guard state %s: write: %s" % (self.path, e.strerror or e))


def _check_state(state, where):
    if not isinstance(state, dict) or not isinstance(state.get("episodes"), dict) or \
            not isinstance(state.get("attempts"), dict):
        raise P3Error("guard state %s is not a p3.recovery.eda_guard state" % where)
    return state


class PgGuardStore(object):
    """The state as one row (key) of a PostgreSQL table (created when missing: guard text PRIMARY KEY, state
    jsonb, updated_at), for several EDA controllers sharing one guard. Entering opens a transaction and locks the
    row (SELECT ... FOR UPDATE, waiting at most lock_timeout seconds: SET LOCAL lock_timeout), so the read, the
    decision and the write of one controller happen while every other controller waits for the row; leaving
    commits (or, after an error, closes the connection: the transaction is rolled back). In check mode nothing is
    created, locked or written: the row is read as it is. The connection is the incident sink's (incident.pg_client
    of an admin DSN).

    deadline (common.Deadline, the module's timeout) bounds the whole of it: the connection gets what is left of
    it (at most connect_timeout), each statement what is left (the client's own timeout, and inside the
    transaction the server's statement_timeout and lock_timeout too), and none starts once it is past - the failure
    names the table, the key and the deadline."""

    def __init__(self, dsn, table=PG_TABLE, key="default", lock_timeout=10.0, connect_timeout=5.0, check_mode=False,
                 client=None, deadline=None):
        from ansible_collections.p3.recovery.plugins.module_utils import incident
        self.table = incident._table(table)
        self.key = str(key)
        self.lock_timeout = float(lock_timeout)
        self.check_mode = check_mode
        self.deadline = deadline if deadline is not None else Deadline(None, "timeout")
        self.client = client or incident.pg_client(dsn, self.deadline.bound(connect_timeout),
                                                   query_timeout=self.lock_timeout + connect_timeout)
        self.where = "%s (table %s, key %s)" % (self.client.target, self.table, self.key)
        self._state = None
        self._open = False

    def _q(self, sql, args=None):
        if self.deadline.expired:  # named by the caller: "guard state <where>: write: the deadline of ..."
            raise DeadlineExceeded(self.deadline.message("the"), target=self.where)
        timeout = self.deadline.bound(self.client.query_timeout)
        return self.client.query(sql.replace("@T", self.table), args, timeout=max(timeout, 0.001))

    def _ms(self, seconds):
        return "%dms" % max(1, int(seconds * 1000))

    def __enter__(self):
        locking = False
        lock_wait = self.lock_timeout
        try:
            if not self.check_mode:
                sql = ("CREATE TABLE IF NOT EXISTS @T (guard text PRIMARY KEY, state jsonb NOT NULL, "
                       "updated_at timestamptz NOT NULL DEFAULT now())")
                try:
                    self._q(sql)
                except DeadlineExceeded:
                    raise
                except P3Error:
                    self._q(sql)  # two controllers creating it at once: one loses on the catalog; it exists now
            self._q("BEGIN")
            self._open = True
            # the server's own waits, cut to what is left of the deadline (the client's timeout backs them up)
            left = self.deadline.remaining()
            lock_wait = self.lock_timeout if left is None else min(self.lock_timeout, left)
            if left is None:
                self._q("SELECT set_config('lock_timeout', %s, true)", (self._ms(lock_wait),))
            else:
                self._q("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                        (self._ms(lock_wait), self._ms(left)))
            if self.check_mode:
                present = self._q("SELECT to_regclass(%s) IS NOT NULL AS present", (self.table,))[0]["present"]
                locking = present
                rows = self._q("SELECT state FROM @T WHERE guard = %s FOR UPDATE", (self.key,)) if present else []
            else:
                self._q("INSERT INTO @T (guard, state) VALUES (%s, %s::jsonb) ON CONFLICT (guard) DO NOTHING",
                        (self.key, json.dumps(empty_state())))
                locking = True  # lock_timeout cancels this statement (the client says "timed out") when held
                rows = self._q("SELECT state FROM @T WHERE guard = %s FOR UPDATE", (self.key,))
        except P3Error as e:
            self._finish(False)
            if self.deadline.expired or isinstance(e, DeadlineExceeded):
                raise P3Error("%s%s" % (self.deadline.message("guard state %s:" % self.where),
                                        ", the row still locked by another controller" if locking else
                                        "" if isinstance(e, DeadlineExceeded) else " (%s)" % e.msg))
            if locking and "timed out" in e.msg:
                raise P3Error("guard state %s: still locked by another controller after %ss" % (
                    self.where, num_text(lock_wait)))
            raise P3Error("guard state %s: %s" % (self.where, e.msg))
        self._state = rows[0]["state"] if rows else empty_state()
        return self

    def read(self):
        return _check_state(self._state, self.where)

    def write(self, state):
        if self.check_mode:
            raise P3Error("guard state %s: not written in check mode" % self.where)
        try:
            self._q("UPDATE @T SET state = %s::jsonb, updated_at = now() WHERE guard = %s",
                    (json.dumps(state, sort_keys=True), self.key))
        except P3Error as e:
            raise P3Error("guard state %s: write: %s" % (self.where, e.msg))
        self._state = state

    def _finish(self, commit):
        """Commit, or end the transaction by closing the connection (the server rolls it back; no statement
        waits for a connection that may be the one that timed out)."""
        try:
            if self._open and commit:
                self._open = False
                self._q("COMMIT")
        finally:
            self._open = False
            self.client.close()

    def __exit__(self, exc_type, *exc):
        try:
            self._finish(exc_type is None)
        except P3Error as e:
            if exc_type is None:
                raise P3Error("guard state %s: commit: %s" % (self.where, e.msg))
        return False
