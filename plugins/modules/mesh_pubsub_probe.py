#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: mesh_pubsub_probe
short_description: Pub/sub channels, subscribers and pattern subscriptions on every Redis node
version_added: 0.1.0
description:
  - The runbook's C(redis-cli PUBSUB CHANNELS "mesh:*"), asked of every node. In a Redis Cluster pub/sub state is
    per node - a subscriber is only visible on the node it is connected to - so one node's answer says nothing.
  - On every reachable node (masters and replicas, in parallel) runs C(PUBSUB CHANNELS O(pattern)),
    C(PUBSUB NUMSUB) for the channels found plus O(channels), and C(PUBSUB NUMPAT), and sums them.
  - Healthy when every node answered, every channel of O(channels) has at least O(min_channel_subscribers)
    subscribers over the cluster, and the nodes hold at least O(min_patterns) pattern subscriptions (a relay
    that C(PSUBSCRIBE)s C(mesh:*) holds one; C(NUMPAT) counts every pattern, not only O(pattern)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  pattern:
    description: Channel pattern for C(PUBSUB CHANNELS).
    type: str
    default: "mesh:*"
  channels:
    description: Channels that must have subscribers (the relay's control channel).
    type: list
    elements: str
    default: ["mesh:control"]
  min_channel_subscribers:
    description: Fewest subscribers each channel of O(channels) needs, summed over the nodes.
    type: int
    default: 1
  min_patterns:
    description: Fewest pattern subscriptions (C(PUBSUB NUMPAT) summed over the nodes). V(0) disables the check.
    type: int
    default: 1
seealso:
  - module: p3.recovery.mesh_publish
"""

EXAMPLES = r"""
- name: Where are the mesh subscribers?
  p3.recovery.mesh_pubsub_probe:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
  register: pubsub
"""

RETURN = r"""
healthy:
  description: See the description.
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "mesh:control 1 subscriber; pattern subscriptions 0 < 1 (relay not PSUBSCRIBEd)"
pattern:
  description: The pattern asked.
  returned: always
  type: str
channels:
  description: Channel -> subscribers summed over the nodes (channels found plus O(channels)).
  returned: always
  type: dict
  sample: {"mesh:control": 1}
numpat:
  description: Pattern subscriptions summed over the nodes.
  returned: always
  type: int
nodes_with_patterns:
  description: Nodes holding at least one pattern subscription.
  returned: always
  type: list
  elements: str
nodes:
  description: Per node - C(address), C(role), C(reachable), C(channels) (name -> subscribers), C(numpat), C(error).
  returned: always
  type: list
  elements: dict
unreachable_nodes:
  description:
    - Nodes that could not be asked.
    - Not named C(unreachable), which Ansible reads as "the host is unreachable".
    - They make the verdict unhealthy (their pub/sub state is unknown), except those in RV(failed_nodes).
  returned: always
  type: list
  elements: str
failed_nodes:
  description:
    - Unreachable nodes that their peers flag C(fail) - the cluster has given them up, so no client can be
      subscribed there; they do not make the verdict unhealthy (the Redis scenario deals with them).
  returned: always
  type: list
  elements: str
cluster:
  description: Whether the target is a Redis Cluster.
  returned: always
  type: bool
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import (
    PROBE_ARGUMENT_SPEC,
    P3Error,
    exit_probe,
    fail_clean,
    probe_result,
)
from ansible_collections.p3.recovery.plugins.module_utils.mesh import pubsub_census
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec


def main():
    argument_spec = redis_argument_spec(
        pattern=dict(type="str", default="mesh:*"),
        channels=dict(type="list", elements="str", default=["mesh:control"]),
        min_channel_subscribers=dict(type="int", default=1),
        min_patterns=dict(type="int", default=1),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["pattern"]:
        module.fail_json(msg="pattern must not be empty")
    if p["min_channel_subscribers"] < 0 or p["min_patterns"] < 0:
        module.fail_json(msg="min_channel_subscribers and min_patterns must be >= 0")
    target = RedisTarget(module)
    try:
        result = pubsub_census(target.settings, p["pattern"], p["channels"])
    except P3Error as e:
        fail_clean(module, e)
    problems, seen = [], []
    for name in p["channels"]:
        n = result["channels"].get(name, 0)
        seen.append("%s %d subscriber%s" % (name, n, "" if n == 1 else "s"))
        if n < p["min_channel_subscribers"]:
            problems.append("%s has %d subscribers < %d" % (name, n, p["min_channel_subscribers"]))
    if p["min_patterns"] and result["numpat"] < p["min_patterns"]:
        problems.append("pattern subscriptions %d < %d (relay not PSUBSCRIBEd)" % (result["numpat"], p["min_patterns"]))
    unknown = [a for a in result["unreachable_nodes"] if a not in result["failed_nodes"]]
    if unknown:
        problems.append("nodes not asked: %s" % ", ".join(unknown))
    others = len([c for c in result["channels"] if c not in p["channels"]])
    summary = "%s; %d pattern subscription%s on %s; %d other %s channel%s over %d nodes" % (
        ", ".join(seen) or "no channel", result["numpat"], "" if result["numpat"] == 1 else "s",
        ",".join(result["nodes_with_patterns"]) or "no node", others, p["pattern"], "" if others == 1 else "s",
        len(result["nodes"]))
    reason = "; ".join(problems) + " (" + summary + ")" if problems else summary
    exit_probe(module, probe_result(not problems, reason, **result))


if __name__ == "__main__":
    main()
