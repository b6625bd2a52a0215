"""module_utils/redis_cluster.py: a reshard is not done while the moved keys exist in one copy (issue 17): run_reshape
waits until the new owner's replicas acknowledged its replication offset (wait_replicas_synced) - fake nodes."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import redis_cluster as cl
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

DST = "127.0.0.1:7003"


def info(master_offset, *replicas):
    lines = ["# Replication", "role:master", "connected_slaves:%d" % len(replicas)]
    for i, (port, state, off) in enumerate(replicas):
        lines.append("slave%d:ip=127.0.0.1,port=%d,state=%s,offset=%d,lag=0" % (i, port, state, off))
    lines.append("master_repl_offset:%d" % master_offset)
    return "\r\n".join(lines) + "\r\n"


class FakeNodes(object):
    """INFO replication answers of one master, in order (the last one repeats); records every call."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def run(self, address, *args):
        self.calls.append((address,) + args)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def try_run(self, address, *args):
        return self.run(address, *args), None

    def close(self):
        pass


def test_replica_offsets_parses_info_replication():
    off, reps = cl.replica_offsets(info(1500, (7004, "online", 1400), (7005, "wait_bgsave", 0)))
    assert off == 1500 and reps == [("127.0.0.1:7004", "online", 1400), ("127.0.0.1:7005", "wait_bgsave", 0)]


def test_replica_offsets_reads_the_info_redis_py_returns():
    """redis-py parses INFO itself: slave<N> becomes a dict of typed values, not the text above (the lab's real run
    failed with "'dict' object has no attribute 'split'")."""
    try:
        from redis._parsers.helpers import parse_info
    except ImportError:  # older redis-py
        from redis.client import parse_info
    parsed = parse_info(info(1500, (7004, "online", 1400), (7005, "wait_bgsave", 0)))
    assert isinstance(parsed["slave0"], dict)
    off, reps = cl.replica_offsets(parsed)
    assert off == 1500 and reps == [("127.0.0.1:7004", "online", 1400), ("127.0.0.1:7005", "wait_bgsave", 0)]


def test_waits_until_every_replica_acknowledged_the_offset_read_after_the_moves():
    nodes = FakeNodes([info(5000, (7004, "online", 1000)),  # read once: the target is 5000
                       info(5100, (7004, "online", 1000)),  # behind
                       info(5200, (7004, "online", 4999)),  # still behind (later writes do not move the target)
                       info(5300, (7004, "online", 5000))])
    timeline = []
    cl.wait_replicas_synced(nodes, [DST], 5, timeline)
    assert len(nodes.calls) == 4 and all(c == (DST, "INFO", "replication") for c in nodes.calls)
    assert timeline[-1]["action"] == "replicated" and timeline[-1]["target"] == DST


def test_a_replica_that_never_catches_up_fails_naming_it_within_the_deadline():
    nodes = FakeNodes([info(5000, (7004, "online", 10))])
    with pytest.raises(P3Error, match=r"one copy only: replica 127.0.0.1:7004 of 127.0.0.1:7003 at offset 10 < 5000"):
        cl.wait_replicas_synced(nodes, [DST], 0.2, [])


def test_a_master_without_replica_is_said_not_waited_for():
    nodes = FakeNodes([info(5000)])
    timeline = []
    assert cl.wait_replicas_synced(nodes, [DST], 5, timeline) == 0.0
    assert "one copy" in timeline[0]["detail"] and len(nodes.calls) == 1


def test_run_reshape_is_not_done_before_the_new_owner_replica_has_the_moved_keys(monkeypatch):
    """Old code: run_reshape returned after the slot owners converged, not looking at the replica at all."""
    nodes = FakeNodes([info(9000, (7004, "online", 100)), info(9000, (7004, "online", 100)),
                       info(9000, (7004, "online", 9000))])
    topo = {"nodes": [{"address": DST, "reachable": True, "role": "master"}]}
    monkeypatch.setattr(cl, "Nodes", lambda settings: nodes)
    monkeypatch.setattr(cl, "_move_slots", lambda *a, **k: 42)
    monkeypatch.setattr(cl, "_wait_until_agreed", lambda *a, **k: 0.1)
    monkeypatch.setattr(cl, "plan_replica_balance", lambda *a, **k: [])
    plan = {"new_masters": [], "moves": [{"dst": DST, "dst_id": "d" * 40, "slots": [1, 2], "src": "127.0.0.1:7000"}]}
    timeline, _replicated = cl.run_reshape(None, lambda: topo, plan, wait_timeout=5)
    assert [c for c in nodes.calls if c[1:] == ("INFO", "replication")], "the replica's offset was never read"
    assert nodes.answers == [info(9000, (7004, "online", 9000))]  # polled until it caught up
    assert [e["action"] for e in timeline][-1] == "replicated"
