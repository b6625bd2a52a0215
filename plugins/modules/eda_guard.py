#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: eda_guard
short_description: Decide what an Alertmanager alert may start unattended (episode dedup, circuit breaker, allow-list)
version_added: 0.1.0
description:
  - The safety guard of the Event-Driven Ansible loop (playbook C(p3.recovery.eda_respond), docs/eda.md). Given one
    alert of an Alertmanager webhook notification, returns what the loop does with it - RV(decision).
  - V(act) - the alert is allowed to act unattended (O(allowed)) - run its response.
  - V(plan) - not allowed unattended - run the response in check mode and post the plan for a human.
  - V(duplicate) - the alert's episode (its fingerprint and startsAt) was handled less than O(window)
    seconds ago - Alertmanager re-sends while an alert keeps firing; nothing runs.
  - V(refused) - the circuit breaker of O(resource) is open - O(breaker_max) responses (act or plan) were started
    for it within O(breaker_window) seconds; nothing runs and a human must be told.
  - V(resolved) - a resolved notification ended the alert's open episode; V(ignored) - a resolved alert without one.
  - The state (open episodes, responses per resource) is one JSON file, O(state_file), read and written under an
    exclusive lock taken within O(lock_timeout) seconds and replaced atomically, so it holds between runs, rulebook
    restarts and concurrent runs on one controller.
  - With O(state_database_url) instead, the state is one row (O(state_key)) of the PostgreSQL table
    O(state_table) (created when missing), locked with C(SELECT ... FOR UPDATE) for the read, the decision and the
    write, so several EDA controllers (or rulebooks) deciding the same alert at once start exactly one response.
  - The result carries the alert (name, fingerprint, startsAt) and a RV(timeline) entry, so the incident callback
    records which alert caused the run.
  - With O(state_database_url) the whole read, decision and write has one total deadline, O(timeout) - connecting,
    creating the table, waiting for the row's lock, writing and committing each get what is left of it (at most
    O(connect_timeout) to connect and O(lock_timeout) for the row's lock), and a deadline exceeded fails in one line
    naming the table, the key and the deadline, nothing written.
  - In check mode the decision is computed exactly as the real run would and the state is not written (in
    PostgreSQL nothing is created or locked either).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  alert:
    description:
      - One alert of the webhook notification, as the event source C(p3.recovery.alertmanager) puts it in
        C(event.alert) - C(fingerprint), C(status) (firing or resolved), C(labels) (C(alertname)), C(startsAt).
    type: dict
    required: true
  resource:
    description: What the response acts on, counted by the circuit breaker (e.g. the scenario playbook's name).
    type: str
    required: true
  allowed:
    description: Whether this alert's response may run unattended (else it is planned in check mode).
    type: bool
    default: false
  state_file:
    description:
      - The guard's state file (created with mode 0600, its directory with 0700, when missing) - one controller.
      - Exactly one of O(state_file) and O(state_database_url) is required.
    type: path
  state_database_url:
    description:
      - A PostgreSQL DSN (URL or key=value) whose role may create and write O(state_table) - e.g. the incident
        sink's C(p3_incident_database_url). The state is kept there, shared by several controllers. A secret -
        never shown.
    type: str
  state_table:
    description: The PostgreSQL table of the state (a plain lower-case identifier).
    type: str
    default: p3_eda_guard
  state_key:
    description: The row of O(state_table) - one per independent guard (e.g. per environment).
    type: str
    default: default
  connect_timeout:
    description: Total seconds to connect to O(state_database_url) (within O(timeout)).
    type: float
    default: 5
  timeout:
    description:
      - Total seconds for the whole read, decision and write of the state in PostgreSQL (O(state_database_url)) -
        connect, create the table, lock the row, write, commit. O(connect_timeout) and O(lock_timeout) still cap
        their own step within it.
      - With O(state_file) the file's lock (O(lock_timeout)) is the only wait.
    type: float
    default: 15
  window:
    description: Seconds during which a still-firing alert's episode is not handled again.
    type: int
    default: 3600
  breaker_max:
    description: Responses of one resource within O(breaker_window) after which the breaker opens; V(0) disables it.
    type: int
    default: 3
  breaker_window:
    description: Seconds over which the circuit breaker counts responses.
    type: int
    default: 1800
  lock_timeout:
    description: Total seconds to wait for the state's lock (the file's, or the row's in PostgreSQL, within
      O(timeout)).
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: What may this alert start?
  p3.recovery.eda_guard:
    alert: "{{ ansible_eda.event.alert }}"
    resource: p3.recovery.recover_redis
    allowed: false
    state_file: /var/lib/p3-recovery/eda-guard.json
  register: guard

