#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_probe
short_description: Probe every node of a Redis Cluster (or a standalone Redis) and the slot coverage
version_added: 0.1.0
description:
  - Runs the runbook's quick diagnostic 3 (C(redis-cli -u $REDIS_URL PING)) on every node, read-only.
  - Contacts each seed, discovers the other nodes from C(CLUSTER NODES), and talks to every node itself, in
    parallel, each with its own connection and the timeouts of the connection options; a dead node or a frozen
    one (a stopped process whose port still accepts connections) is reported, never waited for beyond them.
  - A cluster is healthy when every node answers, no node is flagged C(fail) by its peers, every reachable node
    reports C(cluster_state:ok), all 16384 slots are served by reachable masters, the nodes agree about the slot
    configuration, and every replica's link to its master is up.
  - A standalone Redis is healthy when every node answers C(PING).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.probe
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options: {}
seealso:
  - module: p3.recovery.app_probe
"""

EXAMPLES = r"""
- name: Probe the cluster named by REDIS_CLUSTER_NODES / REDIS_PASSWORD
  p3.recovery.redis_probe:
  register: redis

- name: Probe from one seed URL with TLS and an ACL user
  p3.recovery.redis_probe:
    redis_url: rediss://redis-0.internal:6379
    redis_username: p3ops
    redis_password: "{{ vault_redis_password }}"
    redis_ca_cert: /etc/ssl/p3/ca.pem

- name: Probe the lab cluster with short timeouts
  p3.recovery.redis_probe:
    redis_nodes:
      - 127.0.0.1:17001
      - 127.0.0.1:17002
    redis_password: "{{ p3_redis_password }}"
    redis_socket_timeout: 1
    redis_connect_timeout: 1

- name: Name the masters that are down
  ansible.builtin.debug:
    msg: "{{ redis.nodes | selectattr('role', 'eq', 'master') | rejectattr('reachable') | map(attribute='address') }}"
"""

RETURN = r"""
healthy:
  description: See the description for the rules.
  returned: always
  type: bool
  sample: false
reason:
  description: One line naming unreachable or failed nodes, uncovered slots and the cluster state.
  returned: always
  type: str
  sample: "node 127.0.0.1:17001 unreachable (connection refused); cluster_state=ok"
nodes:
  description: Every known node (seeds first, then discovered ones), as this probe saw it.
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: C(host:port).
      type: str
      sample: "127.0.0.1:17001"
    reachable:
      description: Answered C(PING) and the follow-up commands within the timeouts.
      type: bool
    role:
      description: C(master), C(replica) or C(unknown) (never reached and named by no peer).
      type: str
    id:
      description: Cluster node id (null for standalone nodes, or unreachable seeds no peer knows).
      type: str
    flags:
      description: The node's flags without C(myself) (its own view when reachable, else its peers' view).
      type: list
      elements: str
      sample: [master, fail]
    flagged_by_peers:
      description: C(fail) / C(fail?) flags other nodes give it.
      type: list
      elements: str
    health:
      description:
        - V(up), V(busy) or V(down), from the one node-health model M(p3.recovery.redis_cluster_topology) uses - down
          only when a majority of its peers flag it C(fail) or every peer has waited for its pong longer than
          C(cluster-node-timeout); busy when it does not answer but is not down. Standalone - V(up) or V(down).
      type: str
    health_why:
      description: One line saying why (cluster only).
      type: str
    error:
      description: Why it is unreachable (or what failed after it answered), one line; null when fine.
      type: str
      sample: connection refused
    latency_ms:
      description: C(PING) round trip in milliseconds.
      type: float
    master_id:
      description: For a replica, the id of its master.
      type: str
    master:
      description: For a replica, the C(host:port) of its master.
      type: str
    slots:
      description: For a master, the slot ranges it serves (C(start-end) strings).
      type: list
      elements: str
      sample: ["0-5460"]
    cluster_state:
      description: C(cluster_state) in the node's own C(CLUSTER INFO).
      type: str
    link_state:
      description: Cluster bus link state (C(connected) or C(disconnected)).
      type: str
    master_link_status:
      description: For a reachable replica, C(master_link_status) from C(INFO replication).
      type: str
cluster_enabled:
  description: True when the reachable nodes run in cluster mode; null when no node answered.
  returned: always
  type: bool
cluster_state:
  description: C(ok) when every reachable node says C(ok), C(fail) when any says otherwise; null when not a cluster.
  returned: always
  type: str
  sample: ok
slots_assigned:
  description: Slots assigned to a master in any node's configuration; null when not a cluster.
  returned: always
  type: int
  sample: 16384
slots_ok:
  description: Slots served by a reachable master that is not flagged failed; null when not a cluster.
  returned: always
  type: int
  sample: 10923
slots_uncovered:
  description: Slot ranges not in RV(slots_ok) (C(start-end) strings); empty when all are covered or not a cluster.
  returned: always
  type: list
  elements: str
  sample: ["0-5460"]
views_agree:
  description: Whether all reachable nodes map every slot to the same master; null when not a cluster.
  returned: always
  type: bool
masters:
  description:
    - Number of healthy masters - reachable, not flagged C(fail) by a majority of its peers, and (in a cluster) serving slots.
    - The addresses are in RV(nodes) (C(role=master)).
  returned: always
  type: int
  sample: 3
replicas:
  description: Number of healthy replicas - reachable and not flagged C(fail) by a majority of its peers.
  returned: always
  type: int
  sample: 3
serving:
  description: Whether Redis serves clients (every slot served by a reachable, unflagged master, the views agreeing,
    C(cluster_state:ok)); standalone - the verdict. What the C(p3.recovery.redis_serving) filter returns.
  returned: always
  type: bool
busy_nodes:
  description: Nodes that do not answer but are not down (never acted on by the recovery).
  returned: always
  type: list
  elements: str
down_nodes:
  description: Nodes down by the cluster's definition (cluster), or unreachable (standalone).
  returned: always
  type: list
  elements: str
failed_nodes:
  description: Addresses of the nodes that are unreachable or flagged C(fail) by a majority of their peers.
  returned: always
  type: list
  elements: str
  sample: ["127.0.0.1:17001"]
degraded:
  description:
    - Service restored, redundancy degraded - the verdict is C(healthy=true) (every slot served, C(cluster_state:ok),
      nothing else wrong) while nodes that the cluster judges down (flagged C(fail), or silent past
      C(cluster-node-timeout)) own no slot, for example a master whose replica was promoted. One entry per such
      node with the one remaining step named; C(reason) starts with C(service restored, redundancy degraded).
  returned: when a cluster serves every slot and a node without slots is down
  type: list
  elements: dict
  contains:
    node:
      description: The node's address.
      type: str
    was:
      description: C(master) or C(replica), its role in the cluster's configuration.
      type: str
    why:
      description: Why it is judged down.
      type: str
    next:
      description: The remaining step, e.g. C(restart Redis node 127.0.0.1:17001 (it rejoins as a replica)).
      type: str
    summary:
      description: One line - node, why, next step.
      type: str
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import redis_probe
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec


def main():
    argument_spec = redis_argument_spec()
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    target = RedisTarget(module)
    exit_probe(module, redis_probe(target))


if __name__ == "__main__":
    main()
