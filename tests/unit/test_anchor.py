"""Pure logic of the anchor scenario: job data checks, reason grouping, queue verdicts, wallet arithmetic,
supervisor / systemd environment editing, outbox verdicts."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import bullmq, chain, outbox, process_env
from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline, P3Error


def test_decode_job_data():
    assert bullmq.decode_job_data('{"outboxId": "a"}', ["outboxId"]) == ({"outboxId": "a"}, None)
    assert bullmq.decode_job_data(None)[1] == "job hash missing or without data"
    assert bullmq.decode_job_data("{not json")[1].startswith("data is not JSON")
    assert bullmq.decode_job_data("[1]")[1] == "data is not a JSON object"
    assert bullmq.decode_job_data('{"x": 1}', ["outboxId", "digest"])[1] == "data lacks outboxId, digest"


def test_group_reasons_most_frequent_first():
    out = bullmq.group_reasons([("a", 1), ("b", 5), ("a", 3), (None, None)])
    assert out[0] == {"reason": "a", "count": 2, "latest_ms": 3}
    assert {"reason": "(no failedReason)", "count": 1, "latest_ms": None} in out


def test_validate_names_and_slots():
    with pytest.raises(P3Error):
        bullmq.validate_names("", "bull")
    with pytest.raises(P3Error):
        bullmq.validate_names("anchor", "bu ll")
    assert bullmq.key_slot("{bull}:anchor:wait") == bullmq.key_slot("{bull}:anchor:failed")
    assert bullmq.key_slot("bull:anchor:wait") != bullmq.key_slot("bull:anchor:failed")


def _counts(**kw):
    c = dict((s, 0) for s in bullmq.STATES)
    c.update(kw)
    return c


TH = dict(max_waiting=1000, max_failed=0, max_wait_age_seconds=None, require_worker=True, max_stalled=0)


def test_queue_verdict():
    ok, reason = bullmq.queue_verdict(_counts(completed=3), {"worker_connections": 1}, TH)
    assert ok and "0 waiting" in reason
    ok, reason = bullmq.queue_verdict(_counts(failed=10), {"failed_reasons": [{"reason": "gas", "count": 10}]}, TH)
    assert not ok and "10 failed > 0 (top: gas x10)" in reason
    ok, reason = bullmq.queue_verdict(_counts(wait=5), {"worker_connections": 0}, TH)
    assert not ok and "no worker connected" in reason
    ok, reason = bullmq.queue_verdict(_counts(wait=200), {"worker_connections": 4,
                                                          "progress": {"stuck": True, "seconds": 3}}, TH)
    assert not ok and "not draining" in reason
    ok, reason = bullmq.queue_verdict(_counts(wait=2000), {"paused": True}, TH)
    assert "2000 jobs waiting > 1000" in reason and "paused" in reason


def test_stalled_means_active_without_a_lock_not_a_mark_of_the_stalled_check():
    """BullMQ's stalled check marks every active job (the stalled set) and a job's next lock renewal or its end
    removes the mark: marks under traffic are not stalled jobs (the chaos round's final diagnose called one mark
    "1 stalled jobs" while the worker was taking jobs). A job is stalled when it is active and its lock is gone."""
    marked = {"worker_connections": 4, "stalled": 2, "active_without_lock": []}
    ok, reason = bullmq.queue_verdict(_counts(active=2, completed=9), marked, TH)
    assert ok and "2 active" in reason, reason
    ok, reason = bullmq.queue_verdict(_counts(active=2), {"worker_connections": 4, "stalled": 2,
                                                          "active_without_lock": ["17"]}, TH)
    assert not ok and reason == "1 stalled jobs", reason


class _NonceRpc(object):
    """Answers chain_facts' reads; the latest nonce moves on by `mined` at each read after the first."""
    display = "rpc"

    def __init__(self, latest, pending, mined):
        self.latest, self.pending, self.mined, self.reads = latest, pending, mined, 0

    def chain_id(self):
        return 31337

    def block(self, tag):
        return {"number": "0x10", "timestamp": "0x0"}

    def balance(self, wallet):
        return 10 ** 18

    def nonce(self, wallet, tag):
        if tag == "pending":
            return self.pending
        self.reads += 1
        if self.reads > 1 and self.mined is None:
            raise P3Error("eth_getTransactionCount rpc failed: timed out after 5s")
        return self.latest + (self.mined if self.reads > 1 else 0)