- name: The same, its state shared by several EDA controllers (a row of a PostgreSQL table)
  p3.recovery.eda_guard:
    alert: "{{ ansible_eda.event.alert }}"
    resource: p3.recovery.recover_redis
    state_database_url: "{{ p3_incident_database_url }}"
  register: guard
"""

RETURN = r"""
decision:
  description: act, plan, duplicate, refused, resolved or ignored.
  returned: always
  type: str
  sample: act
act:
  description: True when the response runs for real.
  returned: always
  type: bool
check:
  description: True when the response runs in check mode (a plan for a human).
  returned: always
  type: bool
reason:
  description: The decision in one line.
  returned: always
  type: str
alert:
  description: The alert - name, fingerprint, status, startsAt, instance, severity.
  returned: always
  type: dict
breaker:
  description: The circuit breaker of O(resource) after this decision - resource, recent, max, window, open.
  returned: always
  type: dict
timeline:
  description: One entry (ts, action, target, detail) naming the alert and the decision.
  returned: always
  type: list
  elements: dict
"""

import time

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    Deadline, P3Error, P3Module, fail_clean, register_secrets, timeline_entry)
from ansible_collections.p3.recovery.plugins.module_utils.eda_guard import (
    GuardStore, PgGuardStore, alert_summary, breaker_state, decide)


def main():
    module = P3Module(
        argument_spec=dict(
            alert=dict(type="dict", required=True),
            resource=dict(type="str", required=True),
            allowed=dict(type="bool", default=False),
            state_file=dict(type="path"),
            state_database_url=dict(type="str", no_log=True),
            state_table=dict(type="str", default="p3_eda_guard"),
            state_key=dict(type="str", default="default", no_log=False),
            connect_timeout=dict(type="float", default=5),
            window=dict(type="int", default=3600),
            breaker_max=dict(type="int", default=3),
            breaker_window=dict(type="int", default=1800),
            lock_timeout=dict(type="float", default=10),
            timeout=dict(type="float", default=15),
        ),
        mutually_exclusive=[("state_file", "state_database_url")],
        required_one_of=[("state_file", "state_database_url")],
        supports_check_mode=True,
    )
    p = module.params
    if p["state_database_url"]:  # the PostgreSQL client is loaded only for a state in PostgreSQL
        from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import dsn_secrets
        register_secrets(module, dsn_secrets(p["state_database_url"]))
    for name in ("lock_timeout", "connect_timeout", "timeout"):
        if p[name] <= 0:
            module.fail_json(msg="%s must be more than 0 seconds, got %s" % (name, p[name]))
    for name in ("window", "breaker_window"):
        if p[name] < 1:
            module.fail_json(msg="%s must be at least 1 second, got %d" % (name, p[name]))
    if p["breaker_max"] < 0:
        module.fail_json(msg="breaker_max must be 0 (off) or more, got %d" % p["breaker_max"])
    try:
        now = time.time()
        if p["state_database_url"]:
            store = PgGuardStore(p["state_database_url"], p["state_table"], p["state_key"], p["lock_timeout"],
                                 p["connect_timeout"], check_mode=module.check_mode,
                                 deadline=Deadline(p["timeout"], "timeout"))
        else:
            store = GuardStore(p["state_file"], p["lock_timeout"], check_mode=module.check_mode)
        with store:
            decision, reason, state, changed = decide(store.read(), p["alert"], p["resource"], p["allowed"], now,
                                                      p["window"], p["breaker_max"], p["breaker_window"])
            if changed and not module.check_mode:
                store.write(state)
    except P3Error as e:
        fail_clean(module, e)
    a = alert_summary(p["alert"])
    detail = "%s %s fingerprint %s startsAt %s: %s" % (
        a["name"], a["status"], a["fingerprint"], a["startsAt"] or "?", reason)
    module.exit_json(changed=changed, decision=decision, act=decision == "act", check=decision == "plan",
                     reason=reason, alert=a,
                     breaker=breaker_state(state, p["resource"], now, p["breaker_max"], p["breaker_window"]),
                     timeline=[timeline_entry("eda_" + decision, p["resource"], detail)])


if __name__ == "__main__":
    main()
