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

from p3harness import ROOT, V, anchor_redis, rpc

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

