#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: session_auth_probe
short_description: The app's authentication failure rate (401s over all requests) from its Prometheus metrics
version_added: 0.1.0
description:
  - The runbook's alert C(session_auth_failure_rate) (C(error_rate > 5%)), read from the app's metrics.
  - Failures are the sum of O(failures_metric) (or, when it is empty, the samples of O(requests_metric) whose
    O(status_label) is C(401)); requests are the sum of O(requests_metric).
  - With O(window_seconds=0) the rate is over the counters' whole life (since the app started). With a window the
    metrics are scraped twice, O(window_seconds) apart, and the rate is over the increase in between (null when
    no request came in, which is healthy).
  - Healthy when the rate is at most O(max_failure_pct).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  metrics_path:
    description: Path of the metrics.
    type: str
    default: /metrics
  failures_metric:
    description: Counter of 401 answers. Empty = count O(requests_metric) samples with O(status_label) C(401).
    type: str
    default: p3_auth_failures_total
  requests_metric:
    description: Counter of all requests (labelled by status).
    type: str
    default: api_requests_total
  status_label:
    description: Label of O(requests_metric) holding the HTTP status.
    type: str
    default: status
  window_seconds:
    description: Seconds between two scrapes; V(0) uses the counters' totals.
    type: float
    default: 0
  max_failure_pct:
    description: Highest failure rate (percent) that counts as healthy.
    type: float
    default: 5
"""

EXAMPLES = r"""
- name: Auth failure rate over the next 10 seconds
  p3.recovery.session_auth_probe:
    url: "{{ p3_app_url }}"
    window_seconds: 10
  register: auth
"""

RETURN = r"""
healthy:
  description: Rate <= O(max_failure_pct) (or no request in the window).
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "401s 20 of 95 requests (21.1%) > 5%"
failures:
  description: 401 answers counted (over the window, or in total).
  returned: always
  type: float
requests:
  description: Requests counted (over the window, or in total).
  returned: always
  type: float
failure_pct:
  description: failures / requests x 100, null without requests.
  returned: always
  type: float
window_seconds:
  description: The window used (0 = totals).
  returned: always
  type: float
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import auth_rate_probe
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HttpTarget, http_argument_spec


def main():
    argument_spec = http_argument_spec(
        metrics_path=dict(type="str", default="/metrics"),
        failures_metric=dict(type="str", default="p3_auth_failures_total"),
        requests_metric=dict(type="str", default="api_requests_total"),
        status_label=dict(type="str", default="status"),
        window_seconds=dict(type="float", default=0),
        max_failure_pct=dict(type="float", default=5),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not 0 <= p["window_seconds"] <= 300:
        module.fail_json(msg="window_seconds must be between 0 and 300, got %s" % p["window_seconds"])
    if not p["requests_metric"]:
        module.fail_json(msg="requests_metric must not be empty")
    target = HttpTarget(module)
    exit_probe(module, auth_rate_probe(target, p["metrics_path"], p["failures_metric"], p["requests_metric"],
                                       p["status_label"], p["window_seconds"], p["max_failure_pct"]))


if __name__ == "__main__":
    main()
