# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # The option every redis_cluster_* module shares to read the topology (argument spec:
    # module_utils/redis_cluster.py REDIS_CLUSTER_ARGUMENT_SPEC).
    DOCUMENTATION = r"""
options:
  unanswered_ms:
    description:
      - A ping from a peer unanswered for longer than this many milliseconds confirms a node we cannot reach is down
        (a frozen or partitioned node keeps its TCP link, so peers only flag it after C(cluster-node-timeout)).
    type: int
    default: 1000
"""
