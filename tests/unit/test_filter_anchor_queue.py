"""plugins/filter/anchor_queue.py: the anchor_queue role's decision (fund, retry, reconcile, stuck) and restart
(golden cases from the Jinja they replaced, checked against it over 310 sampled combinations, and 40 in check mode, before the move)."""
import json

import pytest

from ansible_collections.p3.recovery.plugins.filter.anchor_queue import (
    FilterModule, anchor_canary, anchor_decision, anchor_restart)

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


# -- anchor_canary: the canary's verdict (golden cases checked against the Jinja it replaced in
#    roles/anchor_queue/vars/main.yml over 260 combinations of POST answers, queue reads and waits) ------------------
CANARY = {"path": "/api/anchor", "job_field": "jobId", "wait": 90}


def canary(post, job=None, **settings):
    return anchor_canary(post, job or {}, dict(CANARY, **settings))


def test_canary_without_an_answer_names_the_request_error():
    v = canary({"status": -1, "msg": "Request failed: <urlopen error [Errno 111] Connection refused>"})
    assert v == {"name": "canary", "healthy": False, "id": None, "status": -1, "state": None,
                 "reason": "new anchor job not accepted: POST /api/anchor -> -1 Request failed: <urlopen error "
                           "[Errno 111] Connection refused>"}
    # the POST did not run at all
    assert canary({})["reason"] == "new anchor job not accepted: POST /api/anchor -> no answer "


def test_canary_refused_names_the_status_and_the_answer_cut_to_200_characters():
    v = canary({"status": 500, "json": {"error": "boom " + "word " * 60}})
    assert v["healthy"] is False and v["id"] is None and v["status"] == 500 and "stuck" not in v
    head = "new anchor job not accepted: POST /api/anchor -> 500 "
    assert v["reason"].startswith(head + '{"error": "boom word') and v["reason"].endswith(" word...")
    assert len(v["reason"]) - len(head) <= 200
    # short enough (within Jinja truncate's leeway of 5): whole
    assert canary({"status": 401, "json": {"e": "x" * 195}})["reason"].endswith('"x' + "x" * 194 + '"}')


@pytest.mark.parametrize("answer", [{"jobId": ""}, {"jobId": None}, {"jobId": []}, {"other": 1}, ["x"], None])
def test_canary_without_a_job_id_in_the_answer_is_not_accepted(answer):
    post = {"status": 201, "json": answer}
    if answer is None:
        post["msg"] = "OK (unknown bytes)"
    v = canary(post, {"jobs": [{"id": "1", "state": "completed"}]})
    assert v["healthy"] is False and v["id"] is None and v["state"] is None
    assert v["reason"].startswith("new anchor job not accepted: POST /api/anchor -> 201 ")
    assert v["reason"].endswith("OK (unknown bytes)" if answer is None else json.dumps(answer))


def test_canary_job_id_from_the_answer_a_list_gives_its_first():
    done = {"jobs": [{"id": "x", "state": "completed"}]}
    assert canary({"status": 201, "json": {"jobId": "17"}}, done)["id"] == "17"
    assert canary({"status": 201, "json": {"jobId": 42}}, done)["id"] == 42
    assert canary({"status": 201, "json": {"jobId": ["a1", "a2"]}}, done)["id"] == "a1"
    assert canary({"status": 201, "json": {"id": "9"}}, done, job_field="id")["id"] == "9"


def test_canary_completed_is_healthy():
    v = canary({"status": 201, "json": {"jobId": "17"}}, {"jobs": [{"id": "17", "state": "completed"}],
                                                          "worker_stuck": "ignored once completed"})
    assert v == {"name": "canary", "healthy": True, "id": "17", "status": 201, "state": "completed", "stuck": None,
                 "reason": "new anchor job 17 completed"}


def test_canary_waiting_behind_a_stuck_worker_says_so():
    v = canary({"status": 201, "json": {"jobId": "17"}}, {"jobs": [{"id": "17", "state": "wait"}],
                                                          "worker_stuck": "anchor worker stuck: x"})
    assert v["healthy"] is False and v["state"] == "wait" and v["stuck"] == "anchor worker stuck: x"
    assert v["reason"] == "new anchor job 17 not taken, the worker is stuck: anchor worker stuck: x"


@pytest.mark.parametrize("job,state,shown", [
    ({"jobs": [{"id": "17", "state": "wait"}], "worker_stuck": None}, "wait", "wait"),
    # the stuck signature counts only while the job still waits
    ({"jobs": [{"id": "17", "state": "active"}], "worker_stuck": "w"}, "active", "active"),
    ({"jobs": [{"id": "17", "state": "failed"}]}, "failed", "failed"),
    ({"jobs": [{"id": "17", "state": ""}]}, "", "unknown"),
    ({"jobs": [{"id": "17"}]}, None, "unknown"),
    ({"jobs": []}, None, "unknown"),
    ({"skipped": True}, None, "unknown"),
])
def test_canary_not_completed_names_the_wait_and_the_state(job, state, shown):
    v = canary({"status": 201, "json": {"jobId": "17"}}, job, wait="10")
    assert v["healthy"] is False and v["state"] == state and v["stuck"] is None and v["status"] == 201
    assert v["reason"] == "new anchor job 17 not completed within 10 s (state %s)" % shown


def test_canary_filter_is_registered():
    assert FilterModule().filters()["anchor_canary"] is anchor_canary
