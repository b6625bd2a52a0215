# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # The options every redis_cluster_* module shares to read the topology (argument spec:
    # module_utils/redis_cluster.py REDIS_CLUSTER_ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  unanswered_ms:
    description:
      - The C(cluster-node-timeout) (milliseconds) to assume when no node answers C(CONFIG GET cluster-node-timeout)
        (a managed Redis may refuse C(CONFIG)); otherwise the nodes' own value is used.
      - A node we cannot reach is down only when a majority of the peers that list it flag it C(fail), or when every
        peer has waited for its pong longer than C(cluster-node-timeout) (with no peer to ask, our own observation
        counts). Otherwise it is busy (slow, stalled, paused, or not yet confirmed) and is never failed over,
        forgotten or repaired around.
    type: int
    default: 15000
  confirm_timeout:
    description:
      - While a slot-owning master is busy, read the topology again every 0.25 s for at most this many seconds, until
        it answers again or the cluster confirms it down (the cluster flags a dead master C(fail) about
        C(cluster-node-timeout) after it stopped answering). V(0) reads once.
    type: float
    default: 0
"""
