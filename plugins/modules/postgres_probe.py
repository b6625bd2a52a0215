#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: postgres_probe
short_description: Probe PostgreSQL connectivity and connection usage
version_added: 0.1.0
description:
  - Runs the runbook's quick diagnostic 2 (C(psql $DATABASE_URL -c "SELECT 1")), read-only, and measures how many
    of C(max_connections) are in use (the runbook's C(database_connection_high) alert).
  - Unhealthy when it cannot connect (the reason names C(host:port) and the cause, such as C(connection refused),
    C(timed out after 5s), C(password authentication failed for user "p3admin") or
    C(sorry, too many clients already)), when the usage reaches O(max_usage_pct), or when a role or database
    reaches O(max_usage_pct) of its own C(CONNECTION LIMIT) (C(pg_roles.rolconnlimit),
    C(pg_database.datconnlimit)). Such a role or database locks its clients out while C(max_connections) is far
    from full; the reason names it first, for example C(role p3app at its CONNECTION LIMIT 2 (2/2)).
  - Connect as a superuser during a connection exhaustion incident; the probe then gets in through the
    C(superuser_reserved_connections) slots that the application cannot take.
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
seealso:
  - module: p3.recovery.redis_probe
"""

EXAMPLES = r"""
- name: Probe the database named by DATABASE_URL
  p3.recovery.postgres_probe:
  register: db

- name: Probe with parts and a stricter threshold
  p3.recovery.postgres_probe:
    db_host: 127.0.0.1
    db_port: 5432
    db_user: p3admin
    db_password: "{{ vault_p3admin_password }}"
    db_name: p3
    max_usage_pct: 70

- name: Show the usage
  ansible.builtin.debug:
    msg: "{{ db.connections }}/{{ db.max_connections }} ({{ db.usage_pct }}%)"
"""

RETURN = r"""
healthy:
  description: Connected, C(SELECT 1) answered and the usage is below O(max_usage_pct).
  returned: always
  type: bool
  sample: false
reason:
  description: One line.
  returned: always
  type: str
  sample: "connections 19/20 (95%) >= 80% on 127.0.0.1:17010"
target:
  description: C(host:port) probed, without credentials.
  returned: always
  type: str
  sample: "127.0.0.1:17010"
latency_ms:
  description: Time to connect and answer C(SELECT 1), in milliseconds; null when it could not connect.
  returned: always
  type: float
server_version:
  description: Server version string; null when it could not connect.
  returned: always
  type: str
  sample: "15.14 (Debian 15.14-0+deb12u1)"
server_version_num:
  description: Numeric server version.
  returned: always
  type: int
  sample: 150014
usage_pct:
  description: Client backends in percent of C(max_connections), one decimal; null when it could not connect.
  returned: always
  type: float
  sample: 95.0
max_usage_pct:
  description: The threshold used.
  returned: always
  type: float
  sample: 80.0
connections:
  description: Connection usage; null when it could not connect.
  returned: always
  type: dict
  contains:
    used:
      description: Client backends in C(pg_stat_activity), this probe's own connection included.
      type: int
      sample: 19
    max:
      description: The server's C(max_connections).
      type: int
      sample: 20
    superuser_reserved:
      description: The server's C(superuser_reserved_connections).
      type: int
      sample: 3
    reserved:
      description: The server's C(reserved_connections) (PostgreSQL 16+, 0 before).
      type: int
      sample: 0
    available:
      description: Connections still open to ordinary (non-superuser) roles such as the application's.
      type: int
      sample: 0
    by_state:
      description: Client backends per C(state) (C(active), C(idle), C(idle in transaction), ...).
      type: dict
      sample: {"active": 16, "idle": 3}
    by_application:
      description: Client backends per C(application_name).
      type: dict
      sample: {"p3-protocol": 17, "p3-recovery": 1}
    by_user:
      description: Client backends per role.
      type: dict
      sample: {"p3app": 17, "p3admin": 1}
    longest_active_seconds:
      description: Age of the oldest running query (C(now() - query_start) of C(active) backends), in seconds.
      type: float
      sample: 312.5
in_recovery:
  description: True on a standby.
  returned: always
  type: bool
user:
  description: Role the probe connected as.
  returned: always
  type: str
  sample: p3admin
superuser:
  description: Whether that role is a superuser.
  returned: always
  type: bool
database:
  description: Database the probe connected to.
  returned: always
  type: str
  sample: p3
limits:
  description:
    - Every role (not superuser, can log in) and database with a C(CONNECTION LIMIT), with the client backends
      counted against it; C(state) is C(at_limit), C(near_limit) (at or over O(max_usage_pct) of the limit) or
      C(ok). Null when it could not connect.
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "role", "name": "p3app", "limit": 2, "used": 2, "usage_pct": 100.0, "state": "at_limit"}]
limited:
  description: Names of the roles and databases at or near their own limit. Null when it could not connect.
  returned: always
  type: dict
  sample: {"roles": ["p3app"], "databases": []}
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import check_usage_threshold, postgres_probe
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import (
    PostgresTarget,
    postgres_argument_spec,
)


def main():
    argument_spec = postgres_argument_spec(
        max_usage_pct=dict(type="float", default=80),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    threshold = module.params["max_usage_pct"]
    try:
        check_usage_threshold(threshold)
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = PostgresTarget(module)
    exit_probe(module, postgres_probe(target, threshold))


if __name__ == "__main__":
    main()
