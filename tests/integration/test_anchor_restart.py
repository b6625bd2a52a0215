"""An app restart in the middle of an anchor job sends its transaction once (issue 17, the chaos soak's
"anchored twice" bug; pass c).

The chain is held still (anvil automine off) so the job's transaction is sent and waits in the pool, the app gets
its SIGTERM (supervisor restart, as app_restart does it), and the chain mines 2 s later. Before the fix the worker
was force-closed on SIGTERM between the mined transaction and its receipt row; BullMQ moved the stalled job back to
wait and the next worker sent a second transaction for the same digest. Every assertion reads real state: anvil's
blocks, the outbox and receipt rows in PostgreSQL, BullMQ's completed set in Redis.
"""
import json
import os
import sys
import threading
import time
import urllib.request

from p3harness import ROOT, V, anchor_redis, run_playbook, rpc

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import supervisor  # noqa: E402
from p3lablib.common import Lab, wait_until as poll  # noqa: E402
from p3lablib.invariants import _db, _onchain_counts, chain_block  # noqa: E402


def _post_anchor(event):
    req = urllib.request.Request(V["p3_app_url"] + "/api/anchor", data=json.dumps(
        {"appId": "restart-test", "event": event}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
        return json.loads(resp.read())["jobId"]


def _pending_inputs():
    """The input data of every transaction waiting in anvil's pool (hex, no 0x, lower case)."""
    block = rpc("eth_getBlockByNumber", ["pending", True]) or {}
    return {(tx.get("input") or "0x")[2:].lower() for tx in block.get("transactions") or ()}


def _receipt(L, oid):
    rows = _db(L, "SELECT status, tx_hash FROM anchor_receipts WHERE idempotency_key = %s", (oid,))
    return rows[0] if rows else None


def test_restart_mid_anchor_job_sends_one_transaction(healthy_lab):
    L = Lab()
    program = supervisor.app_program(L)
    old_pid = supervisor.pid_of(L, program)
    start_block = chain_block(L)
    rpc("evm_setAutomine", [False])
    restarter = None
    try:
        oid = _post_anchor("mid-restart-%d" % time.time_ns())
        digest = _db(L, "SELECT digest FROM anchor_outbox WHERE id::text = %s", (oid,))[0][0].lower()
        assert poll(lambda: digest in _pending_inputs(), 20), "the worker never sent the job's transaction"
        restarter = threading.Thread(target=supervisor.ctl, args=(L, "restart", program), kwargs={"timeout": 60})
        restarter.start()
        time.sleep(2)  # the scenario: the chain mines the transaction 2 s after the SIGTERM
        rpc("evm_mine")
    finally:
        rpc("evm_setAutomine", [True])
        if restarter is not None:
            restarter.join(90)
    assert supervisor.pid_of(L, program) not in (None, old_pid), "the app was not restarted"
    # a stalled job comes back after BullMQ's lock (30 s) and stalled check (30 s): wait long enough to see a retry
    r = anchor_redis()
    assert poll(lambda: r.zscore("{bull}:anchor:completed", oid) is not None
                and (_receipt(L, oid) or ("",))[0] == "confirmed", 100), (
        r.hgetall("{bull}:anchor:" + oid), _receipt(L, oid))
    counts = _onchain_counts(L, [digest], start_block)
    assert counts[digest.replace("0x", "")] == 1, counts


WAIT = "Wait for the anchor jobs active now to finish before the stop (BullMQ active list, bounded)"
GAVE_UP = "Say when it gave up waiting for the active anchor jobs (the restart goes on)"


def _probe_waiting(r):
    """app_restart's wait polls the queue's active list (LRANGE) on the queue's master: a connection there whose
    last command is lrange (nothing else in an idle lab sends one)."""
    node = r.get_node_from_key("{bull}:anchor:active")
    return any(c.get("cmd") == "lrange" for c in r.get_redis_connection(node).client_list())


def _fake_active_job(r):
    """A job in BullMQ's active list with its lock held (as a worker in the middle of it leaves it): the app's
    workers leave it alone (locked, so not stalled). The lab app's own jobs cannot stay active longer than its 10 s
    receipt wait, less than a playbook needs to reach the stop."""
    job_id = "restart-wait-%d" % time.time_ns()
    r.set("{bull}:anchor:%s:lock" % job_id, "test-token", px=120000)
    r.lpush("{bull}:anchor:active", job_id)
    return job_id


def _finish_fake_job(r, job_id):
    r.lrem("{bull}:anchor:active", 0, job_id)
    r.delete("{bull}:anchor:%s:lock" % job_id)


def test_app_restart_waits_for_the_active_anchor_job(healthy_lab):
    """The collection's side: restart_app.yml waits (bounded) for the anchor job active at the stop before it stops
    the app - the job finishes only once the role is seen waiting, and the app was still the old one then - and
    says so in its result; with a short bound it gives up, says so in one line naming the job, and restarts."""
    L = Lab()
    program = supervisor.app_program(L)
    r = anchor_redis()
    seen = {}
    job_id = _fake_active_job(r)
    try:
        old_pid = supervisor.pid_of(L, program)

        def finish_once_the_role_waits():
            seen["waiting"] = poll(lambda: _probe_waiting(r), 60, 0.2)
            seen["pid_at_finish"] = supervisor.pid_of(L, program)
            _finish_fake_job(r, job_id)

        run = run_playbook("restart_app.yml", {"p3_restart_force": True, "p3_restart_anchor_wait_seconds": 60},
                           on_start=finish_once_the_role_waits)
    finally:
        _finish_fake_job(r, job_id)
    assert run.rc == 0, run.stdout[-3000:]
    assert seen["waiting"], ("the role never waited on the anchor queue", [x.get("active_wait") for x in
                                                                           run.results(WAIT)])
    assert seen["pid_at_finish"] == old_pid, "the app was stopped before its active job finished"
    waited = run.result(WAIT)["active_wait"]
    assert waited["jobs"] >= 1 and not waited["gave_up"] and waited["still_active"] == [], waited
    assert all(res.get("skipped") for res in run.results(GAVE_UP)), run.results(GAVE_UP)
    new_pid = supervisor.pid_of(L, program)
    assert new_pid not in (None, old_pid), "the app was not restarted"

    # bounded: a job that does not finish is waited for 2 s, named, and the restart goes on
    job_id = _fake_active_job(r)
    try:
        run = run_playbook("restart_app.yml", {"p3_restart_force": True, "p3_restart_anchor_wait_seconds": 2})
    finally:
        _finish_fake_job(r, job_id)
    assert run.rc == 0, run.stdout[-3000:]
    waited = run.result(WAIT)["active_wait"]
    assert waited["gave_up"] and job_id in waited["still_active"] and waited["seconds"] >= 2, waited
    msg = run.result(GAVE_UP)["msg"]
    assert msg.startswith("gave up waiting after 2 s: 1 anchor job(s) still active (%s)" % job_id), msg
    assert supervisor.pid_of(L, program) not in (None, new_pid), "the app was not restarted after the wait"
