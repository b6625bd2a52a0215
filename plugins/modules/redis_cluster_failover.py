#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_cluster_failover
short_description: Promote the best replica of a failed (or named) Redis Cluster master and wait until all nodes agree
version_added: 0.1.0
description:
  - The runbook's "If master failed, promote replica" (C(CLUSTER FAILOVER)), done the way it works.
  - Reads the merged topology (as M(p3.recovery.redis_cluster_topology)); the masters to fail over are O(master),
    or else every master that serves slots and is down by the cluster's own definition (see
    M(p3.recovery.redis_cluster_topology) - a majority of its peers flag it C(fail), or every peer has waited for
    its pong longer than C(cluster-node-timeout)). A busy master (no answer, not down) is never forced over; naming
    it in O(master) fails with the reason.
  - Right before C(CLUSTER FAILOVER FORCE) or C(TAKEOVER) the master is checked again (C(PING), fresh
    C(CLUSTER NODES) of every peer) - one that answers or is no longer down is left alone (RV(skipped)), and a
    replica that is already the master of the slots (Redis's own election won) is reported with C(by=redis), not
    claimed; C(changed) counts only the commands this run sent.
  - Chooses the best replica (reachable, unflagged, link up first, then the highest replication offset) unless
    O(replica) names one, and sends it C(CLUSTER FAILOVER) when the master is reachable (coordinated, no write
    lost), C(CLUSTER FAILOVER FORCE) when it is down and a majority of the slot-serving masters can vote, or
    C(CLUSTER FAILOVER TAKEOVER) only when there is no such majority and O(allow_takeover=true).
  - C(CLUSTER FAILOVER) answers OK at once and may still fail; the module polls every 50 ms until the promoted
    node and every other reachable node list it as the master of the slots, at most O(wait_timeout) seconds, and
    fails with the nodes that still disagree otherwise. Several failed masters are handled one after the other.
  - A master that could vote when the failover was planned and stops answering during the election (a second
    death) is named in the failure, with the votes left against the majority and the slots still unserved - as soon
    as the manual-failover window (5 s) has passed without a win, unless O(allow_takeover) falls back to
    C(TAKEOVER). The no-majority refusal names every master that cannot vote.
  - For a standalone deployment (nodes given as a list, no cluster) whose master is unreachable, promotes the
    replica with the highest offset with C(REPLICAOF NO ONE) and points the other replicas at it.
  - Nothing to do (no failed master, or O(master) is already a replica) reports C(changed=false).
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
  master:
    description:
      - Fail over this master (C(host:port) or node id), for example for planned maintenance while it is still up.
      - If not set, every master that serves slots and is down by the cluster's own definition.
    type: str
  replica:
    description: Promote this replica (C(host:port) or node id) of O(master) instead of the best one.
    type: str
  allow_takeover:
    description:
      - Allow C(CLUSTER FAILOVER TAKEOVER) (no election, the replica bumps the epoch on its own) when fewer than a
        majority of the slot-serving masters are reachable, and as a fallback when a C(FORCE) election has not won
        within 5.5 s (Redis ends a manual failover after 5 s; masters refuse to vote twice for one master's replicas
        within 2 x C(cluster-node-timeout)). Risky after a network partition (both sides may keep writing); off by
        default.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait for every reachable node to agree on the new roles, per failover.
    type: float
    default: 30
seealso:
  - module: p3.recovery.redis_cluster_topology
  - module: p3.recovery.redis_cluster_slots
"""

EXAMPLES = r"""
- name: Promote a replica of every dead master
  p3.recovery.redis_cluster_failover:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
  register: failover

- name: Planned failover of one master (coordinated, no write lost)
  p3.recovery.redis_cluster_failover:
    master: 10.0.0.1:6379

- name: See what would happen
  p3.recovery.redis_cluster_failover:
  check_mode: true
"""

RETURN = r"""
plan:
  description: One step per master to fail over (C(master), C(replica), C(mode) = default|force|takeover|replicaof,
    C(slots), C(offset), C(alternatives), C(why)); empty when there is nothing to do.
  returned: always
  type: list
  elements: dict
failovers:
  description:
    - The steps done, each with C(seconds) until every reachable node agreed (empty in check mode), and C(by) -
      V(p3.recovery) when this run's command promoted the replica, V(redis) when Redis had already promoted it.
  returned: always
  type: list
  elements: dict
skipped:
  description: Planned steps not taken because the re-check found the master answering or no longer down (C(why)).
  returned: success
  type: list
  elements: dict
timeline:
  description: What was sent and when (C(ts), C(action), C(target), C(detail)).
  returned: always
  type: list
  elements: dict
reason:
  description: One line saying what was (or would be) done.
  returned: always
  type: str
  sample: "promoted 127.0.0.1:17006 over 127.0.0.1:17001 (force) in 0.14 s"
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import (
    REDIS_CLUSTER_ARGUMENT_SPEC, cluster_param_error, plan_failover, read_topology, run_failover)


def describe(steps, done=None, skipped=None):
    if not steps:
        return "no failed master to fail over"
    if done is None:
        return "; ".join("would promote %s over %s (%s)" % (s["replica"], s["master"], s["mode"]) for s in steps)
    parts = []
    for s in done:
        if s.get("by") == "redis":
            parts.append("Redis promoted %s over %s by itself (nothing sent)" % (s["replica"], s["master"]))
        else:
            parts.append("promoted %s over %s (%s) in %ss" % (s["replica"], s["master"], s["mode"], s["seconds"]))
    for s in skipped or ():
        parts.append("left %s alone: %s" % (s["master"], s["why"]))
    return "; ".join(parts)


def sent(timeline):
    """Whether the timeline records a command we sent (a failover or REPLICAOF), not only what we observed."""
    return any(e["action"].startswith(("cluster failover", "replicaof")) for e in timeline or ())


def main():
    argument_spec = redis_argument_spec(**REDIS_CLUSTER_ARGUMENT_SPEC)
    argument_spec.update(
        master=dict(type="str"),
        replica=dict(type="str"),
        allow_takeover=dict(type="bool", default=False),
        wait_timeout=dict(type="float", default=30.0),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["wait_timeout"] <= 0:
        module.fail_json(msg="wait_timeout must be > 0")
    if cluster_param_error(p):
        module.fail_json(msg=cluster_param_error(p))
    if p["replica"] and not p["master"]:
        module.fail_json(msg="replica needs master")
    target = RedisTarget(module)
    try:
        topo = read_topology(target.settings, unanswered_ms=p["unanswered_ms"], confirm_timeout=p["confirm_timeout"])
        steps = plan_failover(topo, master=p["master"], replica=p["replica"], allow_takeover=p["allow_takeover"])
    except P3Error as e:
        fail_clean(module, e, plan=[], failovers=[], timeline=[])
    if not steps or module.check_mode:
        module.exit_json(changed=bool(steps), plan=steps, failovers=[], timeline=[], reason=describe(steps))
    try:
        done, timeline, skipped = run_failover(target.settings, topo, steps, wait_timeout=p["wait_timeout"],
                                               allow_takeover=p["allow_takeover"])
    except P3Error as e:
        fail_clean(module, e, plan=steps, changed=sent(e.details.get("timeline")))
    module.exit_json(changed=sent(timeline), plan=steps, failovers=done, skipped=skipped, timeline=timeline,
                     reason=describe(steps, done, skipped))


if __name__ == "__main__":
    main()
