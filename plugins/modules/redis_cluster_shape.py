#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_cluster_shape
short_description: Bring a serving Redis Cluster back to its designed shape (masters, replicas per master)
version_added: 0.1.0
description:
  - After a master and its replica were down together and the lossy slot repair gave their slots to the other
    masters, the two nodes come back empty as replicas - the cluster then serves every slot but with one master
    fewer and a master with two replicas. This module restores O(designed_masters) masters serving slots with
    O(designed_replicas) replicas each.
  - Acts only on a cluster where every known node answers and is not flagged, every slot is served, no slot is
    open and the views agree; otherwise it changes nothing and says why (RV(reason) starts with C(not reshaping)).
    A cluster with more masters than designed is reported, never merged.
  - A new master is an empty master if there is one, else a replica of no slot-serving master, else the replica
    furthest behind of the master with the most replicas (only a spare - a master never loses its last replica).
    Right before, the node is checked again (still a replica, its master keeps another replica), then
    C(CLUSTER RESET SOFT) (it drops its copy of the data - the data stays on its master) and C(CLUSTER MEET) bring
    it back as an empty master.
  - The new master first gets its replicas (C(CLUSTER REPLICATE), so moved keys have a copy), then takes a
    contiguous block of the lowest slots of the master with the most slots until it holds its share
    (16384 / O(designed_masters)), moved like C(redis-cli --cluster reshard) - C(SETSLOT IMPORTING) and
    C(MIGRATING), C(MIGRATE) of every key, C(SETSLOT NODE) on both and every other master (the source refuses while
    it still holds a key of the slot, so no key is left behind). No C(CLUSTER FAILOVER) is sent.
  - The moves are done only once every replica of each new owner has acknowledged that master's replication offset
    as read after the moves (C(INFO replication), polled up to O(wait_timeout); C(WAIT) cannot see the writes
    C(MIGRATE) makes), so the moved keys exist in two copies; a replica still behind at the deadline fails the run,
    named.
  - Replicas are then balanced (C(CLUSTER REPLICATE) of a spare onto a master that lacks one), each polled until
    its link is up and every node agrees.
  - A cluster already at its shape reports C(changed=false); a run that sent a command reports C(changed=true) even
    when it then fails.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.redis_cluster
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reads the topology and returns the plan (new masters, slot moves, replica moves); sends nothing.
  diff_mode:
    support: none
options:
  designed_masters:
    description: How many masters serve slots by design (for example 3, as C(redis-cli --cluster create) built it).
    type: int
    required: true
  designed_replicas:
    description: How many replicas each master has by design.
    type: int
    default: 1
  migrate_timeout_ms:
    description: C(MIGRATE) timeout in milliseconds for each batch of keys.
    type: int
    default: 5000
  wait_timeout:
    description: Seconds each step waits for every reachable node to agree.
    type: float
    default: 30
seealso:
  - module: p3.recovery.redis_cluster_topology
  - module: p3.recovery.redis_cluster_slots
  - module: p3.recovery.redis_cluster_node
"""

EXAMPLES = r"""
- name: Back to 3 masters with one replica each
  p3.recovery.redis_cluster_shape:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    designed_masters: 3
"""

RETURN = r"""
shape_before:
  description: The shape verdict before acting (C(ok), C(masters), C(replicas), C(free), C(reason)).
  returned: always
  type: dict
plan:
  description:
    - C(new_masters) (C(node), C(was)), C(moves) (C(src), C(dst), C(range), C(count)) and C(replicas) (C(node),
      C(master)) - in check mode the replica moves seen on the current topology.
  returned: always
  type: dict
replicated:
  description: Replicas attached (C(node), C(master), C(seconds)).
  returned: always
  type: list
  elements: dict
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

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, P3Module
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import (
    REDIS_CLUSTER_ARGUMENT_SPEC, cluster_param_error, plan_replica_balance, plan_reshape, read_topology, run_reshape,
    shape_verdict)


def main():
    argument_spec = redis_argument_spec(**REDIS_CLUSTER_ARGUMENT_SPEC)
    argument_spec.update(
        designed_masters=dict(type="int", required=True),
        designed_replicas=dict(type="int", default=1),
        migrate_timeout_ms=dict(type="int", default=5000),
        wait_timeout=dict(type="float", default=30.0),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["designed_masters"] <= 0 or p["designed_replicas"] < 0:
        module.fail_json(msg="designed_masters must be > 0 and designed_replicas >= 0")
    if p["wait_timeout"] <= 0 or p["migrate_timeout_ms"] <= 0:
        module.fail_json(msg="wait_timeout and migrate_timeout_ms must be > 0")
    if cluster_param_error(p):
        module.fail_json(msg=cluster_param_error(p))
    target = RedisTarget(module)
    out = dict(shape_before=None, plan={}, replicated=[], timeline=[])

    def read():
        return read_topology(target.settings, unanswered_ms=p["unanswered_ms"])

    try:
        topo = read_topology(target.settings, unanswered_ms=p["unanswered_ms"], confirm_timeout=p["confirm_timeout"])
        if topo.get("cluster_enabled") is None:
            raise P3Error(topo["reason"])
        if not topo["cluster_enabled"]:
            raise P3Error("%s is not a Redis Cluster" % ", ".join(target.settings.seed_addresses))
        shape = shape_verdict(topo, p["designed_masters"], p["designed_replicas"])
        out["shape_before"] = shape
        if shape["ok"]:
            module.exit_json(changed=False, reason=shape["reason"], **out)
        try:
            plan = plan_reshape(topo, p["designed_masters"], p["designed_replicas"])
        except P3Error as e:  # a state to report, not a failure: the cluster serves, the shape waits
            module.exit_json(changed=False, reason="%s (%s)" % (e.msg, shape["reason"]), **out)
        balance = [] if plan["new_masters"] else plan_replica_balance(topo, p["designed_replicas"])
        out["plan"] = dict(new_masters=[dict(node=n["node"], was=n["was"]) for n in plan["new_masters"]],
                           moves=[dict(src=m["src"], dst=m["dst"], range=m["range"], count=m["count"])
                                  for m in plan["moves"]],
                           replicas=[dict(node=r["address"], master=m["address"]) for r, m in balance])
        if not (plan["new_masters"] or plan["moves"] or balance):
            module.exit_json(changed=False, reason="not reshaping: nothing can be moved (%s)" % shape["reason"], **out)
        if plan["new_masters"] or plan["moves"]:
            what = plan["reason"] + "; then balance the replicas"
        else:
            what = "; ".join("make %s a replica of %s" % (r["node"], r["master"]) for r in out["plan"]["replicas"])
        if module.check_mode:
            module.exit_json(changed=True, reason="would %s" % what, **out)
        out["timeline"], out["replicated"] = run_reshape(
            target.settings, read, plan, designed_replicas=p["designed_replicas"], wait_timeout=p["wait_timeout"],
            migrate_timeout_ms=p["migrate_timeout_ms"])
        after = shape_verdict(read(), p["designed_masters"], p["designed_replicas"])
    except P3Error as e:
        details = dict(out)
        details.update(e.details)
        details["changed"] = bool(details.get("timeline"))
        module.fail_json(msg=e.msg, **details)
    module.exit_json(changed=bool(out["timeline"]), reason="did %s; now %s" % (what, after["reason"]), **out)


if __name__ == "__main__":
    main()
