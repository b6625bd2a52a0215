"""lock_action's decisions (pure logic) over an in-memory store with the stores' contract; the stores themselves
are tested against real Redis and PostgreSQL in tests/integration/test_locks.py."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import locks
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error


class MemStore(object):
    kind = "memory"
    where = "test"

    def __init__(self):
        self.rows = {}
        self.calls = 0

    def acquire(self, resource, run_id, owner, ttl):
        self.calls += 1
        cur = self.rows.get(resource)
        if cur is None or cur["run_id"] == run_id:
            renewed = cur is not None
            self.rows[resource] = dict(run_id=run_id, owner=owner, since=cur["since"] if cur else "T0", expires_in=ttl)
            return dict(acquired=True, renewed=renewed, holder=dict(self.rows[resource]))
        return dict(acquired=False, renewed=False, holder=dict(cur))

    def renew(self, resource, run_id, ttl):
        cur = self.rows.get(resource)
        if cur and cur["run_id"] == run_id:
            cur["expires_in"] = ttl
            return dict(renewed=True, holder=dict(cur))
        return dict(renewed=False, holder=dict(cur) if cur else None)

    def release(self, resource, run_id, force=False):
        cur = self.rows.get(resource)
        if cur and (force or cur["run_id"] == run_id):
            return dict(released=True, holder=self.rows.pop(resource))
        return dict(released=False, holder=cur)

    def read(self, resource):
        return self.rows.get(resource)


def test_second_run_is_locked_out_with_who_and_since():
    s = MemStore()
    a = locks.lock_action(s, "acquired", "redis-cluster", "a", "alice@ctl, AWX job 7, pid 1 (recover_redis)", ttl=60)
    assert a["acquired"] and a["changed"] and not a["locked_out"]
    b = locks.lock_action(s, "acquired", "redis-cluster", "b", "bob@ctl", ttl=60)
    assert b["locked_out"] and not b["acquired"] and not b["changed"]
    assert b["reason"] == ("redis-cluster is already being recovered by alice@ctl, AWX job 7, pid 1 (recover_redis) "
                           "since T0 (lock expires in 60s unless renewed)")


def test_renew_is_not_a_change_and_only_the_holder_releases():
    s = MemStore()
    locks.lock_action(s, "acquired", "db", "a", "alice", ttl=60)
    again = locks.lock_action(s, "acquired", "db", "a", "alice", ttl=60)
    assert again["acquired"] and again["renewed"] and not again["changed"]
    other = locks.lock_action(s, "released", "db", "b", "bob")
    assert not other["released"] and "not ours" in other["reason"] and "db" in s.rows
    mine = locks.lock_action(s, "released", "db", "a", "alice")
    assert mine["released"] and mine["changed"] and "db" not in s.rows
    none = locks.lock_action(s, "released", "db", "a", "alice")
    assert not none["released"] and not none["changed"]


def test_check_mode_takes_and_releases_nothing():
    s = MemStore()
    r = locks.lock_action(s, "acquired", "q", "a", "alice", check_mode=True)
    assert r["changed"] and not r["acquired"] and not r["locked_out"] and s.rows == {} and s.calls == 0
    locks.lock_action(s, "acquired", "q", "b", "bob")
    r = locks.lock_action(s, "acquired", "q", "a", "alice", check_mode=True)
    assert r["locked_out"] and not r["changed"] and r["reason"].startswith("q is already being recovered by bob")
    r = locks.lock_action(s, "released", "q", "b", "bob", check_mode=True)
    assert r["changed"] and "q" in s.rows


def test_wait_retries_until_the_deadline_then_reports():
    s = MemStore()
    locks.lock_action(s, "acquired", "q", "b", "bob")
    now = [0.0]

    def sleep(d):
        now[0] += d

    r = locks.lock_action(s, "acquired", "q", "a", "alice", wait=3, sleep=sleep, clock=lambda: now[0], poll=1)
    # bob took it (1 call); alice tried at 0, 1, 2 and 3 s (4 calls), then gave up
    assert r["locked_out"] and s.calls == 5 and "waited 3s" in r["reason"]


def test_bad_names_are_clean_errors():
    with pytest.raises(P3Error):
        locks.check_resource("")
    with pytest.raises(P3Error):
        locks.check_resource("a b")
    with pytest.raises(P3Error):
        locks.check_table("locks; DROP TABLE x")
    assert locks.check_table("ops.p3_locks") == "ops.p3_locks"


def test_default_owner_names_the_awx_job():
    text = locks.default_owner({"AWX_JOB_ID": "99"}, purpose="recover_redis")
    assert "@" in text and "AWX job 99" in text and text.endswith("(recover_redis)")
    assert "AWX" not in locks.default_owner({})


def test_redis_store_follows_one_moved_and_names_the_node():
    from ansible_collections.p3.recovery.plugins.module_utils.locks import RedisLockStore
    from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings

    class Client(object):
        def __init__(self, replies):
            self.replies = list(replies)

        def eval(self, *args):
            r = self.replies.pop(0)
            if isinstance(r, Exception):
                raise r
            return r

        def close(self):
            pass

    calls = []
    nodes = {None: Client([Exception("MOVED 1 10.0.0.2:7002")]), "MOVED 1 10.0.0.2:7002": Client([[0, None]])}

    def connect(settings, key, moved=None):
        calls.append(moved)
        return nodes[moved], ("10.0.0.2", 7002) if moved else ("10.0.0.1", 7001), True
    store = RedisLockStore(RedisSettings([("10.0.0.1", 7001)]), connect=connect)
    assert store.release("redis-cluster", "run")["released"] is False
    assert calls == [None, "MOVED 1 10.0.0.2:7002"]
    nodes[None] = Client([Exception("MOVED 1 10.0.0.2:7002")])
    nodes["MOVED 1 10.0.0.2:7002"] = Client([Exception("MOVED 1 10.0.0.3:7003")])
    store = RedisLockStore(RedisSettings([("10.0.0.1", 7001)]), connect=connect)
    with pytest.raises(P3Error) as e:
        store.release("redis-cluster", "run")
    assert "10.0.0.2:7002" in e.value.msg


def test_renew_extends_only_the_holders_lock():
    s = MemStore()
    locks.lock_action(s, "acquired", "db", "a", "alice", ttl=60)
    mine = locks.lock_action(s, "renewed", "db", "a", "alice", ttl=900)
    assert mine["renewed"] and not mine["lost"] and not mine["changed"] and s.rows["db"]["expires_in"] == 900
    theirs = locks.lock_action(s, "renewed", "db", "b", "bob", ttl=5000)
    assert theirs["lost"] and not theirs["renewed"] and s.rows["db"]["expires_in"] == 900
    assert theirs["reason"].startswith("lost the lock of db: db is already being recovered by alice")
    s.rows.clear()  # expired
    gone = locks.lock_action(s, "renewed", "db", "a", "alice", ttl=60)
    assert gone["lost"] and "expired or was released" in gone["reason"] and "db" not in s.rows


def test_renew_in_check_mode_writes_nothing_and_never_loses():
    s = MemStore()
    out = locks.lock_action(s, "renewed", "db", "a", "alice", ttl=60, check_mode=True)
    assert not out["lost"] and not out["changed"] and s.rows == {}
