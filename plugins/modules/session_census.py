#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: session_census
short_description: Count valid and corrupt sessions on every Redis master with SCAN
version_added: 0.1.0
description:
  - The runbook's C(redis-cli KEYS "session:*" | head -10), done safely and completely, read-only.
  - Walks the keyspace of every master (every master serving slots in a cluster) with C(SCAN MATCH O(pattern)
    COUNT O(scan_count)), reads each page with one pipeline of C(GET) and C(PTTL), and classifies each value
    with the rule of the doc fragment below.
  - Healthy when every master could be read and at most O(max_corrupt) sessions are corrupt.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.sessions
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  max_corrupt:
    description: Most corrupt sessions that still count as healthy.
    type: int
    default: 0
  sample_size:
    description: How many corrupt keys (with their reason) to list in RV(sample).
    type: int
    default: 10
seealso:
  - module: p3.recovery.session_purge
"""

EXAMPLES = r"""
- name: Census of the session keyspace
  p3.recovery.session_census:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
  register: sessions

- name: Show the corrupt ones by reason
  ansible.builtin.debug:
    var: sessions.by_reason
"""

RETURN = r"""
healthy:
  description: Every master read and RV(corrupt) <= O(max_corrupt).
  returned: always
  type: bool
reason:
  description: One line with the counts.
  returned: always
  type: str
  sample: "20 corrupt of 70 sessions on 3 masters (not-json 5, not-utf8 5, missing-fields 5, no-ttl 5) > 0"
pattern:
  description: The pattern scanned.
  returned: always
  type: str
cluster:
  description: Whether the target is a Redis Cluster.
  returned: always
  type: bool
keys:
  description: Keys matching the pattern (valid + corrupt).
  returned: always
  type: int
valid:
  description: Valid sessions.
  returned: always
  type: int
corrupt:
  description: Corrupt sessions.
  returned: always
  type: int
by_reason:
  description: Corrupt sessions per reason (C(wrong-type), C(not-utf8), C(not-json), C(not-object), C(missing-fields),
    C(bad-expiry), C(expired), C(no-ttl)); reasons with no key are left out.
  returned: always
  type: dict
  sample: {"not-json": 5, "no-ttl": 5}
no_ttl:
  description: Keys without a TTL (whatever their value).
  returned: always
  type: int
bytes:
  description: Sizes of the string values read - C(total), C(max), C(avg) (bytes).
  returned: always
  type: dict
nodes:
  description: Per master - C(address), C(keys), C(valid), C(corrupt), C(error).
  returned: always
  type: list
  elements: dict
unreadable:
  description: Masters that own slots but could not be read (the counts cover the others).
  returned: always
  type: list
  elements: str
errors:
  description: One line per master that failed mid-scan.
  returned: always
  type: list
  elements: str
sample:
  description: Up to O(sample_size) corrupt keys - C(key), C(reason), C(node), C(pttl).
  returned: always
  type: list
  elements: dict
pages:
  description: SCAN calls made.
  returned: always
  type: int
seconds:
  description: Time the scan took.
  returned: always
  type: float
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import (
    PROBE_ARGUMENT_SPEC,
    P3Error,
    exit_probe,
    fail_clean,
)
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import census_verdict
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.sessions import SESSION_ARGUMENT_SPEC, census


def main():
    argument_spec = redis_argument_spec(
        max_corrupt=dict(type="int", default=0),
        sample_size=dict(type="int", default=10),
    )
    argument_spec.update(SESSION_ARGUMENT_SPEC)
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["max_corrupt"] < 0 or module.params["sample_size"] < 0:
        module.fail_json(msg="max_corrupt and sample_size must be >= 0")
    target = RedisTarget(module)
    try:
        result = census(target.settings, module.params, sample_size=module.params["sample_size"])
    except P3Error as e:
        fail_clean(module, e)
    exit_probe(module, census_verdict(result, module.params["max_corrupt"]))


if __name__ == "__main__":
    main()
