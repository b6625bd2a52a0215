#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_cluster_node
short_description: Rejoin a Redis Cluster node as a replica, or forget dead nodes on every node
version_added: 0.1.0
description:
  - O(state=replica) - makes each of O(nodes) a replica (C(CLUSTER REPLICATE)) of O(master), or of the
    slot-serving master with the fewest healthy replicas, so the cluster returns to full redundancy after a former
    master comes back empty. Without O(nodes), acts on the topology's rejoin candidates (reachable masters without
    slots while some master lacks a healthy replica). Waits until the replica's link is up and every reachable node
    lists it as a replica of that master. A node that serves slots or holds keys is refused. A node already a
    replica (of O(master) when given) is left alone.
  - For a standalone deployment, C(REPLICAOF) the current master (the reachable master that has replicas) on an old
    master that came back as a second master - only when it is empty, as in a cluster (C(REPLICAOF) discards its
    data, which may include writes taken after the failover); one that holds keys is refused and reported.
  - O(state=forgotten) - C(CLUSTER FORGET) of each of O(nodes) (default - the topology's forget candidates,
    unreachable nodes flagged C(fail) without slots and without a live replica) on every reachable node, within
    Redis's 60 s forget ban. Refuses a reachable node, one not flagged C(fail) by a majority of its peers, or one
    that still owns slots, unless O(force=true) (slots always refuse); without O(force) the node is checked again
    (C(PING), fresh views of every peer) right before the first C(FORGET) and left alone if it is not down.
  - Nothing to do reports C(changed=false).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.redis_cluster
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reads the topology and returns the plan; sends nothing.
  diff_mode:
    support: none
options:
  state:
    description: V(replica) to rejoin as replica, V(forgotten) to remove dead nodes from every node's table.
    type: str
    choices: [replica, forgotten]
    default: replica
  nodes:
    description: Nodes to act on (C(host:port) or node id); the topology's candidates when empty.
    type: list
    elements: str
    default: []
  master:
    description: For O(state=replica), the master to follow (C(host:port) or id).
    type: str
  force:
    description: For O(state=forgotten), also forget reachable nodes or nodes not (yet) flagged C(fail).
    type: bool
    default: false
  wait_link:
    description: For O(state=replica), also wait until C(master_link_status:up) (the full sync is done).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for each rejoined node to be linked and agreed on.
    type: float
    default: 30
seealso:
  - module: p3.recovery.redis_cluster_topology
  - module: p3.recovery.redis_cluster_failover
"""

EXAMPLES = r"""
- name: A restarted former master rejoins as a replica
  p3.recovery.redis_cluster_node:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"

- name: Attach a named node to a named master
  p3.recovery.redis_cluster_node:
    nodes: [10.0.0.7:6379]
    master: 10.0.0.2:6379

- name: Forget the dead nodes everywhere
  p3.recovery.redis_cluster_node:
    state: forgotten
"""

RETURN = r"""
rejoined:
  description: Nodes made replicas (C(node), C(master), C(seconds)); the plan in check mode.
  returned: always
  type: list
  elements: dict
forgotten:
  description: Addresses forgotten on every reachable node (the plan in check mode).
  returned: always
  type: list
  elements: str
timeline:
  description: What was sent and when (C(ts), C(action), C(target), C(detail)).
  returned: always
  type: list
  elements: dict
reason:
  description: One line.
  returned: always
  type: str
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import (
    REDIS_CLUSTER_ARGUMENT_SPEC, cluster_param_error, plan_forget, plan_rejoin, read_topology, run_forget, run_rejoin)


def main():
    argument_spec = redis_argument_spec(**REDIS_CLUSTER_ARGUMENT_SPEC)
    argument_spec.update(
        state=dict(type="str", default="replica", choices=["replica", "forgotten"]),
        nodes=dict(type="list", elements="str", default=[]),
        master=dict(type="str"),
        force=dict(type="bool", default=False),
        wait_link=dict(type="bool", default=True),
        wait_timeout=dict(type="float", default=30.0),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["wait_timeout"] <= 0:
        module.fail_json(msg="wait_timeout must be > 0")
    if cluster_param_error(p):
        module.fail_json(msg=cluster_param_error(p))
    target = RedisTarget(module)
    out = dict(rejoined=[], forgotten=[], timeline=[])
    try:
        topo = read_topology(target.settings, unanswered_ms=p["unanswered_ms"], confirm_timeout=p["confirm_timeout"])
        if topo.get("cluster_enabled") is None:
            raise P3Error(topo["reason"])
        if p["state"] == "forgotten":
            if not topo["cluster_enabled"]:
                raise P3Error("CLUSTER FORGET needs a Redis Cluster")
            targets = plan_forget(topo, p["nodes"], force=p["force"])
            out["forgotten"] = [t["address"] for t in targets]
            if not targets:
                module.exit_json(changed=False, reason="no node to forget", **out)
            if module.check_mode:
                module.exit_json(changed=True, reason="would forget %s" % ", ".join(out["forgotten"]), **out)
            out["timeline"] = run_forget(target.settings, topo, targets, recheck=not p["force"])
            module.exit_json(changed=True, reason="forgot %s on every reachable node" % ", ".join(out["forgotten"]),
                             **out)
        steps = plan_rejoin(topo, p["nodes"], master=p["master"])
        out["rejoined"] = [dict(node=n["address"], master=m["address"]) for n, m in steps]
        if not steps:
            module.exit_json(changed=False, reason="no node to rejoin", **out)
        if module.check_mode:
            module.exit_json(changed=True, reason="would make %s" % "; ".join(
                "%s a replica of %s" % (s["node"], s["master"]) for s in out["rejoined"]), **out)
        out["rejoined"], out["timeline"] = run_rejoin(target.settings, topo, steps, wait_timeout=p["wait_timeout"],
                                                      wait_link=p["wait_link"])
    except P3Error as e:
        fail_clean(module, e, **dict((k, v) for k, v in out.items() if k not in e.details))
    module.exit_json(changed=True, reason="; ".join("%s is a linked replica of %s (%ss)" % (
        r["node"], r["master"], r["seconds"]) for r in out["rejoined"]), **out)


if __name__ == "__main__":
    main()