def test_a_transaction_in_flight_is_not_stuck_one_still_pending_later_is():
    """The chaos round's final diagnose read nonce pending 674 > latest 673 once, while the worker was sending, and
    called it stuck. Stuck means the transactions pending at the first read are not all mined a moment later."""
    wallet = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    naps = []
    out = chain.chain_facts(_NonceRpc(673, 674, mined=1), wallet=wallet, low=1, critical=0, clock=lambda: 0.0,
                            pending_confirm_seconds=2, sleep=naps.append)
    assert out["healthy"] is True and naps == [2] and out["nonce_latest_confirmed"] == 674, out
    out = chain.chain_facts(_NonceRpc(673, 675, mined=1), wallet=wallet, low=1, critical=0, clock=lambda: 0.0,
                            pending_confirm_seconds=2, sleep=naps.append)
    assert out["healthy"] is False and "latest 674 after 2s" in out["reason"], out
    # pending_confirm_seconds 0 (no confirmation window): the one read decides
    out = chain.chain_facts(_NonceRpc(673, 674, mined=1), wallet=wallet, low=1, critical=0, clock=lambda: 0.0)
    assert out["healthy"] is False and "1 pending transaction(s) stuck" in out["reason"], out


def test_wallet_arithmetic():
    low, target, cap = 10 ** 17, 5 * 10 ** 17, 10 ** 18
    assert chain.fund_amount(0, low, target, cap) == (target, False)
    assert chain.fund_amount(low, low, target, cap) == (0, False)  # not below the threshold: idempotent
    assert chain.fund_amount(10 ** 16, low, target, 10 ** 17) == (10 ** 17, True)
    assert chain.wallet_level(0, low, 5 * 10 ** 16) == "critical"
    assert chain.wallet_level(6 * 10 ** 16, low, 5 * 10 ** 16) == "low"
    assert chain.eth(5 * 10 ** 17) == "0.5" and chain.eth(0) == "0" and chain.eth(10 ** 18 + 1) == "1.000000000000000001"
    with pytest.raises(P3Error):
        chain.check_thresholds(10 ** 17, target=10 ** 16)
    with pytest.raises(P3Error):
        chain.check_thresholds(10 ** 17, critical=2 * 10 ** 17)
    with pytest.raises(P3Error):
        chain.check_address("0x123", "wallet")


