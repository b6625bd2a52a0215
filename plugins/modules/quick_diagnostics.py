#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: quick_diagnostics
short_description: Run the runbook's quick diagnostics (app, PostgreSQL, Redis, metrics) concurrently in one task
version_added: 0.1.0
description:
  - Runs the probes of M(p3.recovery.app_probe), M(p3.recovery.postgres_probe), M(p3.recovery.redis_probe) and
    M(p3.recovery.metrics_probe) at the same time, in one module process, and returns each probe's result
    exactly as that module returns it, under the probe's name.
  - The same code runs in both places (the probes live in the collection's module_utils); this module exists for
    speed at 3 a.m. - one task instead of four, and the slowest probe's time instead of the sum of all (a
    hanging endpoint costs one timeout, not one per probe). Use the one-probe modules for anything else.
  - Read-only. Bad input for one probe (a malformed URL or DSN, a missing library) makes that probe unhealthy
    with the cause in its RV(reason) and C(error=true); the other probes still run and report.
  - Healthy when every probe that ran is healthy.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.postgres
  - p3.recovery.redis
  - p3.recovery.probe
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - redis (Python library, for the C(redis) probe)
  - psycopg2 (Python library, for the C(postgres) probe)
  - prometheus-client (Python library, for the C(metrics) probe)
