# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decisions of the anchor_queue role (p3.recovery.recover_anchor): fund, retry, reconcile, restart, and the
canary's verdict. Each filter is documented in its <name>.yml."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from collections.abc import Mapping

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.filter.core import to_json
from jinja2.filters import do_truncate

WEI_PER_ETH = 1000000000000000000


def _on(settings, name):
    return boolean(settings.get(name, False), strict=False)


def _count(value):
    return int(value or 0)


def anchor_decision(probes, settings):
    """What the anchor_queue role does, from the probes before the act.

    probes: queue (bullmq_probe result), outbox (outbox_probe result, skipped when not read), chain (chain_probe
    result), canary (the canary verdict before the act, {} when no canary ran). settings: fund, retry, reconcile,
    outbox_check, retry_dead_letters, min_workers, restart_on_stall, concurrency, concurrency_var, target_wei,
    prefix, queue (names of the BullMQ queue). Returns fund, retry, reconcile, stuck, no_worker, worker_stuck, concurrency and why.
    """
    queue = probes.get("queue") or {}
    outbox = probes.get("outbox") or {}
    chain = probes.get("chain") or {}
    canary = probes.get("canary") or {}
    waiting = queue.get("waiting", 0)
    workers = queue.get("worker_connections")
    min_workers = _count(settings.get("min_workers"))
    # Fewer worker connections than min_workers (unknown - CLIENT LIST refused - is not judged).
    no_worker = min_workers > 0 and workers is not None and int(workers) < min_workers
    # Read-only: a worker connected that takes no job (bullmq_probe worker_stuck) - check mode sees it too.
    worker_stuck = not no_worker and queue.get("worker_stuck") not in (None, "")
    # A canary job accepted but not taken by the worker within its wait is a stuck queue.
    canary_stuck = canary.get("id") not in (None, "") and canary.get("healthy") is False
    stuck = bool((queue.get("progress") or {}).get("stuck")) or (
        _count(waiting) > 0 and queue.get("worker_connections", 1) == 0) or no_worker or worker_stuck or canary_stuck
    level = chain.get("wallet_level", "ok")
    failed = _count((queue.get("counts") or {}).get("failed"))
    stale = _count(outbox.get("stale_processing"))
    dead = _count((outbox.get("counts") or {}).get("dead_letter"))
    concurrency = settings.get("concurrency")
    fund = _on(settings, "fund") and level in ("low", "critical")
    retry = _on(settings, "retry") and failed > 0

    why = []
    if fund:
        why.append("wallet %s (%s ETH): fund to %s ETH" % (
            level, chain.get("balance_eth"), int(settings.get("target_wei") or 0) / float(WEI_PER_ETH)))
    if retry:
        why.append("retry %d failed job(s)" % failed)
    if _on(settings, "outbox_check") and stale > 0:
        why.append("reset %d stale outbox row(s)" % stale)
    if stuck:
        if no_worker:
            line = "no worker on %s:%s (%s < %d): restart the app (the worker runs inside it)" % (
                settings.get("prefix"), settings.get("queue"), workers, min_workers)
        elif worker_stuck:
            line = "%s: restart the app" % queue.get("worker_stuck")
        elif canary_stuck:
            line = "%s while %s worker connection(s) are up: the worker takes no job, restart the app" % (
                canary.get("reason"), workers)
        else:
            line = "backlog of %s not draining: restart the app" % waiting
        if not _on(settings, "restart_on_stall"):
            line += " (p3_anchor_restart_on_stall=false: not restarting)"
        why.append(line)
    if concurrency is not None:
        why.append("%s=%s then restart" % (settings.get("concurrency_var"), concurrency))
    return dict(
        fund=fund,
        retry=retry,
        reconcile=_on(settings, "reconcile") and _on(settings, "outbox_check") and (
            stale > 0 or (_on(settings, "retry_dead_letters") and dead > 0)),
        stuck=stuck,
        no_worker=no_worker,
        worker_stuck=worker_stuck,
        concurrency=concurrency is not None,
        why="; ".join(why) or "queue, outbox and wallet fine: nothing to do",
    )


def anchor_restart(decision, concurrency_set, settings):
    """Restart the app hosts or not, after the act: wanted and concurrency_changed.

    decision: the anchor_decision; concurrency_set: the registered loop of the concurrency change (its results);
    settings: restart_on_stall, check_mode.
    """
    changed = any(r.get("changed") for r in (concurrency_set or {}).get("results") or [])
    wanted = not _on(settings, "check_mode") and (
        (bool(decision.get("stuck")) and _on(settings, "restart_on_stall")) or changed)
    return dict(wanted=wanted, concurrency_changed=changed)


def anchor_canary(post, job, settings):
    """The verdict of the canary job (tasks/canary.yml): one new job POSTed through the app, then its state read
    from the queue.

    post: the registered ansible.builtin.uri result of the POST ({} before it ran); job: the registered
    bullmq_probe result of the wait ({} or skipped when no job id came back); settings: path (p3_anchor_canary_path),
    job_field (p3_anchor_canary_job_field: where the app's JSON answer names the job id, a list gives its first
    item), wait (the seconds the job was waited for). Returns name, healthy, id, status, state, reason, and stuck
    (the worker's stuck signature seen while the job waited, else None) when a job id came back.
    """
    post = post if isinstance(post, Mapping) else {}
    job = job if isinstance(job, Mapping) else {}
    answer = post.get("json")
    job_id = answer.get(settings.get("job_field")) if isinstance(answer, Mapping) else None
    if isinstance(job_id, (list, tuple, Mapping)):
        job_id = next(iter(job_id), None)
    if job_id in (None, ""):
        detail = to_json(answer) if answer is not None else post.get("msg", "")
        return dict(name="canary", healthy=False, id=None, status=post.get("status"), state=None,
                    reason="new anchor job not accepted: POST %s -> %s %s" % (
                        settings.get("path"), post.get("status", "no answer"),
                        do_truncate(None, str(detail), 200, leeway=5)))  # the role's Jinja `truncate(200)`
    jobs = job.get("jobs") or []
    state = jobs[0].get("state") if jobs and isinstance(jobs[0], Mapping) else None
    stuck = job.get("worker_stuck") if state == "wait" else None
    if state == "completed":
        outcome = "completed"
    elif stuck is not None:
        outcome = "not taken, the worker is stuck: %s" % (stuck,)
    else:
        outcome = "not completed within %s s (state %s)" % (settings.get("wait"), state or "unknown")
    return dict(name="canary", healthy=state == "completed", id=job_id, status=post.get("status"), state=state,
                stuck=stuck, reason="new anchor job %s %s" % (job_id, outcome))


class FilterModule(object):
    def filters(self):
        return {
            "anchor_decision": anchor_decision,
            "anchor_restart": anchor_restart,
            "anchor_canary": anchor_canary,
        }
