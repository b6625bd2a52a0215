"""recover_anchor.yml against the real lab: the real BullMQ worker on the Redis Cluster, real anvil, real outbox.

Every assertion reads the services themselves: BullMQ sets and job hashes (redis-py), anchor_outbox /
anchor_receipts (psycopg2), balances, nonces, transactions and receipts (JSON-RPC to anvil).
"""
import glob
import os
import re
import subprocess
import sys
import time

import psycopg2

from p3harness import FUNDER, FUNDING_KEY, LAB_DIR, PREFIX, ROOT, V, balance, lab, lab_fault, lab_status, nonce, rpc
from p3harness import anchor_redis as redis
from p3harness import recover_anchor as recover

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import faults, supervisor  # noqa: E402
from p3lablib.common import Lab, http, wait_until  # noqa: E402

ANCHOR_KEY = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # the app's PRIVATE_KEY (lab only)
TARGET_WEI = 5 * 10 ** 17


def db_rows(sql, args=None):
    conn = psycopg2.connect(V["p3_database_url"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def total_changed(run):
    return sum(run.changed.values()) if run.changed else 0


def test_wallet_empty_and_backlog_recover_exactly_once(healthy_lab, report_dir):
    r = redis()
    wallet = V["p3_anchor_wallet"]
    nonce_before = nonce(wallet)
    empty = lab_fault("wallet-empty")
    # heal leaves jobs an earlier test failed in `failed` (retrying them is the recovery's job): they count too
    failed_ids = sorted(r.zrange(PREFIX + "failed", 0, -1))
    assert len(empty["jobs"]) == 10 and set(empty["jobs"]) <= set(failed_ids)
    backlog = lab_fault("anchor-backlog")
    assert r.llen(PREFIX + "wait") >= backlog["posted"] == 200
    assert balance(wallet) == 0
    outbox_before = dict(db_rows("SELECT status, count(*) FROM anchor_outbox GROUP BY 1"))

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-4000:]
    assert report["healthy"] is True and report["changed"] is True, report["reason"]

    # Queue: nothing failed or waiting; every job that had failed is in completed, its failure cleared.
    assert r.zcard(PREFIX + "failed") == 0
    assert r.llen(PREFIX + "wait") == 0 and r.llen(PREFIX + "active") == 0
    for job_id in failed_ids:
        assert r.zscore(PREFIX + "completed", job_id) is not None, job_id
        assert r.hget(PREFIX + job_id, "failedReason") is None, job_id
    assert sorted(report["actions"]["retry"]["ids"]) == failed_ids
    assert report["actions"]["retry"]["retried"] == len(failed_ids)

    # Exactly once: one receipt per outbox row, every tx on chain from the wallet with data = the row's digest,
    # and the wallet's nonce moved by exactly the number of anchored rows (no second transaction for any job).
    rows = db_rows("SELECT o.id::text, o.digest, o.status, count(r.id), min(r.tx_hash) FROM anchor_outbox o "
                   "LEFT JOIN anchor_receipts r ON r.idempotency_key = o.id::text GROUP BY o.id")
    by_id = dict((row[0], row) for row in rows)
    new_rows = [row for row in rows if row[2] == "completed"]
    for job_id in failed_ids:
        oid, digest, status, receipts, tx_hash = by_id[job_id]
        assert status == "completed" and receipts == 1, by_id[job_id]
        tx = rpc("eth_getTransactionByHash", [tx_hash])
        assert tx["from"].lower() == wallet.lower()
        assert tx["input"].lower() == "0x" + digest.lower()
        assert int(rpc("eth_getTransactionReceipt", [tx_hash])["status"], 16) == 1
    assert all(row[3] == 1 for row in new_rows), [row for row in new_rows if row[3] != 1][:3]
    anchored_now = len(new_rows) - outbox_before.get("completed", 0)
    assert anchored_now == 200 + len(failed_ids)
    assert nonce(wallet) - nonce_before == anchored_now
    assert sum(n for _s, n in db_rows("SELECT status, count(*) FROM anchor_outbox WHERE status <> 'completed' "
                                      "GROUP BY 1")) == 0

    # The wallet got exactly the target (balance at the funding block), not beyond.
    fund = report["actions"]["fund"]
    assert fund["funded"] is True and fund["amount_wei"] == TARGET_WEI
    assert balance(wallet, hex(fund["block_number"])) == TARGET_WEI == fund["balance_after_wei"]
    tx = rpc("eth_getTransactionByHash", [fund["tx_hash"]])
    assert tx["from"].lower() == FUNDER.lower() and int(tx["value"], 16) == TARGET_WEI

    # The stuck backlog was restarted away, and the timeline says so.
    assert report["actions"]["restart"]["hosts"] == ["p3-lab-app"]
    actions = [e["action"] for e in report["timeline"]]
    assert "wallet_fund" in actions and "bullmq_retry" in actions and "app_restart" in actions
    assert run.stats["p3_recover_anchor"]["retried"] == len(failed_ids)

    # A second run on the healed system changes nothing.
    nonce_mid = nonce(FUNDER)
    run2, report2 = recover(report_dir)
    assert run2.rc == 0, run2.stdout[-3000:]
    assert total_changed(run2) == 0, run2.changed
    assert report2["changed"] is False and report2["healthy"] is True
    assert nonce(FUNDER) == nonce_mid


def test_check_mode_moves_no_job_and_sends_nothing(healthy_lab, report_dir):
    r = redis()
    wallet = V["p3_anchor_wallet"]
    empty = lab_fault("wallet-empty")
    failed = sorted(r.zrange(PREFIX + "failed", 0, -1, withscores=True))
    nonces = (nonce(wallet), nonce(FUNDER), int(rpc("eth_getTransactionCount", [FUNDER, "pending"]), 16))
    events = r.xlen(PREFIX + "events")

    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["check_mode"] is True
    assert report["actions"]["retry"]["would_retry"] == len(failed) >= 10 and report["actions"]["retry"]["retried"] == 0
    assert report["actions"]["fund"]["amount_wei"] == TARGET_WEI and report["actions"]["fund"]["funded"] is False
    # Nothing moved, nothing sent.
    assert sorted(r.zrange(PREFIX + "failed", 0, -1, withscores=True)) == failed
    assert set(empty["jobs"]) <= set(j for j, _s in failed)
    assert r.llen(PREFIX + "wait") == 0
    assert r.xlen(PREFIX + "events") == events
    for job_id in empty["jobs"]:
        assert r.hget(PREFIX + job_id, "failedReason"), job_id
    assert (nonce(wallet), nonce(FUNDER), int(rpc("eth_getTransactionCount", [FUNDER, "pending"]), 16)) == nonces
    assert balance(wallet) == 0


def _assert_clean_failure(run, *needles):
    assert run.rc != 0
    assert "Traceback" not in run.stdout
    text = run.stdout
    for n in needles:
        assert re.search(n, text), (n, text[-3000:])


def test_bad_rpc_url_and_wrong_chain_fail_cleanly(healthy_lab, report_dir):
    run, report = recover(report_dir, p3_rpc_url="http://127.0.0.1:1")
    _assert_clean_failure(run, r"127\.0\.0\.1:1\b.*(refused|failed)")
    assert report["healthy"] is False and "refused" in report["reason"]
    run, report = recover(report_dir, p3_chain_id=1)
    _assert_clean_failure(run, r"chain id 31337, expected 1")
    assert report["healthy"] is False


def test_funding_key_without_funds_fails_cleanly(healthy_lab, report_dir):
    r = redis()
    lab_fault("wallet-empty")
    failed_before = r.zcard(PREFIX + "failed")
    broke = "0x" + "11" * 32  # a valid key whose account holds nothing
    run, report = recover(report_dir, p3_anchor_funding_key=broke)
    _assert_clean_failure(run, r"funding account 0x[0-9a-fA-F]{40} has 0 ETH, needs")
    assert broke[2:] not in run.stdout
    assert balance(V["p3_anchor_wallet"]) == 0
    assert r.zcard(PREFIX + "failed") == failed_before >= 10  # nothing retried into a wallet that cannot pay
    assert not report["actions"]["retry"].get("retried")  # the retry never ran


def test_malformed_job_data_fails_cleanly(healthy_lab, report_dir):
    r = redis()
    bad = "p3test-malformed-%d" % int(time.time())
    now = int(time.time() * 1000)
    r.hset(PREFIX + bad, mapping={"name": "anchor", "data": "{not json", "opts": "{}", "timestamp": now,
                                  "failedReason": "boom", "finishedOn": now, "atm": 1})
    r.zadd(PREFIX + "failed", {bad: now})
    try:
        run, report = recover(report_dir)
        _assert_clean_failure(run, r"malformed data and were not retried \(%s: data is not JSON" % bad)
        assert r.zscore(PREFIX + "failed", bad) is not None  # left where it was, never pushed to wait
        assert bad not in r.lrange(PREFIX + "wait", 0, -1)
    finally:
        r.zrem(PREFIX + "failed", bad)
        r.delete(PREFIX + bad)


def test_private_keys_never_in_output_at_vvvv(healthy_lab, report_dir):
    lab_fault("wallet-empty")
    run, report = recover(report_dir, verbosity=4)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["actions"]["fund"]["funded"] is True
    text = run.stdout.lower()
    assert FUNDING_KEY[2:].lower() not in text
    assert ANCHOR_KEY not in text
    assert V["p3_redis_password"] not in run.stdout
    with open(report["report"]) as f:
        assert FUNDING_KEY[2:] not in f.read()


def test_concurrency_is_set_in_supervisor_and_the_app_restarts_with_it(healthy_lab, report_dir):
    conf = os.path.join(LAB_DIR, "supervisor", "supervisord.conf")
    with open(conf) as f:
        original = f.read()
    supervisorctl = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
    ctl = [supervisorctl, "-c", conf]
    pid_before = subprocess.run(ctl + ["pid", "p3app"], capture_output=True, text=True).stdout.strip()
    try:
        run, report = recover(report_dir, p3_anchor_concurrency=8, verbosity=4)
        assert run.rc == 0, run.stdout[-3000:]
        with open(conf) as f:
            assert re.search(r'\[program:p3app\][^\[]*environment=[^\n]*ANCHOR_CONCURRENCY="8"', f.read())
        pid = subprocess.run(ctl + ["pid", "p3app"], capture_output=True, text=True).stdout.strip()
        assert pid != pid_before
        with open("/proc/%s/environ" % pid, "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        assert env[b"ANCHOR_CONCURRENCY"] == b"8"
        assert ANCHOR_KEY not in run.stdout  # the rest of the program section (PRIVATE_KEY) never shows
        assert report["actions"]["restart"]["hosts"] == ["p3-lab-app"]
        # Again: already 8, nothing to change, no restart.
        run2, report2 = recover(report_dir, p3_anchor_concurrency=8)
        assert run2.rc == 0 and total_changed(run2) == 0, run2.changed
        assert subprocess.run(ctl + ["pid", "p3app"], capture_output=True, text=True).stdout.strip() == pid
    finally:
        with open(conf, "w") as f:
            f.write(original)
        for b in glob.glob(conf + ".*~"):
            os.remove(b)
        subprocess.run(ctl + ["update", "p3app"], capture_output=True, text=True)
        lab("heal", timeout=240)


RECONCILE_TASK = "Act - reconcile the outbox (stale processing rows, dead letters when asked)"
OUTBOX_COLUMNS = "id::text, status, retry_count, last_error, heartbeat_at, updated_at"


def _outbox_exec(sql, args=None):
    conn = psycopg2.connect(V["p3_database_url"], connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _outbox_rows(tag):
    return dict((r[0], r) for r in db_rows(
        "SELECT %s FROM anchor_outbox WHERE app_id = %%s ORDER BY id" % OUTBOX_COLUMNS, (tag,)))


def _keep_fresh(ids):
    """Heartbeat the fresh processing rows, as a live worker does every 15 s (so they stay fresh however long the
    playbook runs take)."""
    _outbox_exec("UPDATE anchor_outbox SET heartbeat_at = now() - interval '5 seconds' WHERE id::text = ANY(%s)",
                 (list(ids),))
    return _outbox_rows_by_id(ids)


def _outbox_rows_by_id(ids):
    return dict((r[0], r) for r in db_rows(
        "SELECT %s FROM anchor_outbox WHERE id::text = ANY(%%s)" % OUTBOX_COLUMNS, (list(ids),)))


def test_outbox_reconcile_stale_rows_and_gated_dead_letters(healthy_lab, report_dir):
    """Real stale state in the lab's anchor_outbox: processing rows whose heartbeat is older than 120 s go back to
    pending; fresh processing rows and rows without a heartbeat stay; dead letters are retried only with
    p3_anchor_retry_dead_letters; check mode changes no row; a second run changes nothing.

    The rows carry their own app_id and ids no BullMQ job names, so the lab's worker (which only touches the outbox
    row of a job it processes, and has no outbox poller) never picks them up."""
    tag = "p3test-outbox-%d-%d" % (os.getpid(), int(time.time()))

    def insert(status, heartbeat_sql, retry_count=0, last_error=None):
        return _outbox_exec(
            "INSERT INTO anchor_outbox (type, app_id, digest, payload, status, retry_count, last_error, heartbeat_at, "
            "created_at, updated_at) VALUES ('anchor', %%s, md5(random()::text), '{}'::jsonb, %%s, %%s, %%s, %s, "
            "now() - interval '1 hour', now() - interval '10 minutes') RETURNING id::text" % heartbeat_sql,
            (tag, status, retry_count, last_error))[0][0]

    try:
        stale = [insert("processing", "now() - interval '%d seconds'" % s) for s in (121 + 10, 600, 3600)]
        fresh = [insert("processing", "now() - interval '5 seconds'") for _ in range(2)]
        no_heartbeat = insert("processing", "NULL")
        dead = [insert("dead_letter", "NULL", 5, "Web3RPCError: nonce too low") for _ in range(2)]
        ours = stale + fresh + [no_heartbeat] + dead
        before = _outbox_rows(tag)
        assert len(before) == len(ours)

        # Check mode, gate on: says what it would reset, changes no row.
        run, report = recover(report_dir, check=True, p3_anchor_retry_dead_letters=True)
        assert run.rc == 0, run.stdout[-3000:]
        would = run.result(RECONCILE_TASK)
        assert set(stale) <= set(would["stale_reset"]) and not set(fresh + [no_heartbeat] + dead) & set(
            would["stale_reset"])
        assert set(dead) <= set(would["dead_letters_retried"])
        assert report["check_mode"] is True and report["before"]["outbox"]["stale_processing"] >= len(stale)
        assert _outbox_rows(tag) == before

        # Real run, gate off (the default): stale rows -> pending with the heartbeat cleared; nothing else moves.
        kept = _keep_fresh(fresh)
        run, report = recover(report_dir)
        assert run.rc == 0, run.stdout[-3000:]
        res = run.result(RECONCILE_TASK)
        assert res["changed"] is True and set(stale) <= set(res["stale_reset"])
        assert res["dead_letters_retried"] == []
        after = _outbox_rows(tag)
        for i in stale:
            assert after[i][1:5] == ("pending", 0, None, None), after[i]
            assert after[i][5] > before[i][5]  # updated_at moved
        for i in fresh:
            assert after[i] == kept[i]  # untouched, heartbeat included
        assert after[no_heartbeat] == before[no_heartbeat]  # P3 leaves processing rows without a heartbeat alone
        for i in dead:
            assert after[i] == before[i]  # not without the gate
        assert report["changed"] is True and report["healthy"] is True, report["reason"]
        assert "stale outbox row" in report["reason"]

        # Gate on: dead letters -> pending, retry_count 0, last_error cleared; the rest stays as it is.
        kept = _keep_fresh(fresh)
        mid = _outbox_rows(tag)
        run, report = recover(report_dir, p3_anchor_retry_dead_letters=True)
        assert run.rc == 0, run.stdout[-3000:]
        res = run.result(RECONCILE_TASK)
        assert set(dead) <= set(res["dead_letters_retried"]) and not set(ours) & set(res["stale_reset"])
        after = _outbox_rows(tag)
        for i in dead:
            assert after[i][1:5] == ("pending", 0, None, None), after[i]
        for i in stale + [no_heartbeat]:
            assert after[i] == mid[i]
        for i in fresh:
            assert after[i] == kept[i]

        # Second run with the gate: nothing left to do.
        kept = _keep_fresh(fresh)
        settled = _outbox_rows(tag)
        run2, report2 = recover(report_dir, p3_anchor_retry_dead_letters=True)
        assert run2.rc == 0, run2.stdout[-3000:]
        assert total_changed(run2) == 0, run2.changed
        assert report2["changed"] is False and report2["healthy"] is True
        assert _outbox_rows(tag) == settled
    finally:
        _outbox_exec("DELETE FROM anchor_outbox WHERE app_id = %s", (tag,))
    assert _outbox_rows(tag) == {}


def test_lab_status_is_unhealthy_while_anchor_jobs_are_failed(healthy_lab):
    """The lab's status judges the anchor queue as the anchor playbook does: a failed job is unhealthy (named with
    its count), even once the wallet has its funds back; heal retries them and the lab is healthy again."""
    fault = lab_fault("wallet-empty")
    wallet = V["p3_anchor_wallet"]
    rpc("anvil_setBalance", [wallet, hex(10 ** 19)])  # the wallet is fine again; its jobs stay failed
    failed = redis().zcard(PREFIX + "failed")
    assert failed >= len(fault["jobs"]) > 0 and balance(wallet) > 10 ** 18
    st = lab_status()
    assert st["anchor"]["failed"] == failed
    assert st["healthy"] is False and "anchor: failed=%d" % failed in "; ".join(st["problems"]), st["problems"]
    assert not any(p.startswith("wallet") for p in st["problems"]), st["problems"]
    lab("heal", timeout=240)
    st = lab_status()
    assert redis().zcard(PREFIX + "failed") == 0 and st["anchor"]["failed"] == 0
    assert st["healthy"] is True, st["problems"]


def test_a_queue_without_a_worker_is_recovered_even_with_nothing_waiting(healthy_lab, report_dir):
    """Runbook "restart anchor worker", before the backlog shows: the app serves but its worker is gone and nothing
    waits yet (the next job would wait for good). recover_anchor's verification wants a worker, so its decision does
    too: check mode selects the app restart and restarts nothing; the real run restarts the app, the worker is back
    and a new job completes; a second run changes nothing. (Before: on the default p3_anchor_min_workers 0 nothing
    was selected and the real run failed its own verification, "no worker".)"""
    L = Lab()
    program = supervisor.app_program(L)
    pid = supervisor.pid_of(L, program)
    assert faults.anchor_worker_down(L, jobs=0)["worker_connections"] == 0
    r = redis()
    assert r.llen(PREFIX + "wait") == 0 and r.llen(PREFIX + "active") == 0

    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["decision"]["no_worker"] is True and report["decision"]["stuck"] is True, report["decision"]
    why = run.result("Decide - what to do")["msg"]
    assert "no worker on" in why and "restart the app" in why, why
    assert supervisor.pid_of(L, program) == pid and faults.worker_connections(L) == 0  # check mode changed nothing

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["decision"]["no_worker"] is True and report["healthy"] is True, report.get("reason")
    assert report["actions"]["restart"]["hosts"], report["actions"]
    assert supervisor.pid_of(L, program) != pid and faults.worker_connections(L) >= 1
    assert report["after"]["queue"]["worker_connections"] >= 1
    code, body = http("POST", L.app_url + "/api/anchor", {"appId": "p3-recovery-test", "event": "after-no-worker"},
                      timeout=10)
    assert code == 202, (code, body)
    job = body["jobId"]
    assert wait_until(lambda: r.zscore(PREFIX + "completed", job) is not None, 60, 0.5), r.hgetall(PREFIX + job)

    pid = supervisor.pid_of(L, program)
    run, report = recover(report_dir)
    assert run.rc == 0 and total_changed(run) == 0, run.changed
    assert report["decision"]["no_worker"] is False and supervisor.pid_of(L, program) == pid
