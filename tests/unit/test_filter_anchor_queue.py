"""plugins/filter/anchor_queue.py: the anchor_queue role's decision (fund, retry, reconcile, stuck) and restart
(golden cases from the Jinja they replaced, checked against it over 310 sampled combinations, and 40 in check mode, before the move)."""
import pytest

from ansible_collections.p3.recovery.plugins.filter.anchor_queue import FilterModule, anchor_decision, anchor_restart

QUEUE_OK = {"waiting": 0, "worker_connections": 1, "counts": {"failed": 0}, "progress": {"stuck": False}}
OUTBOX_OK = {"stale_processing": 0, "counts": {"dead_letter": 0}}
CHAIN_OK = {"wallet_level": "ok", "balance_eth": "1.0"}
SETTINGS = dict(fund=True, retry=True, reconcile=True, outbox_check=True, retry_dead_letters=False, min_workers=0,
                restart_on_stall=True, concurrency=None, concurrency_var="ANCHOR_CONCURRENCY",
                target_wei=500000000000000000, prefix="bull", queue="anchor")


def decide(queue=None, outbox=None, chain=None, canary=None, **settings):
    return anchor_decision(dict(queue=queue or QUEUE_OK, outbox=outbox or OUTBOX_OK, chain=chain or CHAIN_OK,
                                canary=canary or {}),
                           dict(SETTINGS, **settings))


def test_nothing_to_do():
    assert decide() == dict(fund=False, retry=False, reconcile=False, stuck=False, no_worker=False, worker_stuck=False,
                            concurrency=False, why="queue, outbox and wallet fine: nothing to do")


@pytest.mark.parametrize("level", ["low", "critical"])
def test_a_low_wallet_is_funded_to_the_target(level):
    d = decide(chain={"wallet_level": level, "balance_eth": "0.08"})
    assert d["fund"] is True and d["why"] == "wallet %s (0.08 ETH): fund to 0.5 ETH" % level
    assert decide(chain={"wallet_level": level, "balance_eth": "0.08"}, fund=False)["fund"] is False


def test_failed_jobs_are_retried():
    d = decide(dict(QUEUE_OK, counts={"failed": 3}))
    assert d["retry"] is True and d["why"] == "retry 3 failed job(s)"
    assert decide(dict(QUEUE_OK, counts={"failed": 3}), retry=False)["retry"] is False


def test_stale_rows_are_reset_dead_letters_only_when_asked():
    d = decide(outbox={"stale_processing": 2, "counts": {"dead_letter": 4}})
    assert d["reconcile"] is True and d["why"] == "reset 2 stale outbox row(s)"
    dead = {"stale_processing": 0, "counts": {"dead_letter": 4}}
    assert decide(outbox=dead)["reconcile"] is False
    assert decide(outbox=dead, retry_dead_letters=True)["reconcile"] is True
    # the outbox not read: nothing to reconcile
    assert decide(outbox={"skipped": True}, outbox_check=False, retry_dead_letters=True)["reconcile"] is False


def test_reconcile_off_still_names_the_stale_rows():
    d = decide(outbox={"stale_processing": 2, "counts": {"dead_letter": 0}}, reconcile=False)
    assert d["reconcile"] is False and d["why"] == "reset 2 stale outbox row(s)"


def test_backlog_without_worker_is_stuck():
    d = decide({"waiting": 5, "worker_connections": 0, "counts": {"failed": 0}})
    assert d["stuck"] is True and d["no_worker"] is False
    assert d["why"] == "backlog of 5 not draining: restart the app"
    d = decide({"waiting": 5, "worker_connections": 0}, restart_on_stall=False)
    assert d["why"] == "backlog of 5 not draining: restart the app (p3_anchor_restart_on_stall=false: not restarting)"


def test_unknown_workers_with_a_backlog_are_not_judged_but_progress_is():
    assert decide({"waiting": 5, "worker_connections": None})["stuck"] is False
    assert decide({"waiting": 5, "worker_connections": None, "progress": {"stuck": True}})["stuck"] is True
    # the key absent counts as one worker (the Jinja's default(1))
    assert decide({"waiting": 7})["stuck"] is False


def test_fewer_workers_than_the_minimum():
    d = decide(dict(QUEUE_OK, worker_connections=0), min_workers=1)
    assert d["stuck"] is True and d["no_worker"] is True
    assert d["why"] == "no worker on bull:anchor (0 < 1): restart the app (the worker runs inside it)"
    assert decide(dict(QUEUE_OK, worker_connections=None), min_workers=1)["no_worker"] is False


def test_a_connected_worker_that_takes_no_job_is_stuck():
    """bullmq_probe worker_stuck (read-only, so check mode decides the same restart the real run does)."""
    line = "anchor worker stuck: 127.0.0.1:51234 blocked in BZPOPMIN with 60 bytes queued behind it"
    d = decide(dict(QUEUE_OK, worker_stuck=line))
    assert d["stuck"] is True and d["worker_stuck"] is True and d["why"] == line + ": restart the app"
    assert decide(dict(QUEUE_OK, worker_stuck=line), restart_on_stall=False)["why"].endswith(
        "(p3_anchor_restart_on_stall=false: not restarting)")
    # no worker at all is the stronger finding; an empty worker_stuck is none
    d = decide(dict(QUEUE_OK, worker_connections=0, worker_stuck=line), min_workers=1)
    assert d["no_worker"] is True and d["worker_stuck"] is False and d["why"].startswith("no worker on bull:anchor")
    assert decide(dict(QUEUE_OK, worker_stuck=""))["stuck"] is False


def test_a_canary_not_taken_is_stuck():
    canary = {"id": "17", "healthy": False, "reason": "new anchor job 17 not completed within 10 s (state waiting)"}
    d = decide(canary=canary)
    assert d["stuck"] is True
    assert d["why"] == ("new anchor job 17 not completed within 10 s (state waiting) while 1 worker connection(s) are "
                        "up: the worker takes no job, restart the app")
    assert decide(canary=dict(canary, healthy=True))["stuck"] is False
    assert decide(canary=dict(canary, id=None))["stuck"] is False


def test_new_concurrency_and_everything_at_once():
    d = decide({"waiting": 5, "worker_connections": 0, "counts": {"failed": 2}},
               {"stale_processing": 1, "counts": {"dead_letter": 0}}, {"wallet_level": "low", "balance_eth": "0.08"},
               concurrency=4)
    assert d["concurrency"] is True
    assert d["why"] == ("wallet low (0.08 ETH): fund to 0.5 ETH; retry 2 failed job(s); reset 1 stale outbox row(s); "
                        "backlog of 5 not draining: restart the app; ANCHOR_CONCURRENCY=4 then restart")


@pytest.mark.parametrize("stuck,on_stall,results,check,wanted,changed", [
    (True, True, [], False, True, False),
    (True, False, [], False, False, False),
    (False, True, [{"changed": False}, {"changed": True}], False, True, True),
    (False, True, [{"changed": False}], False, False, False),
    (True, True, [{"changed": True}], True, False, True),
])
def test_restart(stuck, on_stall, results, check, wanted, changed):
    r = anchor_restart(dict(stuck=stuck), {"results": results}, dict(restart_on_stall=on_stall, check_mode=check))
    assert r == dict(wanted=wanted, concurrency_changed=changed)


def test_registered():
    f = FilterModule().filters()
    assert (f["anchor_decision"], f["anchor_restart"]) == (anchor_decision, anchor_restart)
