#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: postgres_activity
short_description: Show who uses PostgreSQL's connections, what runs long and who blocks whom
version_added: 0.1.0
description:
  - The diagnosis of the runbook's "Database Connection Exhaustion" scenario, read-only, from one read of
    C(pg_stat_activity).
  - Connection usage, client backends against C(max_connections), C(superuser_reserved_connections) and
    C(reserved_connections), by state, C(application_name), user and client address. Other backends
    (autovacuum, walsender, background workers) are counted apart.
  - Long-running work over O(long_running_seconds). This covers statements running for longer
    (C(now() - query_start), where the runbook's invalid C(duration) column was meant), transactions open for
    longer (C(now() - xact_start)) and transactions sitting idle for longer (C(idle in transaction) since
    C(state_change)).
  - Lock waits with C(pg_blocking_pids()), and the backends at the root of each blocking chain.
  - Per-role and per-database C(CONNECTION LIMIT)s (C(pg_roles.rolconnlimit), C(pg_database.datconnlimit)) and the
    client backends counted against each (RV(limits)). A role or database at its own limit locks its clients out
    while C(max_connections) may be far from full.
  - Unhealthy when it cannot connect, when the usage reaches O(max_usage_pct) (the runbook's 80% alert), or when a
    role or database reaches O(max_usage_pct) of its own C(CONNECTION LIMIT); the reason names that role or
    database first (C(role p3app at its CONNECTION LIMIT 2 (2/2))). Long-running work and lock waits are
    evidence and do not make it unhealthy by themselves.
  - Connect as a superuser. When the application holds every ordinary slot, only a superuser gets in, through
    the C(superuser_reserved_connections) slots. RV(connections.via_reserved_slot) says whether that happened.
    Only a superuser (or a member of C(pg_read_all_stats)) sees other roles' query texts.
  - Needs PostgreSQL 10 or later (C(pg_stat_activity.backend_type)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.postgres
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  max_usage_pct:
    description:
      - Connection usage, in percent of C(max_connections), at or above which the database is unhealthy.
    type: float
    default: 80
  long_running_seconds:
    description:
      - Age, in seconds, from which a statement, a transaction or an idle transaction counts as long-running.
      - The default is the runbook's 5 minutes.
    type: float
    default: 300
  query_length:
    description: Characters of each query text to report (cut by the server; V(0) reports no query text).
    type: int
    default: 200
  max_items:
    description: Most entries in each evidence list (RV(long_running), RV(lock_waits), RV(blocking_roots)).
    type: int
    default: 20
seealso:
  - module: p3.recovery.postgres_terminate
  - module: p3.recovery.postgres_probe
"""

EXAMPLES = r"""
- name: What holds the connections (as a superuser, through the reserved slots if need be)
  p3.recovery.postgres_activity:
    dsn: "{{ vault_p3_admin_dsn }}"
  register: activity

- name: Long-running work from one minute on, shorter query texts
  p3.recovery.postgres_activity:
    long_running_seconds: 60
    query_length: 80
  register: activity

- name: Show the usage per application
  ansible.builtin.debug:
    msg: "{{ activity.connections.used }}/{{ activity.connections.max }}: {{ activity.connections.by_application }}"
"""

RETURN = r"""
healthy:
  description: Connected, and the usage is below O(max_usage_pct).
  returned: always
  type: bool
  sample: false
reason:
  description: One line.
  returned: always
  type: str
  sample: "connections 18/20 (90%) >= 80% on 127.0.0.1:21010; 17 long-running (oldest 3.2 s), 0 lock waits"
reachable:
  description: Whether the module could connect and read C(pg_stat_activity).
  returned: always
  type: bool
target:
  description: C(host:port) probed, without credentials.
  returned: always
  type: str
  sample: "127.0.0.1:5432"
user:
  description: Role the module connected as; null when it could not connect.
  returned: always
  type: str
  sample: p3admin
superuser:
  description: Whether that role is a superuser.
  returned: always
  type: bool
server_version:
  description: Server version string; null when it could not connect.
  returned: always
  type: str
  sample: "15.14 (Debian 15.14-0+deb12u1)"
max_usage_pct:
  description: The threshold used.
  returned: always
  type: float
  sample: 80.0
long_running_seconds:
  description: The long-running threshold used.
  returned: always
  type: float
  sample: 300.0
usage_pct:
  description: Client backends in percent of C(max_connections), this module's own connection included; null when it could not connect.
  returned: always
  type: float
  sample: 90.0
limits:
  description:
    - Every role (not superuser, can log in) and database with a C(CONNECTION LIMIT) (not -1), with the client
      backends counted against it. C(state) is C(at_limit), C(near_limit) (at or over O(max_usage_pct) of the
      limit) or C(ok); a limit of 0 (a deliberate lock-out) is C(ok). Empty when it could not connect.
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "role", "name": "p3app", "limit": 2, "used": 2, "usage_pct": 100.0, "state": "at_limit"}]
limited:
  description: Names of the roles and databases at or near their own limit (RV(limits) not C(ok)).
  returned: always
  type: dict
  sample: {"roles": ["p3app"], "databases": []}
connections:
  description: Connection usage; null when it could not connect.
  returned: always
  type: dict
  contains:
    used:
      description: Client backends, this module's own connection included.
      type: int
      sample: 18
    max:
      description: C(max_connections).
      type: int
      sample: 20
    superuser_reserved:
      description: C(superuser_reserved_connections).
      type: int
      sample: 3
    reserved:
      description: C(reserved_connections) (PostgreSQL 16+, 0 before).
      type: int
      sample: 0
    ordinary_max:
      description: Slots open to ordinary (non-superuser) roles such as the application's.
      type: int
      sample: 17
    available:
      description: Ordinary slots still free.
      type: int
      sample: 0
    usage_pct:
      description: Same as RV(usage_pct).
      type: float
      sample: 90.0
    via_reserved_slot:
      description: More client backends than ordinary slots are in use, so this connection took a superuser-reserved slot.
      type: bool
    by_state:
      description: Client backends per C(state).
      type: dict
      sample: {"active": 18}
    by_application:
      description: Client backends per C(application_name) (C((none)) when empty).
      type: dict
      sample: {"p3-lab-leak": 17, "p3-recovery": 1}
    by_user:
      description: Client backends per role.
      type: dict
      sample: {"p3app": 17, "p3admin": 1}
    by_client_addr:
      description: Client backends per client address (C(local) for Unix sockets).
      type: dict
      sample: {"127.0.0.1": 18}
    other_backends:
      description: Backends that are not client backends, per C(backend_type); never signalled by this collection.
      type: dict
      sample: {"autovacuum launcher": 1, "checkpointer": 1}
long_running:
  description: Long-running client backends (not this module's), oldest first, at most O(max_items).
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Backend process id.
      type: int
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
      description: Age in its state. For C(active) this is C(now() - query_start), otherwise C(now() - state_change).
      type: float
    query_age_seconds:
      description: C(now() - query_start).
      type: float
    xact_age_seconds:
      description: C(now() - xact_start), null outside a transaction.
      type: float
    backend_start:
      description: When the backend started (with pid, identifies it).
      type: str
    wait_event:
      description: C(wait_event_type:wait_event), or null.
      type: str
    query:
      description: Query text cut to O(query_length) characters (C(...) marks a cut).
      type: str
    long_running:
      description: Why it is listed, any of C(query), C(transaction), C(idle_in_transaction).
      type: list
      elements: str
  sample: [{"pid": 4242, "user": "p3app", "application": "p3-lab-leak", "state": "active", "age_seconds": 3.2,
            "query": "SELECT pg_sleep(3600)", "long_running": ["query", "transaction"]}]
long_running_count:
  description: Number of long-running client backends (RV(long_running) may be cut to O(max_items)).
  returned: always
  type: int
oldest:
  description: The oldest running statement, open transaction and idle transaction, in seconds (null when none).
  returned: always
  type: dict
  sample: {"query_seconds": 3.2, "transaction_seconds": 3.2, "idle_in_transaction_seconds": null}
lock_waits:
  description: Backends waiting on a lock held by others, at most O(max_items); entries as in RV(long_running) plus C(blocked_by) (pids).
  returned: always
  type: list
  elements: dict
lock_waits_count:
  description: Number of backends waiting on locks.
  returned: always
  type: int
blocking_roots:
  description:
    - Backends that block others (directly or through a chain) without waiting themselves, most blocking first,
      at most O(max_items). The entries are as in RV(long_running) plus C(blocks), the number of backends waiting
      behind it. Members of a wait cycle are listed too.
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.pg_activity import (
    analyse_activity,
    read_activity,
    unreachable_activity,
    validate_activity_params,
)
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import (
    PostgresTarget,
    postgres_argument_spec,
)


def main():
    argument_spec = postgres_argument_spec(
        max_usage_pct=dict(type="float", default=80),
        long_running_seconds=dict(type="float", default=300),
        query_length=dict(type="int", default=200),
        max_items=dict(type="int", default=20),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    try:
        validate_activity_params(module.params)
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = PostgresTarget(module)
    client = target.client()
    try:
        settings, rows, limits = read_activity(client, module.params["query_length"])
    except P3Error as e:
        exit_probe(module, unreachable_activity(target.target, module.params, e.msg))
    finally:
        client.close()
    exit_probe(module, analyse_activity(rows, settings, module.params, target.target, limits))


if __name__ == "__main__":
    main()
