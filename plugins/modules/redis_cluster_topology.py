#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_cluster_topology
short_description: Merge every Redis Cluster node's view into one topology with a verdict
version_added: 0.1.0
description:
  - The runbook's scenario 5 diagnosis (C(CLUSTER INFO), C(CLUSTER NODES | grep fail)) done on every node, read-only.
  - Contacts every seed and every node their C(CLUSTER NODES) name, each with its own connection and timeouts, in
    parallel; reads C(CLUSTER INFO), C(CLUSTER NODES), C(INFO replication), C(INFO memory), C(DBSIZE) and C(TIME)
    of each, and merges the views.
  - Reports every node (id, address, role, master, flags, who flags it C(fail)/C(fail?), bus link state, slots,
    config epoch, replication offset and lag, memory against C(maxmemory)), the slots no live master serves (with
    the ranges), unassigned slots, open (migrating/importing) slots, slots and epochs the nodes disagree about,
    config epoch collisions and masters without a healthy replica.
  - Each node's C(health) (in RV(nodes)) comes from one model (C(redis_cluster.judge_node)) that M(p3.recovery.redis_probe),
    the C(p3.recovery.redis_serving) filter and every action's re-check share - V(up) it answers; V(down) it does
    not, and a majority of the peers that list it flag it C(fail) (the cluster's own verdict), or every peer has
    waited for its pong longer than the cluster's C(cluster-node-timeout) (read with C(CONFIG GET)); V(busy) it does
    not answer but is not down by that definition (a slow script, a big-key delete, a fork stall, a VM pause, or a
    death not yet confirmed). Only down masters are failover candidates; a busy master's slots are waited for, never
    repaired around, and a controller-side network problem alone never triggers a failover.
  - With O(confirm_timeout), a busy slot-owning master is read again until it answers or the cluster confirms it
    down (the role waits this way before deciding, instead of acting on a master that is only slow).
  - Also reports what a recovery would do next (failover, rejoin and forget candidates) without doing it.
  - For a standalone (non-cluster) deployment given as a list of nodes, reports each node's role and replication
    link, and a failover candidate when no master is reachable but a replica is.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.redis_cluster
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  wait_for:
    description:
      - Poll (read-only, every 0.1 s) until the topology is C(serving) (every slot served by a live master, every
        reachable node C(cluster_state:ok), the views agree) or C(healthy), at most O(wait_timeout) seconds; the last
        reading is returned either way.
      - V(none) reads once.
    type: str
    choices: [none, serving, healthy]
    default: none
  wait_timeout:
    description: Seconds O(wait_for) waits at most.
    type: float
    default: 10
  designed_masters:
    description:
      - The cluster's designed number of masters serving slots (as it was built, for example 3). When set, RV(shape)
        says whether the cluster has that shape, and RV(next_actions) ends with C(reshape) when it has not while
        every node is up and every slot served (see M(p3.recovery.redis_cluster_shape)).
      - V(0) means no designed shape (RV(shape) is null).
    type: int
    default: 0
  designed_replicas:
    description: The designed number of replicas of each master (with O(designed_masters)).
    type: int
    default: 1
seealso:
  - module: p3.recovery.redis_cluster_shape
  - module: p3.recovery.redis_probe
  - module: p3.recovery.redis_cluster_failover
  - module: p3.recovery.redis_cluster_slots
  - module: p3.recovery.redis_cluster_node
"""

EXAMPLES = r"""
- name: Read the cluster's topology
  p3.recovery.redis_cluster_topology:
    redis_nodes: ["10.0.0.1:6379", "10.0.0.2:6379"]
    redis_password: "{{ vault_redis_password }}"
  register: topo

- name: Show the masters that need a failover
  ansible.builtin.debug:
    msg: "{{ topo.failover_candidates | map(attribute='master') }}"

- name: Wait until every slot is served again (after a recovery)
  p3.recovery.redis_cluster_topology:
    wait_for: serving
    wait_timeout: 10
    fail_on_unhealthy: false
"""

RETURN = r"""
healthy:
  description: Serving, redundant (every master has a healthy replica), every node reachable and unflagged, no open
    slot, no epoch collision, replica links up, memory below 90 % of C(maxmemory).
  returned: always
  type: bool
serving:
  description: Every slot is served by a reachable, unflagged master that claims it, every reachable node says
    C(cluster_state:ok) and all views agree about the owners (standalone - exactly one reachable master).
  returned: always
  type: bool
redundant:
  description: Every master that serves slots has at least one reachable, unflagged replica.
  returned: always
  type: bool
reason:
  description: One line; the problems found, or a summary when healthy.
  returned: always
  type: str
  sample: "master 127.0.0.1:17001 unreachable (connection refused; peers cannot reach it either); 5461 slots not served by a live master: 0-5460"
cluster_enabled:
  description: True for a cluster, false for standalone nodes, null when no node answered.
  returned: always
  type: bool
nodes:
  description:
    - Every node, merged from all views (a node's own view wins; else the majority of its peers').
    - C(health) is V(up), V(busy) or V(down) (see the description), C(health_why) says why in one line,
      C(unanswered_ms) is the shortest time every peer has been waiting for its pong, C(down_confirmed) is
      C(health == down).
  returned: always
  type: list
  elements: dict
  sample:
    - {id: "a3b0...", address: "127.0.0.1:17001", reachable: false, role: master, slots: ["0-5460"],
       flagged_by: {"fail": ["127.0.0.1:17002", "127.0.0.1:17003"]}, health: down,
       health_why: "flagged fail by 5 of 5 peers", down_confirmed: true}
cluster_state:
  description: C(ok) when every reachable node says C(ok), else C(fail) (cluster only).
  returned: when cluster
  type: str
cluster_states:
  description: Each reachable node's own C(cluster_state).
  returned: when cluster
  type: dict
masters:
  description: Reachable, unflagged masters (serving slots, in a cluster).
  returned: when a node answered
  type: int
replicas:
  description: Reachable, unflagged replicas.
  returned: when a node answered
  type: int
slots_served:
  description: Slots served by a live master.
  returned: when cluster
  type: int
slots_uncovered:
  description: Ranges of the slots no live master serves.
  returned: always
  type: list
  elements: str
  sample: ["0-5460"]
slots_uncovered_count:
  description: Number of such slots.
  returned: always
  type: int
slots_unassigned:
  description: Ranges no node's view (by majority) assigns to any master.
  returned: when cluster
  type: list
  elements: str
slot_owners:
  description: Master address -> slot ranges (majority view).
  returned: when cluster
  type: dict
views_agree:
  description: Whether every reachable node maps every slot to the same master.
  returned: always
  type: bool
disagreements:
  description: Up to 20 slot ranges with the owner each reachable node gives them.
  returned: always
  type: list
  elements: dict
epoch_disagreements:
  description: Nodes whose config epoch differs between the views.
  returned: when cluster
  type: list
  elements: dict
epoch_collisions:
  description: Masters sharing one config epoch.
  returned: when cluster
  type: list
  elements: str
open_slots:
  description: Slots a node has in C(migrating) or C(importing) state (C(slot), C(node), C(state), C(peer)).
  returned: always
  type: list
  elements: dict
failed_nodes:
  description: Nodes that are unreachable from here or flagged C(fail).
  returned: always
  type: list
  elements: str
pfail_nodes:
  description: Nodes flagged C(fail?) by a peer (not yet C(fail)).
  returned: when cluster
  type: list
  elements: str
busy_nodes:
  description: Nodes that do not answer here but are not down by the cluster's definition (never acted on).
  returned: when cluster
  type: list
  elements: str
down_nodes:
  description: Nodes that are down by the cluster's definition (flagged C(fail) by a majority, or unanswered for
    longer than C(cluster-node-timeout)).
  returned: when cluster
  type: list
  elements: str
