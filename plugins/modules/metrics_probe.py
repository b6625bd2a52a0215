#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: metrics_probe
short_description: Scrape and parse the application's Prometheus metrics
version_added: 0.1.0
description:
  - Runs the runbook's quick diagnostic 5 (C(curl /metrics)), read-only, and parses the answer with the
    C(prometheus_client) text parser.
  - Healthy when the endpoint answers 2xx, the text parses into at least one metric family, and every name in
    O(required) is present.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - prometheus-client (Python library)
  - jmespath (Python library, for O(select) only)
options:
  metrics_path:
    description:
      - Path of the metrics endpoint.
    type: str
    default: /metrics
  select:
    description:
      - A JMESPath expression applied to RV(metrics); the result is returned as RV(selected).
      - Family names are the parser's, so counters have no C(_total) suffix (C(api_requests), whose samples are
        named C(api_requests_total)).
    type: str
  required:
    description:
      - Metric names that must be present. A name matches a family, a sample name, or a family once a
        Prometheus suffix (C(_total), C(_count), C(_sum), C(_bucket), C(_created), C(_info)) is removed, so
        C(api_requests_total) and C(api_requests) both match the counter.
    type: list
    elements: str
    default: []
seealso:
  - module: p3.recovery.app_probe
"""

EXAMPLES = r"""
- name: Scrape the metrics
  p3.recovery.metrics_probe:
    url: http://127.0.0.1:5000
  register: m

- name: Require the runbook's metrics and pick the failed anchor jobs gauge
  p3.recovery.metrics_probe:
    url: "{{ p3_app_url }}"
    required:
      - api_requests_total
      - p3_mesh_peers
      - p3_anchor_queue_depth
    select: "p3_anchor_queue_depth.samples[?labels.state=='failed'].value | [0]"
  register: m

- name: Show it
  ansible.builtin.debug:
    msg: "failed anchor jobs: {{ m.selected }}, mesh peers: {{ m.metrics.p3_mesh_peers.samples[0].value }}"
"""

RETURN = r"""
healthy:
  description: Scraped (2xx), parsed, and every O(required) name present.
  returned: always
  type: bool
  sample: true
reason:
  description: One line.
  returned: always
  type: str
  sample: "GET http://127.0.0.1:17030/metrics -> 200: 12 families, 40 samples; missing: p3_mesh_peers"
url:
  description: The URL scraped, without credentials.
  returned: always
  type: str
status:
  description: HTTP status code; null when there was no HTTP answer.
  returned: always
  type: int
  sample: 200
latency_ms:
  description: Time to the full answer, in milliseconds.
  returned: always
  type: float
metrics:
  description:
    - The parsed metrics, keyed by family name. Each family has C(type), C(help), C(unit) and C(samples), a list of
      C({name, labels, value}) (plus C(timestamp) when the exposition has one). Whole-number values are
      integers; NaN and infinities are the strings C(NaN), C(+Inf), C(-Inf).
    - Empty when the scrape or the parse failed.
  returned: always
  type: dict
  sample: {"p3_mesh_peers": {"type": "gauge", "help": "Mesh peers connected", "unit": "",
           "samples": [{"name": "p3_mesh_peers", "labels": {}, "value": 12}]}}
summary:
  description: Counts of the parsed metrics.
  returned: always
  type: dict
  contains:
    families:
      description: Metric families.
      type: int
    samples:
      description: Samples over all families.
      type: int
    by_type:
      description: Families per type (C(counter), C(gauge), C(histogram), C(summary), C(unknown), ...).
      type: dict
  sample: {"families": 12, "samples": 40, "by_type": {"counter": 3, "gauge": 6}}
missing:
  description: The O(required) names not found.
  returned: always
  type: list
  elements: str
selected:
  description: Result of O(select) on RV(metrics); null when O(select) is not set or nothing matched.
  returned: always
  type: raw
  sample: 3
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import SelectError, metrics_probe
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HttpTarget, http_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils import metrics as m


def main():
    argument_spec = http_argument_spec(
        metrics_path=dict(type="str", default="/metrics"),
        select=dict(type="str"),
        required=dict(type="list", elements="str", default=[]),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    if not m.HAS_PROMETHEUS:
        module.fail_json(msg=missing_required_lib("prometheus-client"), exception=m.PROMETHEUS_IMP_ERR)
    expression = module.params["select"]
    if expression:
        if not m.HAS_JMESPATH:
            module.fail_json(msg=missing_required_lib("jmespath"), exception=m.JMESPATH_IMP_ERR)
        try:
            m.compile_select(expression)
        except P3Error as e:
            module.fail_json(msg=e.msg)
    target = HttpTarget(module)
    try:
        result = metrics_probe(target, module.params["metrics_path"], module.params["required"], expression)
    except SelectError as e:
        module.fail_json(msg=e.msg, **e.details)
    exit_probe(module, result)


if __name__ == "__main__":
    main()
