#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: bullmq_retry
short_description: Retry failed BullMQ jobs the way BullMQ does (retryJobs / Job.retry), filtered and capped
version_added: 0.1.0
description:
  - Replaces the runbook's C(LRANGE bull:anchor:failed | xargs RPUSH bull:anchor:waiting), which fails on the
    sorted set (WRONGTYPE), pushes the error text as a job, and would leave retried jobs in C(failed) with their
    C(failedReason) and no events.
  - Runs BullMQ's own Lua scripts from the installed C(bullmq) Python package, the ones Node's C(Queue.retryJobs())
    and C(Job.retry()) run - C(moveJobsToWait) moves a page of up to O(page_size) jobs atomically (clears
    C(finishedOn), C(processedOn), C(failedReason), emits C(waiting) events, pushes to C(wait), sets the marker);
    C(reprocessJob) does the same per job once filters leave some failed jobs in place.
  - Without filters each page is one atomic script - the job-data check of O(validate_data), then
    C(moveJobsToWait)'s text as the package ships it - and two pages are in flight on one connection, so the server
    never waits for a round trip while every call still holds it for one page only (about 5 ms per 1000 jobs).
  - Only jobs that failed at least O(min_age_seconds) ago (C(failed) score = C(finishedOn)) and before the run
    started are candidates, so a job that fails again during the run is not retried twice.
  - Memory stays one page whatever the number of jobs; the result lists at most O(return_ids) ids.
  - In check mode it reads and counts what it would retry and moves nothing.
  - An error after earlier pages moved jobs (a page's script failed, the connection dropped) fails the task with
    C(changed=true), RV(retried) counting the jobs already moved and a C(timeline) entry for them; the message says
    how many moved.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - bullmq (Python package; only its Lua scripts are read)
options:
  queue:
    description: Queue name.
    type: str
    required: true
  prefix:
    description: Key prefix; hash-tagged on a cluster (for example C({bull})).
    type: str
    default: bull
  state:
    description: Retry jobs of this state (BullMQ's C(retryJobs) accepts C(failed) and C(completed)).
    type: str
    choices: [failed, completed]
    default: failed
  reason_pattern:
    description:
      - Only retry jobs whose C(failedReason) matches this Python regular expression (searched anywhere).
    type: str
  min_age_seconds:
    description: Only retry jobs that finished at least this many seconds ago.
    type: float
    default: 0
  max_jobs:
    description: Retry at most this many jobs in this run (the cap of a bounded action).
    type: int
    default: 10000
  page_size:
    description: Jobs per page (per atomic C(moveJobsToWait) call). BullMQ's own C(retryJobs) uses 1000.
    type: int
    default: 1000
  validate_data:
    description:
      - Check each candidate's C(data) on the server, in the same atomic step as its move; a job whose hash is
        missing or whose C(data) is not a JSON object with O(required_data_keys) is not retried and is listed in
        RV(malformed). It costs about half as much server time again as the move itself.
      - Unset, it is on exactly when O(required_data_keys) is set; so by default the module does what BullMQ's
        C(retryJobs) does (no check), and naming the keys a job needs turns the check on (the C(anchor_queue) role
        does).
    type: bool
  required_data_keys:
    description: Keys every job's C(data) must have (with O(validate_data), which they turn on unless it is false).
    type: list
    elements: str
    default: []
  on_malformed:
    description:
      - V(fail) - retry the good jobs, then fail naming the malformed ones. V(skip) - report them and succeed.
    type: str
    choices: [fail, skip]
    default: fail
  return_ids:
    description: List at most this many retried ids in RV(ids).
    type: int
    default: 1000
"""

EXAMPLES = r"""
- name: Count what a retry would move (check mode moves nothing)
  p3.recovery.bullmq_retry:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    prefix: "{bull}"
    queue: anchor
  check_mode: true
  register: would

- name: Retry anchor jobs that failed for lack of gas, at most 5000, older than a minute
  p3.recovery.bullmq_retry:
    prefix: "{bull}"
    queue: anchor
    reason_pattern: "(?i)insufficient funds"
    min_age_seconds: 60
    max_jobs: 5000
    required_data_keys: [outboxId, digest]
"""

RETURN = r"""
matched:
  description: Candidates that passed the filters (retried, or would be in check mode).
  returned: always
  type: int
retried:
  description: Jobs moved back to C(wait) (0 in check mode).
  returned: always
  type: int
would_retry:
  description: In check mode, how many jobs a real run would move.
  returned: in check mode
  type: int
skipped_reason:
  description: Candidates left in place because their C(failedReason) does not match O(reason_pattern).
  returned: always
  type: int
malformed:
  description: Jobs left in place because their hash or data is unusable (C(id), C(problem)); at most 100.
  returned: always
  type: list
  elements: dict
malformed_count:
  description: How many malformed jobs were seen.
  returned: always
  type: int
vanished:
  description: Jobs that left the set (or lost their hash) between the read and the move.
  returned: always
  type: int
ids:
  description: Ids of the jobs moved (would be moved in check mode), at most O(return_ids).
  returned: always
  type: list
  elements: str
ids_truncated:
  description: More jobs were moved than RV(ids) lists.
  returned: always
  type: bool
capped:
  description: O(max_jobs) stopped the run while candidates remained.
  returned: always
  type: bool
remaining:
  description: Jobs still in the state after the run.
  returned: always
  type: int
elapsed_ms:
  description: Time spent reading and moving jobs (without module start-up).
  returned: always
  type: float
node:
  description: Node the queue lives on.
  returned: always
  type: str
timeline:
  description: One entry C({ts, action, target, detail}) when jobs were (or would be) moved.
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec


def main():
    argument_spec = redis_argument_spec(
        queue=dict(type="str", required=True),
        prefix=dict(type="str", default="bull"),
        state=dict(type="str", choices=["failed", "completed"], default="failed"),
        reason_pattern=dict(type="str"),
        min_age_seconds=dict(type="float", default=0),
        max_jobs=dict(type="int", default=10000),
        page_size=dict(type="int", default=1000),
        validate_data=dict(type="bool"),
        required_data_keys=dict(type="list", elements="str", default=[], no_log=False),
        on_malformed=dict(type="str", choices=["fail", "skip"], default="fail"),
        return_ids=dict(type="int", default=1000),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["max_jobs"] < 1:
        module.fail_json(msg="max_jobs must be >= 1, got %s" % p["max_jobs"])
    if not 1 <= p["page_size"] <= 7000:
        module.fail_json(msg="page_size must be between 1 and 7000, got %s" % p["page_size"])
    if p["min_age_seconds"] < 0 or p["return_ids"] < 0:
        module.fail_json(msg="min_age_seconds and return_ids must be >= 0")
    validate = p["validate_data"] if p["validate_data"] is not None else bool(p["required_data_keys"])
    target = RedisTarget(module)
    q = None
    try:
        q = BullQueue(target.settings, p["queue"], p["prefix"])
        q.connect()
        res = q.retry(state=p["state"], reason_pattern=p["reason_pattern"], min_age_seconds=p["min_age_seconds"],
                      max_jobs=p["max_jobs"], page_size=p["page_size"], required_keys=p["required_data_keys"],
                      validate=validate, check_mode=module.check_mode, ids_limit=p["return_ids"])
        counts, _meta = q.counts()
    except P3Error as e:
        partial = dict(e.details)
        partial.setdefault("changed", False)
        if partial["changed"]:
            # Earlier pages moved jobs before the error: changed and what moved survive the failure.
            partial["timeline"] = [timeline_entry(
                "bullmq_retry", "%s on %s" % (q.display if q else p["queue"], q.address if q else "?"),
                "moved %d %s job(s) to wait, then failed" % (partial.get("retried", 0), p["state"]))]
        fail_clean(module, e, **partial)
    finally:
        if q is not None:
            q.close()
    moved = res["would_retry"] if module.check_mode else res["retried"]
    res["remaining"] = counts[p["state"]]
    res["capped"] = moved >= p["max_jobs"] and res["remaining"] > res["skipped_reason"] + res["malformed_count"]
    res["node"] = q.address
    res["timeline"] = []
    if moved:
        res["timeline"].append(timeline_entry(
            "bullmq_retry" + (" (check mode: nothing moved)" if module.check_mode else ""),
            "%s on %s" % (q.display, q.address),
            "%s %d %s job(s) to wait%s%s" % (
                "would move" if module.check_mode else "moved", moved, p["state"],
                (", reason ~ /%s/" % p["reason_pattern"]) if p["reason_pattern"] else "",
                (", capped at %d" % p["max_jobs"]) if res["capped"] else "")))
    res["changed"] = bool(moved)
    if res["malformed_count"] and p["on_malformed"] == "fail":
        module.fail_json(msg="%s on %s: %d %s job(s) have malformed data and were not retried (%s)%s" % (
            q.display, q.address, res["malformed_count"], p["state"],
            ", ".join("%s: %s" % (m["id"], m["problem"]) for m in res["malformed"][:3]),
            "; %d others were retried" % moved if moved else ""), **res)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
