#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: postgres_terminate
short_description: Terminate PostgreSQL backends chosen by a policy (age, state, application, user, cap)
version_added: 0.1.0
description:
  - The recovery step of the runbook's "Database Connection Exhaustion" scenario (C(pg_terminate_backend) of
    long-running work), with the runbook's invalid C(duration) column replaced by real ages and bounded by a
    policy.
  - A backend is selected when it is in one of O(states), at least O(min_age_seconds) old in that state, and
    passes the include and exclude lists for C(application_name) and user. The oldest are taken first, at most
    O(max_count) of them.
  - Never selected, whatever the policy says. This module's own backend. Anything that is not a client backend
    (walsender and other replication processes, autovacuum, background workers, checkpointer and the like).
    Superusers' backends, unless O(include_superusers=true). Backends the connected role may not signal.
  - Each backend is named by its pid and C(backend_start), so a reused pid is never hit. The signal statement
    checks the guards, the state and the age again at the moment it runs, so a backend whose statement ended in
    the meantime is left alone (reported in RV(vanished)).
  - With O(cancel_first=true), the selected backends first get C(pg_cancel_backend). Those that still match the
    policy after O(cancel_grace_seconds) are terminated.
  - Check mode reads C(pg_stat_activity) once and returns in RV(selected) exactly the backends that would be
    signalled. It sends no signal and runs no statement that changes anything. It does not run the statement
    and roll it back, because a transaction does not undo a terminate.
  - C(changed) is true only when a signal was sent (in check mode, when one would be). On a database with
    nothing matching, it is false. A failure after a signal was sent (the connection lost while waiting) still
    returns C(changed=true) with RV(terminated) and RV(cancelled), and the message names them.
  - During an exhaustion incident connect as a superuser. Only superusers get in through the
    C(superuser_reserved_connections) slots, and only they can terminate any role's backend.
  - Needs PostgreSQL 10 or later (C(pg_stat_activity.backend_type)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.postgres
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  min_age_seconds:
    description:
      - How long a backend must have been in its state before it is selected, in seconds. For C(active) backends
        this is the age of the running statement (C(now() - query_start)). For the idle states it is the time
        since C(state_change), so for C(idle in transaction) it is how long the transaction has sat idle.
      - The default is the runbook's 5 minutes. V(0) selects regardless of age.
    type: float
    default: 300
  states:
    description: The C(pg_stat_activity.state) values to select.
    type: list
    elements: str
    choices: [active, idle, idle in transaction, idle in transaction (aborted), fastpath function call]
    default: [active, idle in transaction, idle in transaction (aborted)]
  include_applications:
    description:
      - Select only backends whose C(application_name) matches one of these shell-style patterns
        (C(fnmatch), case-sensitive; an empty C(application_name) is matched as the empty string). Empty means any.
    type: list
    elements: str
    default: []
  exclude_applications:
    description: Never select backends whose C(application_name) matches one of these patterns.
    type: list
    elements: str
    default: []
  include_users:
    description: Select only backends of roles matching one of these patterns. Empty means any.
    type: list
    elements: str
    default: []
  exclude_users:
    description: Never select backends of roles matching one of these patterns.
    type: list
    elements: str
    default: []
  include_databases:
    description:
      - Select only backends connected to databases matching one of these patterns. Empty means any. The
        database role uses it to scope a terminate to a database at its own C(CONNECTION LIMIT).
    type: list
    elements: str
    default: []
  include_superusers:
    description: Also select other superusers' backends. This module's own backend is never selected.
    type: bool
    default: false
  max_count:
    description:
      - Most backends to signal in one run (the oldest first). RV(capped) says how many matching backends were
        left because of it.
    type: int
    default: 50
  cancel_first:
    description:
      - Send C(pg_cancel_backend) first, wait up to O(cancel_grace_seconds) for the statements to end, then
        terminate those still matching the policy.
      - A cancelled backend keeps its connection (its slot) unless its client closes it. Backends that are idle in
        a transaction have no statement to cancel and are terminated.
    type: bool
    default: false
  cancel_grace_seconds:
    description: Seconds to wait after the cancel before terminating what is left.
    type: float
    default: 2
  wait_seconds:
    description:
      - Seconds to wait for terminated backends to exit. Those still present afterwards are reported in
        RV(still_alive) and do not fail the task.
    type: float
    default: 5
  query_length:
    description: Characters of each query text to report (V(0) reports no query text).
    type: int
    default: 200
seealso:
  - module: p3.recovery.postgres_activity
"""

EXAMPLES = r"""
- name: Dry run - what would the runbook's "kill long-running queries" hit?
  p3.recovery.postgres_terminate:
    dsn: "{{ vault_p3_admin_dsn }}"
    min_age_seconds: 300
  check_mode: true
  register: would

- name: Terminate the app's statements older than a minute, never the nightly report, at most 20
  p3.recovery.postgres_terminate:
    min_age_seconds: 60
    include_users: [p3app]
    exclude_applications: ["nightly-report*"]
    max_count: 20
  register: terminated

- name: Cancel first, terminate what is still running 3 s later
  p3.recovery.postgres_terminate:
    states: [active]
    min_age_seconds: 600
    cancel_first: true
    cancel_grace_seconds: 3

- name: Idle transactions that have sat for 10 minutes
  p3.recovery.postgres_terminate:
    states: [idle in transaction, idle in transaction (aborted)]
    min_age_seconds: 600
"""

RETURN = r"""
msg:
  description: One line saying what was (or would be) done.
  returned: always
  type: str
  sample: "terminated 17 of 17 selected backends on 127.0.0.1:5432 (p3-lab-leak: 17); connections 18 -> 1 of 20"
target:
  description: C(host:port), without credentials.
  returned: always
  type: str
  sample: "127.0.0.1:5432"
user:
  description: Role the module connected as.
  returned: always
  type: str
  sample: p3admin
superuser:
  description: Whether that role is a superuser.
  returned: always
  type: bool
check_mode:
  description: True when nothing was signalled because the task ran in check mode.
  returned: always
  type: bool
policy:
  description: The policy applied (the options that choose backends).
  returned: always
  type: dict
  sample: {"min_age_seconds": 300.0, "states": ["active"], "include_applications": [], "exclude_applications": [],
           "include_users": [], "exclude_users": [], "include_databases": [], "include_superusers": false,
           "max_count": 50}
matched:
  description: Client backends matching the policy, before O(max_count).
  returned: always
  type: int
  sample: 17
capped:
  description: Matching backends left alone because of O(max_count).
  returned: always
  type: int
  sample: 0
protected:
  description: Backends never selected, per reason.
  returned: always
  type: dict
  contains:
    own:
      description: This module's own backend.
      type: int
    not_client:
      description: Replication, autovacuum, background workers and other non-client backends.
      type: int
    superuser:
      description: Other superusers' backends (unless O(include_superusers)).
      type: int
    not_permitted:
      description: Backends the connected role may not signal.
      type: int
excluded:
  description: Unprotected client backends the policy did not select, per first failing filter (C(state), C(age), C(application), C(user), C(database)).
  returned: always
  type: dict
  sample: {"state": 0, "age": 1, "application": 1, "user": 0, "database": 0}
selected:
  description:
    - The backends chosen by the policy, oldest first. In check mode these are exactly the ones that would be
      signalled.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Backend process id.
      type: int
    backend_start:
      description: When the backend started (with pid, identifies it).
      type: str
    user:
      description: Role.
      type: str
    application:
      description: C(application_name).
      type: str
    client_addr:
      description: Client address, null for Unix sockets.
      type: str
    database:
      description: Database.
      type: str
    state:
      description: C(state).
      type: str
    age_seconds:
      description: Age in its state (see O(min_age_seconds)).
      type: float
    query_age_seconds:
      description: C(now() - query_start).
      type: float
    xact_age_seconds:
      description: C(now() - xact_start).
      type: float
    wait_event:
      description: C(wait_event_type:wait_event), or null.
      type: str
    query:
      description: Query text, cut to O(query_length).
      type: str
cancelled:
  description: Pids whose statement ended after C(pg_cancel_backend) and that were therefore not terminated.
  returned: always
  type: list
  elements: int
terminated:
  description: Pids sent C(pg_terminate_backend) (empty in check mode).
  returned: always
  type: list
  elements: int
  sample: [4242, 4243]
vanished:
  description: Selected pids that were gone, or no longer matched the policy, when the signal statement ran.
  returned: always
  type: list
  elements: int
still_alive:
  description: Terminated pids still present after O(wait_seconds).
  returned: always
  type: list
  elements: int
connections_before:
  description: Client backends before, with C(max_connections) and the percentage.
  returned: always
  type: dict
  sample: {"used": 18, "max": 20, "usage_pct": 90.0, "ordinary_max": 17, "available": 0}
connections_after:
  description: The same after the signals; null in check mode and when nothing was signalled.
  returned: always
  type: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.pg_activity import (
    DEFAULT_STATES,
    STATES,
    connect_hint,
    terminate,
    validate_policy,
)
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import (
    PostgresTarget,
    postgres_argument_spec,
)


def main():
    module = P3Module(
        argument_spec=postgres_argument_spec(
            min_age_seconds=dict(type="float", default=300),
            states=dict(type="list", elements="str", choices=STATES, default=list(DEFAULT_STATES)),
            include_applications=dict(type="list", elements="str", default=[]),
            exclude_applications=dict(type="list", elements="str", default=[]),
            include_users=dict(type="list", elements="str", default=[]),
            exclude_users=dict(type="list", elements="str", default=[]),
            include_databases=dict(type="list", elements="str", default=[]),
            include_superusers=dict(type="bool", default=False),
            max_count=dict(type="int", default=50),
            cancel_first=dict(type="bool", default=False),
            cancel_grace_seconds=dict(type="float", default=2),
            wait_seconds=dict(type="float", default=5),
            query_length=dict(type="int", default=200),
        ),
        supports_check_mode=True,
    )
    try:
        policy = validate_policy(module.params)
        if module.params["query_length"] < 0:
            raise P3Error("query_length must be >= 0, got %s" % module.params["query_length"])
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = PostgresTarget(module)
    client = target.client()
    p = module.params
    try:
        result = terminate(client, target.target, policy, check_mode=module.check_mode, warn=module.warn,
                           query_length=p["query_length"], cancel_first=p["cancel_first"],
                           cancel_grace_seconds=p["cancel_grace_seconds"], wait_seconds=p["wait_seconds"])
    except P3Error as e:
        details = dict(e.details, target=target.target)
        module.fail_json(msg=connect_hint(e.msg), **details)
    finally:
        client.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
