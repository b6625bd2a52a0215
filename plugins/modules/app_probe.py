#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: app_probe
short_description: Probe the P3 application's health endpoint and pulse status
version_added: 0.1.0
description:
  - Runs the runbook's quick diagnostics 1 and 4 against the application, read-only.
  - C(GET <url><health_path>) is healthy when it answers 2xx and its body reports no failing dependency
    (the C(failing) list and C(checks) of the lab app, or component C(status) fields such as
    C(database.status=unhealthy) on P3's C(/api/system/health)). On failure the reason names the failing dependency
    and its error.
  - C(GET <url><pulse_path>) is healthy when it answers 2xx with JSON, the relay is not down, and at least
    O(min_peers) mesh peers (C(status.subscribers)) are connected.
  - The result is healthy when both are.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  health_path:
    description:
      - Path of the health endpoint. On P3 as coded, C(/health) checks nothing; C(/api/system/health) checks the
        database.
    type: str
    default: /health
  pulse_path:
    description:
      - Path of the pulse status endpoint (C(/api/pulse/status) on P3 as coded).
      - Set to V(null) or an empty string to skip the pulse check; RV(pulse) then says C(skipped=true) and does not
        make the result unhealthy.
    type: str
    default: /pulse/status
  min_peers:
    description:
      - Fewest connected mesh peers for the pulse to count as healthy. V(0) accepts an answer without a peer count.
    type: int
    default: 1
seealso:
  - module: p3.recovery.metrics_probe
"""

EXAMPLES = r"""
- name: Probe health and pulse of the app
  p3.recovery.app_probe:
    url: http://127.0.0.1:5000
  register: app

- name: P3 as coded - database-checking health path, real pulse path, production headers
  p3.recovery.app_probe:
    url: "{{ p3_app_url }}"
    health_path: /api/system/health
    pulse_path: /api/pulse/status
    headers:
      X-Forwarded-Proto: https
    min_peers: 0

- name: Health only, fail the play when unhealthy
  p3.recovery.app_probe:
    health_path: /health
    pulse_path: ""
    fail_on_unhealthy: true
"""

RETURN = r"""
healthy:
  description: True when the health endpoint and the pulse (unless skipped) are healthy.
  returned: always
  type: bool
  sample: false
reason:
  description: One line saying why; names the failing dependency and its error.
  returned: always
  type: str
  sample: "GET http://127.0.0.1:17030/health -> 503: redis: 127.0.0.1:17001: connection refused"
health:
  description: Verdict of the health endpoint.
  returned: always
  type: dict
  contains:
    healthy:
      description: 2xx and no failing component reported.
      type: bool
    status:
      description: HTTP status code, null when there was no HTTP answer.
      type: int
      sample: 503
    latency_ms:
      description: Time to the full answer, in milliseconds.
      type: float
    body:
      description: The answer, parsed JSON when it is JSON, else its text (truncated).
      type: raw
      sample: {"status": "unhealthy", "failing": ["redis"], "checks": {"database": "ok", "redis": "..."}}
    failing:
      description: Names of the components the body reports as failing.
      type: list
      elements: str
      sample: [redis]
    url:
      description: The URL requested, without credentials.
      type: str
    reason:
      description: One line.
      type: str
pulse:
  description: Verdict of the pulse status endpoint.
  returned: always
  type: dict
  contains:
    healthy:
      description: 2xx JSON, relay not down, peers >= O(min_peers); true when skipped.
      type: bool
    skipped:
      description: True when O(pulse_path) is empty.
      type: bool
    status:
      description: HTTP status code, null when skipped or without an HTTP answer.
      type: int
    latency_ms:
      description: Time to the full answer, in milliseconds.
      type: float
    peers:
      description: Connected mesh peers (C(status.subscribers)), null when not reported.
      type: int
      sample: 12
    relay:
      description: Relay state as reported (C(up) or C(down)), derived from C(active) when not reported.
      type: str
      sample: up
    active:
      description: The C(status.active) flag, null when not reported.
      type: bool
    url:
      description: The URL requested, without credentials.
      type: str
    reason:
      description: One line.
      type: str
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import app_probe
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HttpTarget, http_argument_spec


def main():
    argument_spec = http_argument_spec(
        health_path=dict(type="str", default="/health"),
        pulse_path=dict(type="str", default="/pulse/status"),
        min_peers=dict(type="int", default=1),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    target = HttpTarget(module)
    exit_probe(module, app_probe(target, module.params["health_path"], module.params["pulse_path"],
                                 module.params["min_peers"]))


if __name__ == "__main__":
    main()