node_timeout_ms:
  description: The C(cluster-node-timeout) used (the largest the reachable nodes report, else O(unanswered_ms)).
  returned: when cluster
  type: int
confirm_waited:
  description: Seconds spent waiting for a busy master to answer or be confirmed down (O(confirm_timeout)).
  returned: when cluster
  type: float
masters_without_replica:
  description: Masters serving slots without a healthy replica.
  returned: always
  type: list
  elements: str
failover_candidates:
  description: Down masters (RV(down_nodes)) that serve slots, with their live replicas best first.
  returned: always
  type: list
  elements: dict
  sample: [{master: "127.0.0.1:17001", master_id: "a3b0...", slots: ["0-5460"], replicas: ["127.0.0.1:17006"]}]
rejoin_candidates:
  description: Reachable masters without slots (e.g. a restarted former master) while some master lacks a replica.
  returned: always
  type: list
  elements: str
forget_candidates:
  description: Unreachable nodes flagged C(fail), without slots and without a live replica.
  returned: always
  type: list
  elements: str
slots_orphaned:
  description: Uncovered slot ranges a replica promotion would not bring back (the slot repair's work).
  returned: always
  type: list
  elements: str
shape:
  description:
    - With O(designed_masters) - C(ok), C(masters) (serving slots), C(replicas) (usable replicas per master, sorted),
      C(free) (empty masters and replicas of a node without slots) and a one-line C(reason); null without it.
  returned: always
  type: dict
next_actions:
  description: What a recovery would do next, in order - C(failover), C(slots), C(rejoin), C(forget), C(reshape).
  returned: always
  type: list
  elements: str
  sample: [failover]
waited_s:
  description: Seconds spent polling for O(wait_for).
  returned: always
  type: float
"""

import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import (
    REDIS_CLUSTER_ARGUMENT_SPEC, cluster_param_error, public, read_topology, with_shape)


def main():
    argument_spec = redis_argument_spec(**REDIS_CLUSTER_ARGUMENT_SPEC)
    argument_spec.update(
        wait_for=dict(type="str", default="none", choices=["none", "serving", "healthy"]),
        wait_timeout=dict(type="float", default=10.0),
        designed_masters=dict(type="int", default=0),
        designed_replicas=dict(type="int", default=1),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout must be >= 0")
    if module.params["designed_masters"] < 0 or module.params["designed_replicas"] < 0:
        module.fail_json(msg="designed_masters and designed_replicas must be >= 0")
    if cluster_param_error(module.params):
        module.fail_json(msg=cluster_param_error(module.params))
    target = RedisTarget(module)
    t0 = time.monotonic()
    deadline = target.settings.deadline.cut(t0 + module.params["wait_timeout"])  # redis_deadline ends the wait too
    wait_for = module.params["wait_for"]
    confirm = module.params["confirm_timeout"]
    while True:
        topo = public(read_topology(target.settings, unanswered_ms=module.params["unanswered_ms"],
                                    confirm_timeout=confirm))
        confirm = 0.0
        if wait_for == "none" or topo.get(wait_for) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    topo = with_shape(topo, module.params["designed_masters"], module.params["designed_replicas"])
    healthy = topo.pop("healthy")
    reason = topo.pop("reason")
    topo["waited_s"] = round(time.monotonic() - t0, 3) if wait_for != "none" else 0.0
    exit_probe(module, probe_result(healthy, reason, **topo))


if __name__ == "__main__":
    main()
