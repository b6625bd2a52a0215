"""Issue 19 §3: the EDA loop's guard (module_utils/eda_guard.py) - one response per alert episode, resolved ends
it, a circuit breaker per resource, only allowed alerts act - and its state file (locked, atomic, persistent)."""
import json
import os
import threading
import time

import pytest

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.eda_guard import GuardStore, decide, empty_state

W, BMAX, BW = 600, 3, 1800


def alert(status="firing", fp="fp1", starts="2026-12-06T19:00:00Z", name="redis_memory_high"):
    return {"fingerprint": fp, "status": status, "startsAt": starts, "labels": {"alertname": name}}


def run(state, a, now, resource="redis-memory", allowed=True, **kw):
    args = dict(window=W, breaker_max=BMAX, breaker_window=BW)
    args.update(kw)
    return decide(state, a, resource, allowed, now, args["window"], args["breaker_max"], args["breaker_window"])


def test_a_still_firing_alert_is_handled_once_per_window():
    d, _r, s, ch = run(empty_state(), alert(), 1000.0)
    assert (d, ch) == ("act", True)
    for t in (1001.0, 1200.0, 1599.0):
        d, r, s2, ch = run(s, alert(), t)
        assert (d, ch) == ("duplicate", False) and "still firing" in r
        assert s2 == s  # nothing to write
    d, _r, s, _ch = run(s, alert(), 1000.0 + W)  # still firing after the window: handled again
    assert d == "act"
    assert len(s["attempts"]["redis-memory"]) == 2


def test_resolved_ends_the_episode_and_the_next_firing_is_a_new_one():
    _d, _r, s, _ch = run(empty_state(), alert(), 1000.0)
    d, r, s, ch = run(s, alert("resolved"), 1010.0)
    assert (d, ch) == ("resolved", True) and "episode" in r
    d, _r, s, ch = run(s, alert("resolved"), 1011.0)
    assert (d, ch) == ("ignored", False)  # a second resolved: nothing open
    d, _r, s, _ch = run(s, alert(starts="2026-12-06T19:05:00Z"), 1020.0)
    assert d == "act"
    # fired again (another startsAt) without a resolved notification in between: a new episode too
    d, _r, s, _ch = run(s, alert(starts="2026-12-06T19:09:00Z"), 1030.0)
    assert d == "act"


def test_flapping_trips_the_circuit_breaker_of_the_resource():
    s, decisions = empty_state(), []
    for i in range(5):
        d, r, s, _ch = run(s, alert(starts="t%d" % i), 1000.0 + 20 * i)
        decisions.append(d)
        run_resolved = run(s, alert("resolved", starts="t%d" % i), 1005.0 + 20 * i)
        s = run_resolved[2]
    assert decisions == ["act", "act", "act", "refused", "refused"]
    assert "circuit breaker open for redis-memory: 3 responses" in r
    # a refusal starts nothing, so it does not count; another resource is not affected
    assert len(s["attempts"]["redis-memory"]) == 3
    assert run(s, alert(fp="other", name="mesh_peer_count_low"), 1200.0, resource="recover_mesh")[0] == "act"
    # the oldest response leaves the window: the breaker closes
    assert run(s, alert(starts="t9"), 1000.0 + BW + 1)[0] == "act"


def test_a_duplicate_of_a_refused_episode_is_not_notified_again():
    s = empty_state()
    for i in range(3):
        s = run(s, alert(fp="f%d" % i), 1000.0 + i)[2]
    d, _r, s, _ch = run(s, alert(fp="f9"), 1010.0)
    assert d == "refused"
    assert run(s, alert(fp="f9"), 1011.0)[0] == "duplicate"


def test_not_allowed_means_plan_and_a_plan_counts_for_the_breaker():
    s, out = empty_state(), []
    for i in range(4):
        d, _r, s, _ch = run(s, alert(fp="p%d" % i), 1000.0 + i, resource="p3.recovery.recover_database", allowed=False)
        out.append(d)
    assert out == ["plan", "plan", "plan", "refused"]
    assert run(empty_state(), alert(), 1.0, breaker_max=0)[0] == "act"  # 0 = breaker off


