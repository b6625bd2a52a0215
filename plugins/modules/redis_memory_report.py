#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_memory_report
short_description: Where Redis memory goes - the biggest keys and key prefixes of every master (read-only)
version_added: 0.1.0
description:
  - The response to memory pressure (alert C(redis_memory_high)) - a report, never a failover - moving a master's
    role does not free a byte.
  - Reads C(INFO memory) and C(DBSIZE) of every master (every master serving slots in a cluster), then walks the
    keyspace with C(SCAN MATCH O(pattern) COUNT O(scan_count)) and reads C(MEMORY USAGE) of each page's keys in one
    pipeline, up to O(per_master_limit) keys per master, and returns the O(top) biggest keys and key prefixes.
  - Key names are shown as their prefix plus a hash of the rest (they can carry session ids) unless O(show_keys).
  - Healthy when every master was read and none uses more than O(max_used_pct) of its C(maxmemory).
  - O(redis_deadline) bounds the whole walk.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  pattern:
    description: SCAN MATCH pattern of the keys to measure.
    type: str
    default: "*"
  per_master_limit:
    description: Most keys measured per master (a sample of a bigger keyspace; RV(complete) says whether all were).
    type: int
    default: 10000
  scan_count:
    description: SCAN COUNT hint (keys per page).
    type: int
    default: 500
  top:
    description: How many keys and prefixes to return.
    type: int
    default: 10
  separator:
    description: What separates the parts of a key name.
    type: str
    default: ":"
  prefix_depth:
    description: How many leading parts make a prefix.
    type: int
    default: 1
  show_keys:
    description: Return whole key names (else prefix and a hash of the rest).
    type: bool
    default: false
  max_used_pct:
    description: Percentage of C(maxmemory) above which a master counts as unhealthy.
    type: float
    default: 90
"""

EXAMPLES = r"""
- name: Where does Redis memory go?
  p3.recovery.redis_memory_report:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    top: 5
  register: memory
"""

RETURN = r"""
healthy:
  description: Every master read and none above O(max_used_pct) of its maxmemory.
  returned: always
  type: bool
reason:
  description: One line - the biggest prefix and its share of the sampled memory, and any problem.
  returned: always
  type: str
worst_used_pct:
  description: The highest used_memory / maxmemory of a master in percent (null when no master has a maxmemory).
  returned: always
  type: float
nodes:
  description: Per master - address, used_memory, maxmemory, used_pct, keys (DBSIZE), sampled, sampled_bytes,
    complete, error.
  returned: always
  type: list
  elements: dict
top_keys:
  description: The biggest keys - key, bytes, node.
  returned: always
  type: list
  elements: dict
prefixes:
  description: The biggest prefixes - prefix, keys, bytes, max_bytes.
  returned: always
  type: list
  elements: dict
sampled:
  description: Keys measured.
  returned: always
  type: int
sampled_bytes:
  description: Their MEMORY USAGE total.
  returned: always
  type: int
complete:
  description: Every key of every master was measured.
  returned: always
  type: bool
unreadable:
  description: Masters that could not be read.
  returned: always
  type: list
  elements: str
errors:
  description: One line per master that failed.
  returned: always
  type: list
  elements: str
seconds:
  description: Time the walk took.
  returned: always
  type: float
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    PROBE_ARGUMENT_SPEC,
    P3Error,
    P3Module,
    exit_probe,
    fail_clean,
)
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_memory import memory_report


def main():
    argument_spec = redis_argument_spec(
        pattern=dict(type="str", default="*"),
        per_master_limit=dict(type="int", default=10000),
        scan_count=dict(type="int", default=500),
        top=dict(type="int", default=10),
        separator=dict(type="str", default=":"),
        prefix_depth=dict(type="int", default=1),
        show_keys=dict(type="bool", default=False),
        max_used_pct=dict(type="float", default=90.0),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    for name, low in (("per_master_limit", 1), ("scan_count", 1), ("top", 1), ("prefix_depth", 1)):
        if p[name] < low:
            module.fail_json(msg="%s must be at least %d, got %d" % (name, low, p[name]))
    if not p["separator"] or not p["pattern"]:
        module.fail_json(msg="separator and pattern must not be empty")
    target = RedisTarget(module)
    try:
        result = memory_report(target.settings, p)
    except P3Error as e:
        fail_clean(module, e)
    exit_probe(module, result)


if __name__ == "__main__":
    main()
