# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of every module that talks to Redis (standalone or cluster).
    DOCUMENTATION = r"""
options:
  redis_url:
    description:
      - One Redis URL, C(redis://[[user]:password@]host[:port][/db]) or C(rediss://...) for TLS.
      - Used as the single seed node; in a cluster every other node is discovered from it with C(CLUSTER NODES).
      - If not set, the environment variable E(REDIS_URL) is used.
      - Mutually exclusive with O(redis_nodes) when both are given in the task. When one comes from the task and
        the other from the environment, the task value wins; when both come from the environment,
        E(REDIS_CLUSTER_NODES) wins and E(REDIS_URL) is ignored.
    type: str
  redis_nodes:
    description:
      - Cluster seed nodes as C(host:port) strings (C([v6addr]:port) for IPv6; the port defaults to 6379), or as
        URLs C(redis://[[user]:password@]host:port) (C(rediss://) for TLS) whose credentials are used; every entry
        must carry the same credentials. O(redis_username) and O(redis_password) override them.
      - Every node named by the seeds' C(CLUSTER NODES) is contacted too.
      - If not set, the environment variable E(REDIS_CLUSTER_NODES) is used (comma-separated, as P3 reads it).
    type: list
    elements: str
  redis_username:
    description:
      - ACL user name. Overrides a user given in O(redis_url).
      - If not set, the environment variable E(REDIS_USERNAME) is used.
    type: str
  redis_password:
    description:
      - Password (of O(redis_username), or of the default user). Overrides a password given in O(redis_url).
      - If not set, the environment variable E(REDIS_PASSWORD) is used.
    type: str
  redis_tls:
    description:
      - Connect with TLS. Implied by a C(rediss://) O(redis_url).
    type: bool
    default: false
  redis_ca_cert:
    description:
      - CA bundle to verify the servers' certificates with (TLS only); the system store when not set.
    type: path
  redis_client_cert:
    description:
      - Client certificate (PEM) to present to the servers (TLS only), for Redis configured with
        C(tls-auth-clients yes).
    type: path
  redis_client_key:
    description:
      - Private key (PEM) of O(redis_client_cert); may be in the O(redis_client_cert) file itself.
    type: path
  redis_validate_certs:
    description:
      - Verify the servers' TLS certificates and host names. Set to V(false) only for self-signed lab setups.
    type: bool
    default: true
  redis_socket_timeout:
    description:
      - Seconds to wait for each reply of a node before it is reported as not answering (per operation).
      - Never longer than what is left of O(redis_deadline).
    type: float
    default: 2.0
  redis_connect_timeout:
    description:
      - Seconds to wait for the TCP (and TLS) connection to each node (per connection).
      - Never longer than what is left of O(redis_deadline).
    type: float
    default: 2.0
  redis_deadline:
    description:
      - Total deadline, in seconds, of everything the module does with Redis in one call, whatever the nodes do
        (frozen, accepting and never answering, answering every reply just within O(redis_socket_timeout)).
      - O(redis_socket_timeout) and O(redis_connect_timeout) bound each operation; this bounds their sum. Each
        connect, send and read waits at most min(its own timeout, the time left); once the time is up no operation
        starts and the module fails (probes report it in their verdict) with one line naming the node and
        C(deadline of Ns exceeded).
      - The module's own waits (C(wait_timeout), C(confirm_timeout), C(subscriber_wait), C(wait), where it has them)
        are inside it and end with it.
      - Destructive modules stay safe when it hits. M(p3.recovery.session_purge) removes no key without its durable
        backup line, sends nothing new once only O(redis_connect_timeout) + 2 x O(redis_socket_timeout) are left
        (kept to resolve a compare-and-delete call in flight), and reports a call it still could not resolve in time
        as C(unresolved); the cluster
        modules report the timeline of what they did; C(changed) is true when anything changed.
      - When not set, 300 seconds plus the module's own waits named above (so a default C(wait_timeout) is never
        cut). Raise it for very large purges, restores or slot migrations.
    type: float
requirements:
  - redis (Python library, redis-py 5 or later)
notes:
  - Each node is contacted with its own connection and no retries; every connection of a call carries the call's
    O(redis_deadline), so the time a module takes is bounded by it whatever the state of the nodes.
  - Secrets - passwords in URLs and DSNs, credential headers - are masked in every output, failures included (even an
    argument that fails validation). Do not pass them as C(-e key=value) on the command line, which ansible-core
    itself prints at C(-vvvv); use Ansible Vault, C(-e @file), the environment variable fallbacks or AWX
    credentials (see the collection README, "Passing secrets").
"""