options:
  probes:
    description:
      - Which probes to run. Each one's result is returned under its name.
    type: list
    elements: str
    choices: [app, postgres, redis, metrics]
    default: [app, postgres, redis, metrics]
  health_path:
    description: Path of the health endpoint (C(app) probe; as M(p3.recovery.app_probe)).
    type: str
    default: /health
  pulse_path:
    description: Path of the pulse status endpoint; empty to skip the pulse check (C(app) probe).
    type: str
    default: /pulse/status
  min_peers:
    description: Minimum mesh peers the pulse status must report (C(app) probe).
    type: int
    default: 1
  max_usage_pct:
    description: Connection usage (percent of C(max_connections)) at or above which PostgreSQL is unhealthy
      (C(postgres) probe; as M(p3.recovery.postgres_probe)).
    type: float
    default: 80
  metrics_path:
    description: Path of the Prometheus metrics endpoint (C(metrics) probe).
    type: str
    default: /metrics
  required_metrics:
    description:
      - Metric names that must be present (C(metrics) probe; the O(p3.recovery.metrics_probe#module:required)
        option of M(p3.recovery.metrics_probe)).
    type: list
    elements: str
    default: []
notes:
  - O(timeout) bounds each HTTP request, O(connect_timeout) the PostgreSQL connection and
    O(redis_socket_timeout)/O(redis_connect_timeout) each Redis call, as in the one-probe modules.
  - The module is in the C(http), C(postgres) and C(redis) action groups, so C(module_defaults) for any of them apply.
seealso:
  - module: p3.recovery.app_probe
  - module: p3.recovery.postgres_probe
  - module: p3.recovery.redis_probe
  - module: p3.recovery.metrics_probe
"""

EXAMPLES = r"""
- name: Quick diagnostics of the lab
  p3.recovery.quick_diagnostics:
    url: http://127.0.0.1:17030
    dsn: "{{ p3_database_url }}"
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    required_metrics: [api_requests_total, p3_mesh_peers]
  register: diag

- name: Name what is unhealthy
  ansible.builtin.debug:
    msg: "{{ diag.verdicts | rejectattr('healthy') | map(attribute='reason') }}"

- name: Only the database and Redis, failing the task when either is unhealthy
  p3.recovery.quick_diagnostics:
    probes: [postgres, redis]
    fail_on_unhealthy: true
"""

RETURN = r"""
healthy:
  description: Every probe that ran is healthy.
  returned: always
  type: bool
  sample: false
reason:
  description: One line naming each unhealthy probe and its reason, or that all are healthy.
  returned: always
  type: str
  sample: "1 of 4 probes unhealthy - redis: node 127.0.0.1:17001 unreachable (connection refused)"
verdicts:
  description: One entry per probe that ran, in the order of O(probes).
  returned: always
  type: list
  elements: dict
  contains:
    probe:
      description: The probe name (C(app), C(postgres), C(redis), C(metrics)).
      type: str
    module:
      description: The module whose result this is (for example C(p3.recovery.redis_probe)).
      type: str
    healthy:
      description: The probe's verdict.
      type: bool
    reason:
      description: The probe's one-line reason.
      type: str
app:
  description: The result of M(p3.recovery.app_probe) (C(healthy), C(reason), C(health), C(pulse)); see that module.
  returned: when C(app) is in O(probes)
  type: dict
postgres:
  description: The result of M(p3.recovery.postgres_probe) (C(healthy), C(reason), C(connections), ...); see that
    module. With C(error=true) when its input was rejected.
  returned: when C(postgres) is in O(probes)
  type: dict
redis:
  description: The result of M(p3.recovery.redis_probe) (C(healthy), C(reason), C(nodes), C(cluster_state), ...);
    see that module.
  returned: when C(redis) is in O(probes)
  type: dict
metrics:
  description: The result of M(p3.recovery.metrics_probe) (C(healthy), C(reason), C(metrics), C(summary),
    C(missing)); see that module.
  returned: when C(metrics) is in O(probes)
  type: dict
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe, probe_result
from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HTTP_ARGUMENT_SPEC, HttpTarget
from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import POSTGRES_ARGUMENT_SPEC, PostgresTarget
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import REDIS_ARGUMENT_SPEC, RedisTarget

PROBES = ("app", "postgres", "redis", "metrics")
MODULES = dict(app="p3.recovery.app_probe", postgres="p3.recovery.postgres_probe", redis="p3.recovery.redis_probe",
               metrics="p3.recovery.metrics_probe")


def probe_functions(module):
    """{probe name: callable} for the selected probes, each building its own target on a ScopedModule."""
    p = module.params
    scoped = d.ScopedModule(module)

    def app():
        return d.app_probe(HttpTarget(scoped), p["health_path"], p["pulse_path"], p["min_peers"])

    def postgres():
        d.check_usage_threshold(p["max_usage_pct"])
        return d.postgres_probe(PostgresTarget(scoped), p["max_usage_pct"])

    def redis():
        return d.redis_probe(RedisTarget(scoped))

    def metrics():
        if not m.HAS_PROMETHEUS:
            raise P3Error(missing_required_lib("prometheus-client"))
        return d.metrics_probe(HttpTarget(scoped), p["metrics_path"], p["required_metrics"])

    functions = dict(app=app, postgres=postgres, redis=redis, metrics=metrics)
    selected = []
    for name in p["probes"]:
        if name not in selected:
            selected.append(name)
    return dict((name, functions[name]) for name in selected)


def main():
    argument_spec = dict(
        probes=dict(type="list", elements="str", choices=list(PROBES), default=list(PROBES)),
        health_path=dict(type="str", default="/health"),
        pulse_path=dict(type="str", default="/pulse/status"),
        min_peers=dict(type="int", default=1),
        max_usage_pct=dict(type="float", default=80),
        metrics_path=dict(type="str", default="/metrics"),
        required_metrics=dict(type="list", elements="str", default=[]),
    )
    argument_spec.update(HTTP_ARGUMENT_SPEC)
    argument_spec.update(POSTGRES_ARGUMENT_SPEC)
    argument_spec.update(REDIS_ARGUMENT_SPEC)
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["probes"]:
        module.fail_json(msg="probes is empty: name at least one of %s" % ", ".join(PROBES))
    # Each probe bounds its own waits; this is only a guard against one that would not.
    waits = [p["timeout"] or 5.0, p["connect_timeout"] or 5.0, (p["redis_connect_timeout"] or 2.0) + (p["redis_socket_timeout"] or 2.0)]
    results = d.run_probes(probe_functions(module), deadline=4 * max(waits) + 5)
    verdicts = [dict(probe=name, module=MODULES[name], healthy=r["healthy"], reason=r["reason"]) for name, r in results.items()]
    result = probe_result(all(v["healthy"] for v in verdicts), d.summary_reason(results), verdicts=verdicts)
    result.update(results)
    exit_probe(module, result)


if __name__ == "__main__":
    main()