@pytest.mark.parametrize("bad, why", [
    ({"status": "firing", "labels": {"alertname": "x"}}, "no fingerprint"),
    ({"fingerprint": "f", "status": "pending"}, "firing or resolved"),
])
def test_an_alert_that_is_not_an_alertmanager_alert_is_refused(bad, why):
    with pytest.raises(P3Error) as e:
        run(empty_state(), bad, 1.0)
    assert why in e.value.msg


def test_the_state_survives_between_runs_in_a_private_file(tmp_path):
    path = tmp_path / "eda" / "guard.json"
    with GuardStore(str(path)) as store:
        d, _r, s, _ch = run(store.read(), alert(), time.time())
        store.write(s)
    assert d == "act"
    assert oct(os.stat(str(path)).st_mode & 0o777) == "0o600"
    assert oct(os.stat(str(path.parent)).st_mode & 0o777) == "0o700"
    with GuardStore(str(path)) as store:  # the next run (another process in real life) sees the episode
        assert run(store.read(), alert(), time.time())[0] == "duplicate"
    assert not [n for n in os.listdir(str(path.parent)) if ".tmp-" in n]


def test_concurrent_runs_wait_for_the_lock_and_a_stuck_lock_gives_one_line(tmp_path):
    path = str(tmp_path / "guard.json")
    held = threading.Event()
    release = threading.Event()

    def holder():
        with GuardStore(path):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(P3Error) as e:
        with GuardStore(path, timeout=0.3):
            pass
    assert 0.3 <= time.monotonic() - t0 < 3
    assert "still locked by another run after 0.3s" in e.value.msg
    release.set()
    t.join(5)
    with GuardStore(path, timeout=1):
        pass


def test_a_damaged_state_file_is_a_clear_error(tmp_path):
    path = tmp_path / "guard.json"
    path.write_text("{not json")
    with pytest.raises(P3Error) as e:
        with GuardStore(str(path)) as store:
            store.read()
    assert "unreadable" in e.value.msg and str(path) in e.value.msg
    path.write_text(json.dumps({"some": "other file"}))
    with pytest.raises(P3Error):
        with GuardStore(str(path)) as store:
            store.read()


def test_an_unreachable_state_database_is_one_line_without_the_password():
    from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
    from ansible_collections.p3.recovery.plugins.module_utils.eda_guard import PgGuardStore

    store = PgGuardStore("postgresql://p3admin:s3cret-pw@127.0.0.1:1/p3", key="k", lock_timeout=1, connect_timeout=2)
    with pytest.raises(P3Error) as e:
        with store:
            pass
    msg = e.value.msg
    assert msg.startswith("guard state 127.0.0.1:1 (table p3_eda_guard, key k): cannot connect") and "\n" not in msg
    assert "s3cret-pw" not in msg


def test_a_state_table_name_that_is_not_an_identifier_is_refused():
    from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
    from ansible_collections.p3.recovery.plugins.module_utils.eda_guard import PgGuardStore

    with pytest.raises(P3Error) as e:
        PgGuardStore("postgresql://u@127.0.0.1:1/p3", table="x; DROP TABLE y")
    assert "plain lower-case SQL identifier" in e.value.msg


def test_check_mode_creates_no_directory_lock_or_state_file_and_reads_what_is_there(tmp_path):
    """Check mode changes nothing at all: no state directory, lock file or state file appears, and the decision is
    made on the state a real run would read."""
    path = tmp_path / "new-dir" / "guard.json"
    with GuardStore(str(path), check_mode=True) as store:
        assert store.read() == empty_state()
    assert not (tmp_path / "new-dir").exists()
    with GuardStore(str(path)) as store:  # a real run creates them
        state = store.read()
        run(state, alert(), now=1000.0)
        store.write(state)
    before = sorted(os.listdir(str(path.parent)))
    with GuardStore(str(path), check_mode=True) as store:
        assert store.read() == state
    assert sorted(os.listdir(str(path.parent))) == before


