#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: bullmq_probe
short_description: Read the state of a BullMQ queue (counts, backlog age, failed reasons, stalled jobs, workers)
version_added: 0.1.0
description:
  - The runbook's anchor-queue diagnosis (C(LLEN bull:anchor:waiting), C(LRANGE bull:anchor:failed)) done with
    BullMQ's real key types, read-only.
  - Counts every state (C(wait), C(paused), C(active) lists; C(delayed), C(prioritized), C(waiting-children),
    C(failed), C(completed) sorted sets), the age of the oldest waiting job, the failure reasons of the most recent
    failed jobs grouped with counts, stalled jobs (active jobs whose lock is gone, BullMQ's own test; the C(stalled)
    set is returned as evidence, not judged - it marks every job active at BullMQ's last stalled check until its
    next lock renewal, so it is not empty under ordinary traffic), whether the queue is paused and how many worker
    connections (named by BullMQ with C(CLIENT SETNAME)) are on the node.
  - Works on a standalone Redis and on a Redis Cluster; on a cluster the prefix must be hash-tagged (for example
    C({bull})), and every read goes to the master of that slot.
  - With O(sample_seconds) it reads the counts twice and reports whether a backlog is draining.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  queue:
    description:
      - Queue name (the runbook's C(anchor); P3 as coded uses C(anchor-batch:us)).
    type: str
    required: true
  prefix:
    description:
      - Key prefix. Keys are C(<prefix>:<queue>:<state>). Use a hash-tagged prefix on a cluster.
    type: str
    default: bull
  max_waiting:
    description:
      - Unhealthy when more jobs wait (C(wait) + C(paused) + C(prioritized)); the runbook's C(queue_depth > 1000) alert.
    type: int
    default: 1000
  max_failed:
    description:
      - Unhealthy when more jobs are in C(failed).
    type: int
    default: 0
  max_wait_age_seconds:
    description:
      - Unhealthy when the oldest waiting job is older than this. Not checked when unset.
    type: float
  require_worker:
    description:
      - Unhealthy when jobs wait and no worker connection of this queue is on the node.
    type: bool
    default: true
  failed_sample:
    description:
      - How many of the most recent failed jobs to read for RV(failed_reasons) and RV(malformed).
    type: int
    default: 1000
  required_data_keys:
    description:
      - Keys every job's C(data) object must have; a failed job without them is reported in RV(malformed).
    type: list
    elements: str
    default: []
  sample_seconds:
    description:
      - When above 0, read the counts again after this many seconds and report RV(progress); a backlog that neither
        shrinks nor finishes any job in that time is unhealthy.
    type: float
    default: 0
  stuck_wait_seconds:
    description:
      - RV(worker_stuck) also names a job that has waited longer than this while a worker is connected and no job is
        active. Not checked when unset. RV(worker_stuck) does not change RV(healthy); the caller decides.
    type: float
  job_ids:
    description:
      - Report the state and data of these jobs in RV(jobs) (for example the ids a retry moved).
    type: list
    elements: str
    default: []
  wait_active_seconds:
    description:
      - When above 0, first wait until none of the jobs active now is active any more, at most this many seconds in
        total (jobs taken later are not waited for), and report it in RV(active_wait); the rest is read after.
        P(p3.recovery.app_restart#role) uses it before it stops an app instance, so a job between its transaction and
        its receipt is not cut off. Giving up does not change RV(healthy).
    type: float
    default: 0
"""

EXAMPLES = r"""
- name: Anchor queue on the lab cluster
  p3.recovery.bullmq_probe:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    prefix: "{bull}"
    queue: anchor
    sample_seconds: 3
  register: anchor_queue

- name: P3 as coded (queue anchor-batch:us, prefix bull, standalone REDIS_URL)
  p3.recovery.bullmq_probe:
    queue: "anchor-batch:us"
    fail_on_unhealthy: true
"""

RETURN = r"""
healthy:
  description: No threshold crossed, not paused, a worker connected while jobs wait, nothing stalled, draining.
  returned: always
  type: bool
reason:
  description: One line; the problems found, or the counts when healthy.
  returned: always
  type: str
  sample: "10 failed > 0 (top: Web3RPCError: Insufficient funds x10)"
reachable:
  description: Whether the node serving the queue answered.
  returned: always
  type: bool
node:
  description: C(host:port) of the node the queue was read from (the slot's master on a cluster).
  returned: always
  type: str
cluster:
  description: Whether Redis runs in cluster mode.
  returned: always
  type: bool
keys:
  description: Key pattern of the queue.
  returned: always
  type: str
  sample: "{bull}:anchor:*"
counts:
  description: Jobs per state (wait, paused, active, delayed, prioritized, waiting-children, failed, completed).
  returned: when reachable
  type: dict
waiting:
  description: C(wait) + C(paused) + C(prioritized).
  returned: when reachable
  type: int
paused:
  description: The queue is paused (C(meta.paused)).
  returned: when reachable
  type: bool
concurrency:
  description: Global concurrency of the queue (C(meta.concurrency)), null when unset.
  returned: when reachable
  type: int
stalled:
  description: Members of the C(stalled) set - jobs active at BullMQ's last stalled check whose lock was not renewed
    since (candidates, not a verdict; a stalled job is one whose lock is gone, RV(active_without_lock)).
  returned: when reachable
  type: int
active_without_lock:
  description: Active job ids (first 1000) whose lock key is gone (stalled, not yet moved back by a worker).
  returned: when reachable
  type: list
  elements: str
oldest_wait_job:
  description: Id of the oldest waiting job.
  returned: when reachable
  type: str
oldest_wait_age_seconds:
  description: Its age (now - its C(timestamp)).
  returned: when reachable
  type: float
failed_reasons:
  description: C(failedReason) of the sampled failed jobs, grouped, most frequent first (at most 10).
  returned: when reachable
  type: list
  elements: dict
  sample: [{"reason": "Web3RPCError: Insufficient funds", "count": 10, "latest_ms": 1764338400000}]
failed_sampled:
  description: How many failed jobs were read.
  returned: when reachable
  type: int
malformed:
  description: Sampled failed jobs whose hash is missing or whose data is not a JSON object with O(required_data_keys).
  returned: when reachable
  type: list
  elements: dict
worker_connections:
  description: Connections named by this queue's workers on the node; null when C(CLIENT LIST) is not allowed.
  returned: when reachable
  type: int
worker_clients:
  description: This queue's worker connections on the node as C(CLIENT LIST) shows them - C(name), C(flags) (C(b)
    blocked in a command), C(cmd), C(qbuf) (bytes of commands queued behind the current one), C(idle); null when
    C(CLIENT LIST) is not allowed.
  returned: when reachable
  type: list
  elements: dict
worker_stuck:
  description: Why the connected workers take no job, else null - every blocked worker connection has commands queued
    behind its blocking call (its client gave up on it, so the next job's marker is popped by a command nobody
    reads; P3's worker after idling 5 s), or a job waited longer than O(stuck_wait_seconds) with none active.
  returned: when reachable
  type: str
progress:
  description: With O(sample_seconds) - waiting and finished (failed + completed) before and after, and C(stuck).
  returned: when O(sample_seconds) > 0 and reachable
  type: dict
active_wait:
  description: With O(wait_active_seconds) - C(jobs) (how many were active when the wait began), C(still_active) (the
    ids of those still active when it ended, at most 20), C(seconds) (waited), C(gave_up) (some were still active).
  returned: when O(wait_active_seconds) > 0 and reachable
  type: dict
  sample: {"jobs": 2, "still_active": [], "seconds": 1.2, "gave_up": false}
jobs:
  description: For O(job_ids) - C(id), C(state) (completed, failed, active, wait, delayed, missing, unknown), C(data),
    C(failedReason), C(finishedOn), C(processedOn), C(problem) (why the data is unusable, else null).
  returned: when reachable
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.bullmq import queue_verdict, read_queue
from ansible_collections.p3.recovery.plugins.module_utils.common import (
    PROBE_ARGUMENT_SPEC,
    P3Error,
    exit_probe,
    probe_result,
)
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec


def main():
    argument_spec = redis_argument_spec(
        queue=dict(type="str", required=True),
        prefix=dict(type="str", default="bull"),
        max_waiting=dict(type="int", default=1000),
        max_failed=dict(type="int", default=0),
        max_wait_age_seconds=dict(type="float"),
        require_worker=dict(type="bool", default=True),
        failed_sample=dict(type="int", default=1000),
        required_data_keys=dict(type="list", elements="str", default=[], no_log=False),
        sample_seconds=dict(type="float", default=0),
        stuck_wait_seconds=dict(type="float"),
        job_ids=dict(type="list", elements="str", default=[]),
        wait_active_seconds=dict(type="float", default=0),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    for name in ("max_waiting", "max_failed", "failed_sample"):
        if p[name] < 0:
            module.fail_json(msg="%s must be >= 0, got %s" % (name, p[name]))
    if p["sample_seconds"] < 0 or p["sample_seconds"] > 60:
        module.fail_json(msg="sample_seconds must be between 0 and 60, got %s" % p["sample_seconds"])
    if p["wait_active_seconds"] < 0 or p["wait_active_seconds"] > 600:
        module.fail_json(msg="wait_active_seconds must be between 0 and 600, got %s" % p["wait_active_seconds"])
    target = RedisTarget(module)
    try:
        state = read_queue(target.settings, p["queue"], p["prefix"], failed_sample=p["failed_sample"],
                           required_data_keys=p["required_data_keys"], sample_seconds=p["sample_seconds"],
                           job_ids=p["job_ids"], stuck_wait_seconds=p["stuck_wait_seconds"],
                           wait_active_seconds=p["wait_active_seconds"])
    except P3Error as e:  # a bad queue name or prefix
        module.fail_json(msg=e.msg)
    base = state["base"]
    if state["error"]:
        if state["fatal"]:
            module.fail_json(msg=state["error"], **base)
        exit_probe(module, probe_result(False, state["error"], **base))
    extra = state["extra"]
    healthy, reason = queue_verdict(state["counts"], extra, dict(
        max_waiting=p["max_waiting"], max_failed=p["max_failed"], max_wait_age_seconds=p["max_wait_age_seconds"],
        require_worker=p["require_worker"], max_stalled=0))
    reason = "%s on %s: %s" % (base["keys"], base["node"], reason)
    base.update(extra)
    exit_probe(module, probe_result(healthy, reason, **base))


if __name__ == "__main__":
    main()