def test_load_account_never_echoes_the_key():
    with pytest.raises(P3Error) as e:
        chain.load_account("0xdeadbeef-not-a-key")
    assert "deadbeef" not in e.value.msg
    acct = chain.load_account("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    assert acct.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


CONF = """[program:other]
environment=ANCHOR_CONCURRENCY="1"

[program:p3app]
command=/bin/true
environment=A="1",ANCHOR_CONCURRENCY="4",B="x,y"
autostart=true
"""


def test_supervisor_env_edit():
    new, prev = process_env.set_supervisor_env(CONF, "p3app", "ANCHOR_CONCURRENCY", "8")
    assert prev == "4"
    assert 'environment=A="1",ANCHOR_CONCURRENCY="8",B="x,y"' in new
    assert 'environment=ANCHOR_CONCURRENCY="1"' in new  # the other program is untouched
    again, prev2 = process_env.set_supervisor_env(new, "p3app", "ANCHOR_CONCURRENCY", "8")
    assert again == new and prev2 == "8"
    added, prev3 = process_env.set_supervisor_env("[program:x]\ncommand=y\n", "x", "N", "1")
    assert prev3 is None and 'environment=N="1"' in added
    with pytest.raises(P3Error):
        process_env.set_supervisor_env(CONF, "missing", "N", "1")
    with pytest.raises(P3Error):
        process_env.check_name("1BAD")


def test_systemd_dropin_edit():
    text, prev = process_env.set_systemd_env("", "ANCHOR_CONCURRENCY", "16")
    assert prev is None and text == '[Service]\nEnvironment="ANCHOR_CONCURRENCY=16"\n'
    text2, prev2 = process_env.set_systemd_env(text, "ANCHOR_CONCURRENCY", "32")
    assert prev2 == "16" and text2.count("ANCHOR_CONCURRENCY") == 1 and "=32" in text2


def test_outbox_verdict_and_table_names():
    facts = dict(counts=dict((s, 0) for s in outbox.STATUSES), stale_processing=0, failed_errors=[], receipts=[])
    facts["counts"]["completed"] = 5
    assert outbox.outbox_verdict(facts)[0] is True
    facts["stale_processing"] = 2
    facts["receipts"] = [{"id": "a", "tx_hash": None, "receipt_rows": 0}, {"id": "b", "tx_hash": "0x1", "receipt_rows": 2}]
    ok, reason = outbox.outbox_verdict(facts)
    assert not ok and "2 processing" in reason and "without a receipt" in reason and "more than one receipt" in reason
    assert outbox.check_table("public.anchor_outbox", "table") == "public.anchor_outbox"
    with pytest.raises(P3Error):
        outbox.check_table("anchor_outbox; drop table x", "table")


def _counts(**kw):
    states = ("wait", "paused", "active", "delayed", "prioritized", "waiting-children", "failed", "completed")
    c = dict((s, 0) for s in states)
    c.update(kw)
    return c


P3_WORKER = "bull:YW5jaG9yLWJhdGNoOnVz"  # BullMQ's name of P3's anchor-batch:us worker connection


def test_worker_takes_no_job_from_client_list():
    """P3's worker after idling (measured on its server): the blocking connection is in BZPOPMIN (flag b) with one
    more BZPOPMIN queued behind it (qbuf 60) - the client gave up on the first one. A working worker: qbuf 0."""
    working = dict(worker_clients=[dict(name=P3_WORKER, flags="b", cmd="bzpopmin", qbuf=0, idle=1)])
    assert bullmq.worker_takes_no_job(_counts(), working) is None
    stuck = dict(worker_clients=[dict(name=P3_WORKER, flags="b", cmd="bzpopmin", qbuf=60, idle=2)])
    why = bullmq.worker_takes_no_job(_counts(), stuck)
    assert why.startswith("worker connected but takes no job") and P3_WORKER in why and "bzpopmin" in why
    # a second worker (another app instance) still blocks properly: the queue is served
    two = dict(worker_clients=stuck["worker_clients"] + [dict(name=P3_WORKER, flags="b", cmd="bzpopmin", qbuf=0)])
    assert bullmq.worker_takes_no_job(_counts(), two) is None
    # a connection busy with something else (not blocked) with a pipeline in flight is not the sign
    busy = dict(worker_clients=[dict(name=P3_WORKER, flags="N", cmd="evalsha", qbuf=300)])
    assert bullmq.worker_takes_no_job(_counts(), busy) is None
    assert bullmq.worker_takes_no_job(_counts(), dict(worker_clients=None)) is None


def test_worker_takes_no_job_from_the_age_of_waiting_jobs():
    clients = [dict(name=P3_WORKER, flags="N", cmd="evalsha", qbuf=0)]
    old = dict(worker_clients=clients, oldest_wait_age_seconds=45.0)
    assert bullmq.worker_takes_no_job(_counts(wait=3), old) is None  # not asked
    why = bullmq.worker_takes_no_job(_counts(wait=3), old, stuck_wait_seconds=30)
    assert "oldest waiting job is 45s old > 30s and none is active" in why
    assert bullmq.worker_takes_no_job(_counts(wait=3, active=1), old, stuck_wait_seconds=30) is None  # it works
    assert bullmq.worker_takes_no_job(_counts(wait=3), dict(old, oldest_wait_age_seconds=10), 30) is None
    # no worker at all is another verdict (worker absent), not this one
    assert bullmq.worker_takes_no_job(_counts(wait=3), dict(old, worker_clients=[]), 30) is None


def test_worker_verdict_names_a_stuck_worker():
    from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d

    v = d.worker_verdict("anchor-batch:us", 1, "127.0.0.1:6379", stuck="worker connected but takes no job: x")
    assert v["healthy"] is False and v["reason"].startswith("anchor worker stuck: queue anchor-batch:us")
    assert v["stuck"] == "worker connected but takes no job: x"
    assert d.worker_verdict("anchor-batch:us", 1, None, stuck=None)["healthy"] is True
    assert "absent" in d.worker_verdict("anchor-batch:us", 0, None, stuck="x")["reason"]


class _ActiveList(object):
    """A fake Redis client whose active list follows a script: each poll (one LRANGE, or one pipeline of LPOS) sees
    the next answer, the last one repeats. Counts the LRANGE calls."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.lranges = 0

    def _next(self):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def lrange(self, key, start, end):
        assert key == "{bull}:anchor:active"
        self.lranges += 1
        return self._next()

    def pipeline(self, transaction=True):
        client, calls = self, []

        class Pipe(object):
            def lpos(self, key, value):
                assert key == "{bull}:anchor:active"
                calls.append(value)

            def execute(self):
                now = [j.decode() for j in client._next()]
                return [now.index(v) if v in now else None for v in calls]
        return Pipe()


def _waiting_queue(answers):
    q = bullmq.BullQueue({}, "anchor", "{bull}")
    q.client = _ActiveList(answers)
    t = [0.0]

    def sleep(s):
        t[0] += s
    return q, sleep, (lambda: t[0])


def test_wait_active_done_waits_only_for_the_jobs_active_at_the_start():
    # job 1 and 2 active; 3 is taken later and stays active: not waited for
    q, sleep, clock = _waiting_queue([[b"1", b"2"], [b"2", b"3"], [b"3"]])
    out = q.wait_active_done(10, poll=0.5, sleep=sleep, clock=clock)
    assert out == {"jobs": 2, "still_active": [], "seconds": 1.0, "gave_up": False}


def test_wait_active_done_is_bounded_and_names_what_is_still_active():
    q, sleep, clock = _waiting_queue([[b"7", b"8"], [b"8"]])
    out = q.wait_active_done(3, poll=0.5, sleep=sleep, clock=clock)
    assert out["gave_up"] and out["still_active"] == ["8"] and out["jobs"] == 2
    assert 3.0 <= out["seconds"] <= 3.5


def test_wait_active_done_reads_the_active_list_once_then_polls_only_those_ids():
    """The whole active list is read once; each poll asks only whether the jobs active at the start still are."""
    q, sleep, clock = _waiting_queue([[b"1", b"2"]] + [[b"2"] + [str(i).encode() for i in range(100, 400)]] * 5
                                     + [[b"3"]])
    out = q.wait_active_done(10, poll=0.5, sleep=sleep, clock=clock)
    assert out == {"jobs": 2, "still_active": [], "seconds": 3.0, "gave_up": False}
    assert q.client.lranges == 1


def test_wait_active_done_nothing_active_returns_at_once():
    q, sleep, clock = _waiting_queue([[]])
    out = q.wait_active_done(5, sleep=sleep, clock=clock)
    assert out == {"jobs": 0, "still_active": [], "seconds": 0.0, "gave_up": False}


def test_a_failed_confirming_read_keeps_the_other_problems():
    """The confirming nonce read failing is one more problem: the low balance found before stays in the verdict."""
    wallet = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    out = chain.chain_facts(_NonceRpc(673, 674, mined=None), wallet=wallet, low=10 ** 19, critical=0,
                            clock=lambda: 0.0, pending_confirm_seconds=2, sleep=lambda s: None)
    assert out["healthy"] is False, out
    assert "balance" in out["reason"] and "low" in out["reason"], out["reason"]
    assert "1 pending transaction(s) not confirmed" in out["reason"] and "timed out after 5s" in out["reason"], out


def test_the_confirmation_wait_is_bounded_by_the_callers_deadline():
    """The wait is min(pending_confirm_seconds, what is left of the caller's deadline); with nothing left it is not
    taken and the one read decides, saying it was not re-read."""
    wallet = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    now = [100.0]
    naps = []
    dl = Deadline(10, name="test", clock=lambda: now[0])
    now[0] = 109.5  # 0.5 s left
    out = chain.chain_facts(_NonceRpc(673, 674, mined=1), wallet=wallet, low=1, critical=0, clock=lambda: 0.0,
                            pending_confirm_seconds=2, sleep=naps.append, deadline=dl)
    assert naps == [0.5] and out["healthy"] is True, (naps, out)
    now[0] = 110.0  # nothing left
    out = chain.chain_facts(_NonceRpc(673, 674, mined=1), wallet=wallet, low=1, critical=0, clock=lambda: 0.0,
                            pending_confirm_seconds=2, sleep=naps.append, deadline=dl)
    assert naps == [0.5] and out["healthy"] is False and "not re-read" in out["reason"], (naps, out)