class _TimedClient(object):
    """A fake PostgresClient on a fake clock: records (sql, args, timeout) of each statement; each takes `cost`
    seconds (cut at its timeout), a statement on the locked row waits until its timeout (then "timed out", as the
    real client says)."""
    target = "127.0.0.1:5432"
    query_timeout = 15.0

    def __init__(self, clock, cost=0.5, locked=False):
        self.clock, self.cost, self.locked, self.calls, self.closed = clock, cost, locked, [], False
        self.conn = object()

    def query(self, sql, args=None, timeout=None):
        self.calls.append((sql, args, timeout))
        if self.locked and "FOR UPDATE" in sql:
            self.clock.t += timeout
            raise P3Error("query on %s timed out after %ss" % (self.target, timeout))
        if self.cost > timeout:
            self.clock.t += timeout
            raise P3Error("query on %s timed out after %ss" % (self.target, timeout))
        self.clock.t += self.cost
        return [{"state": empty_state(), "present": True}] if sql.startswith("SELECT") else []

    def close(self):
        self.closed = True
        self.conn = None


class _Clock(object):
    t = 100.0

    def __call__(self):
        return self.t


def _pg_store(clock, client, seconds, lock_timeout=10.0):
    from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline
    from ansible_collections.p3.recovery.plugins.module_utils.eda_guard import PgGuardStore
    return PgGuardStore("postgresql://u:pw@127.0.0.1/p3", key="k", lock_timeout=lock_timeout, client=client,
                        deadline=Deadline(seconds, "timeout", clock=clock))


def test_the_postgresql_state_has_one_total_deadline_every_statement_gets_what_is_left():
    clock = _Clock()
    client = _TimedClient(clock, cost=0.5)
    with _pg_store(clock, client, 4) as store:
        store.write(store.read())
    assert clock.t - 100.0 <= 4
    left = 4.0
    for sql, args, timeout in client.calls:
        assert timeout is not None and 0 < timeout <= left, (sql, timeout, left)
        left -= 0.5
    # the server's own waits inside the transaction are cut to what is left, too
    limits = [args for sql, args, _t in client.calls if "set_config" in sql][0]
    assert limits == ("3000ms", "3000ms"), limits  # lock_timeout 10 s cut to the 3 s left after CREATE and BEGIN


def test_a_row_held_past_the_total_deadline_fails_in_one_line_naming_table_key_and_deadline():
    clock = _Clock()
    client = _TimedClient(clock, cost=0.5, locked=True)
    with pytest.raises(P3Error) as e:
        with _pg_store(clock, client, 4):
            pass
    assert clock.t - 100.0 <= 4 + 1e-9 and client.closed
    msg = e.value.msg
    assert msg == ("guard state 127.0.0.1:5432 (table p3_eda_guard, key k): deadline of 4s exceeded (timeout), "
                   "the row still locked by another controller"), msg
    assert not any(sql in ("COMMIT", "ROLLBACK") for sql, _a, _t in client.calls)
    # a lock_timeout shorter than what is left keeps its own message
    clock2 = _Clock()
    with pytest.raises(P3Error) as e:
        with _pg_store(clock2, _TimedClient(clock2, cost=0.5, locked=True), 30, lock_timeout=1):
            pass
    assert "still locked by another controller after 1s" in e.value.msg


def test_nothing_starts_once_the_total_deadline_is_past():
    clock = _Clock()
    client = _TimedClient(clock, cost=3.0)
    with pytest.raises(P3Error) as e:
        with _pg_store(clock, client, 4) as store:
            store.write(store.read())
    assert "deadline of 4s exceeded (timeout)" in e.value.msg and "table p3_eda_guard, key k" in e.value.msg
    assert clock.t - 100.0 <= 4 + 1e-9


def test_a_write_past_the_total_deadline_is_not_sent_and_names_it_once():
    clock = _Clock()
    client = _TimedClient(clock, cost=0.5)
    with pytest.raises(P3Error) as e:
        with _pg_store(clock, client, 4) as store:
            clock.t += 10  # the decision took the rest of the time
            store.write(store.read())
    assert e.value.msg == "guard state 127.0.0.1:5432 (table p3_eda_guard, key k): write: the deadline of 4s exceeded " \
                          "(timeout)", e.value.msg
    assert not any(sql.startswith(("UPDATE", "COMMIT")) for sql, _a, _t in client.calls) and client.closed
