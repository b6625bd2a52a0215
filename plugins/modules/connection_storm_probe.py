#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: connection_storm_probe
short_description: Count established connections on the app port of this host (connection-storm detection)
version_added: 0.1.0
description:
  - The runbook's C(netstat -an | grep :5000 | wc -l), done right and read-only - runs on the app host.
  - Counts the TCP connections whose local port is O(port) (server side; the listening socket and the host's own
    outgoing connections to other ports do not count) in the O(states), with psutil, and lists the busiest remote
    addresses.
  - Healthy when the count is at most O(max_connections) (and, with O(require_listening), something listens on
    O(port)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - psutil (Python library, on the app host)
options:
  port:
    description: The app's port (P3 listens on C(PORT), default 5000).
    type: int
    default: 5000
  max_connections:
    description: Most connections in O(states) that are not a storm.
    type: int
    default: 1000
  states:
    description: TCP states to count (psutil names).
    type: list
    elements: str
    default: [ESTABLISHED]
  require_listening:
    description: Report unhealthy when nothing listens on O(port).
    type: bool
    default: false
  top:
    description: How many of the busiest remote addresses to list.
    type: int
    default: 5
notes:
  - Listing other processes' sockets needs root on some systems (C(become)).
"""

EXAMPLES = r"""
- name: Connection storm on the app port?
  p3.recovery.connection_storm_probe:
    port: 5000
    max_connections: 2000
  register: storm
"""

RETURN = r"""
healthy:
  description: Connections <= O(max_connections) (and listening, when required).
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "port 5000: 14 ESTABLISHED connections <= 1000"
port:
  description: The port.
  returned: always
  type: int
listening:
  description: Something listens on the port.
  returned: always
  type: bool
connections:
  description: Connections in O(states) on the port.
  returned: always
  type: int
by_state:
  description: Connections on the port per TCP state.
  returned: always
  type: dict
top_remotes:
  description: The busiest remote addresses - C(address), C(connections).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe, fail_clean, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.mesh import HAS_PSUTIL, PSUTIL_IMP_ERR, count_connections


def main():
    argument_spec = dict(
        port=dict(type="int", default=5000),
        max_connections=dict(type="int", default=1000),
        states=dict(type="list", elements="str", default=["ESTABLISHED"]),
        require_listening=dict(type="bool", default=False),
        top=dict(type="int", default=5),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not HAS_PSUTIL:
        module.fail_json(msg=missing_required_lib("psutil"), exception=PSUTIL_IMP_ERR)
    if not 0 < p["port"] < 65536:
        module.fail_json(msg="port must be between 1 and 65535, got %d" % p["port"])
    if p["max_connections"] < 0 or p["top"] < 0:
        module.fail_json(msg="max_connections and top must be >= 0")
    states = [s.upper() for s in p["states"]]
    try:
        result = count_connections(p["port"], states=states, top=p["top"])
    except P3Error as e:
        fail_clean(module, e)
    shown = "/".join(states)
    problems = []
    if result["connections"] > p["max_connections"]:
        busiest = ", ".join("%s %d" % (r["address"], r["connections"]) for r in result["top_remotes"][:3])
        problems.append("port %d: %d %s connections > %d (storm; busiest %s)" % (
            p["port"], result["connections"], shown, p["max_connections"], busiest))
    if p["require_listening"] and not result["listening"]:
        problems.append("nothing listens on port %d" % p["port"])
    reason = "; ".join(problems) or "port %d: %d %s connections <= %d" % (
        p["port"], result["connections"], shown, p["max_connections"])
    exit_probe(module, probe_result(not problems, reason, **result))


if __name__ == "__main__":
    main()
