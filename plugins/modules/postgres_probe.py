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
    C(sorry, too many clients already)), or when the usage reaches O(max_usage_pct).
  - Connect as a superuser during a connection exhaustion incident; the probe then gets in through the
    C(superuser_reserved_connections) slots that the application cannot take.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.postgres
  - p3.recovery.probe
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
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
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    PROBE_ARGUMENT_SPEC,
    P3Error,
    exit_probe,
    probe_result,
)
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import (
    PostgresTarget,
    postgres_argument_spec,
)

SETTINGS_SQL = """
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::int AS reserved_connections,
       pg_is_in_recovery() AS in_recovery,
       current_user::text AS "user",
       current_database()::text AS database,
       COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS superuser
"""

ACTIVITY_SQL = """
SELECT COALESCE(state, 'unknown') AS state,
       COALESCE(NULLIF(application_name, ''), '(none)') AS application_name,
       COALESCE(usename::text, '(unknown)') AS usename,
       count(*)::int AS n,
       max(EXTRACT(EPOCH FROM now() - query_start)) FILTER (WHERE state = 'active' AND pid <> pg_backend_pid())
         AS longest_active_seconds
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
 GROUP BY 1, 2, 3
"""

EVIDENCE_KEYS = ("latency_ms", "server_version", "server_version_num", "usage_pct", "connections", "in_recovery",
                 "user", "superuser", "database")
SETTING_KEYS = ("server_version", "server_version_num", "in_recovery", "user", "superuser", "database")


def _pct(value):
    return ("%d" % value) if float(value).is_integer() else ("%.1f" % value)


def probe(target, threshold):
    evidence = dict((k, None) for k in EVIDENCE_KEYS)
    evidence.update(target=target.target, max_usage_pct=float(threshold))
    client = target.client()
    try:
        t0 = time.monotonic()
        client.connect()
        if client.scalar("SELECT 1") != 1:
            raise P3Error("SELECT 1 on %s did not return 1" % target.target)
        evidence["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 2)
        settings = client.query(SETTINGS_SQL)[0]
        rows = client.query(ACTIVITY_SQL)
    except P3Error as e:
        return probe_result(False, e.msg, **evidence)
    finally:
        client.close()
    for key in SETTING_KEYS:
        evidence[key] = settings[key]

    by_state, by_app, by_user = {}, {}, {}
    longest = None
    for r in rows:
        for bucket, key in ((by_state, r["state"]), (by_app, r["application_name"]), (by_user, r["usename"])):
            bucket[key] = bucket.get(key, 0) + r["n"]
        if r["longest_active_seconds"] is not None:
            longest = max(longest or 0.0, float(r["longest_active_seconds"]))
    used = sum(r["n"] for r in rows)
    max_conn = settings["max_connections"]
    usage = round(100.0 * used / max_conn, 1) if max_conn else 0.0
    evidence["usage_pct"] = usage
    evidence["connections"] = dict(
        used=used,
        max=max_conn,
        superuser_reserved=settings["superuser_reserved_connections"],
        reserved=settings["reserved_connections"],
        available=max(0, max_conn - settings["superuser_reserved_connections"] - settings["reserved_connections"] - used),
        by_state=by_state,
        by_application=by_app,
        by_user=by_user,
        longest_active_seconds=round(longest, 1) if longest is not None else None,
    )
    summary = "connections %d/%d (%s%%)" % (used, max_conn, _pct(usage))
    if usage >= threshold:
        return probe_result(False, "%s >= %s%% on %s" % (summary, _pct(threshold), target.target), **evidence)
    return probe_result(True, "%s < %s%% on %s (PostgreSQL %s)" % (
        summary, _pct(threshold), target.target, settings["server_version"].split()[0]), **evidence)


def main():
    argument_spec = postgres_argument_spec(
        max_usage_pct=dict(type="float", default=80),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    threshold = module.params["max_usage_pct"]
    if not 0 < threshold <= 100:
        module.fail_json(msg="max_usage_pct must be in (0, 100], got %s" % threshold)
    target = PostgresTarget(module)
    exit_probe(module, probe(target, threshold))


if __name__ == "__main__":
    main()
