"""Compound and mid-recovery faults (issue 17 §3) against a throwaway 6-node Redis Cluster (3 masters + 3 replicas,
cluster-node-timeout 2 s, ports base+60..65), so a test can kill two nodes at once without touching the lab.

Every test writes keys acknowledged by a replica (WAIT 1) before the fault and asserts on state read straight from
the nodes (CLUSTER NODES of every live node, GET of every key) and on `redis-cli --cluster check`.
"""
import os
import signal
import subprocess
import time

import pytest

from redis.crc import key_slot

from p3harness import (PW, alive, client, latest_report, missing_keys, no_double_owner, owner_map, run_playbook,
                       topology_calls, views, wait_or_fail, write_acked)
from p3harness import recover_redis as recover
from test_recover_redis import SLOTS_TASK, _base, _inventory, _start, changed_count, cluster_check, states

NODE_TIMEOUT_MS = 2000
RESHAPE_TASK = "Act - restore the designed shape (masters, one replica each)"


@pytest.fixture
def cluster6(lab_up, tmp_path):
    """A fresh 3+3 cluster, every replica linked; yields (tmp, addrs, pids {addr: pid}); killed afterwards."""
    tmp = str(tmp_path / "redis")
    os.makedirs(tmp)
    ports = [_base() + 60 + i for i in range(6)]
    addrs = ["127.0.0.1:%d" % p for p in ports]
    pids = dict(zip(addrs, _start(ports, tmp, cluster=True, node_timeout=NODE_TIMEOUT_MS)))
    try:
        proc = subprocess.run(["redis-cli", "--no-auth-warning", "-a", PW, "--cluster", "create"] + addrs +
                              ["--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert "[OK] All 16384 slots covered" in proc.stdout, proc.stdout + proc.stderr
        wait_or_fail(lambda: set(states(addrs).values()) == {"ok"} and _linked(addrs) and all(
            sorted(len(r) for r in _shape(v)[1].values()) == [1, 1, 1] for v in views(addrs).values()), 30,
            "the cluster did not form")
        yield tmp, addrs, pids
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _linked(addrs):
    for a in addrs:
        if not alive(a):
            continue
        info = client(a).info("replication")
        if info["role"] == "slave" and info.get("master_link_status") != "up":
            return False
    return True


def _shape(view):
    """(masters with slots, {master addr: [replica addrs]}) of one node's view."""
    by_id = dict((i, n) for i, n in view.items())
    masters = sorted(n["addr"] for n in view.values() if n["role"] == "master" and n["slots"])
    reps = dict((m, []) for m in masters)
    for n in view.values():
        if n["role"] == "replica" and n["master"] in by_id and by_id[n["master"]]["addr"] in reps:
            reps[by_id[n["master"]]["addr"]].append(n["addr"])
    return masters, reps


def _kill(pids, addr):
    os.kill(pids[addr], signal.SIGKILL)
    wait_or_fail(lambda: not alive(addr), 5, "%s did not die" % addr)


def _restart(tmp, pids, addr):
    """The node starts again from its nodes.conf, empty (save "" and no AOF: it comes back without data)."""
    d = os.path.join(tmp, addr.rsplit(":", 1)[1])
    subprocess.run(["redis-server", os.path.join(d, "redis.conf")], check=True)
    wait_or_fail(lambda: alive(addr), 10, "%s did not restart" % addr)
    with open(os.path.join(d, "redis.pid")) as f:
        pids[addr] = int(f.read().strip())


def _topology(view):
    """{node id: (role, frozenset of slots)} of one node's view - what check mode must leave exactly as it was."""
    return dict((i, (n["role"], frozenset(n["slots"]))) for i, n in view.items())


def _settled(addrs):
    """Every node answers, none flagged, every replica linked, and every view agrees on who is a replica, who a
    master, and which master owns each of the 16384 slots (a restarted former master is first a master without
    slots, then a replica; a restarted node's own view learns the new slot owners by gossip a moment later)."""
    vs = views(addrs)
    if len(vs) != len(addrs) or not _linked(addrs):
        return False
    seen = set()
    for vv in vs.values():
        if any(({"fail", "fail?"} & set(n["flags"])) or (n["role"] == "master" and not n["slots"]) for n in vv.values()):
            return False
        if len(owner_map(vv)) != 16384:
            return False
        seen.add(frozenset(_topology(vv).items()))
    return len(seen) == 1


def _stable(addrs, timeout, what):
    """Waits until the cluster is settled in two reads in a row, a second apart, with the same topology; returns
    that view of every node."""
    end = time.monotonic() + timeout
    last = None
    while True:
        now = views(addrs) if _settled(addrs) else None
        if now is not None and last is not None and \
                dict((a, _topology(v)) for a, v in now.items()) == dict((a, _topology(v)) for a, v in last.items()):
            return now
        last = now
        assert time.monotonic() < end, what
        time.sleep(1)


def _changed(before, after):
    """[(view, node id, before, after)] of every node whose role or slots differ between two views of every node,
    slots shown as counts and first/last so that a failure message stays readable."""
    def short(t):
        return t and (t[0], len(t[1]), min(t[1] or [-1]), max(t[1] or [-1]))
    out = []
    for a in sorted(set(before) | set(after)):
        b, c = _topology(before.get(a, {})), _topology(after.get(a, {}))
        for i in sorted(set(b) | set(c)):
            if b.get(i) != c.get(i):
                out.append((a, i[:8], short(b.get(i)), short(c.get(i))))
    return out


def test_master_and_replica_down_then_back_returns_to_the_designed_shape(cluster6, report_dir):
    tmp, addrs, pids = cluster6
    keys = write_acked(addrs, 600, "pair")
    v = views(addrs[:1])[addrs[0]]
    masters, reps = _shape(v)
    dead_master = masters[0]
    dead_replica = reps[dead_master][0]
    dead_id = next(i for i, n in v.items() if n["addr"] == dead_master)
    dead_slots = v[dead_id]["slots"]
    # down together: the replica cannot promote itself in between, however slow the machine is between the kills
    client(dead_replica).config_set("cluster-replica-no-failover", "yes")
    os.kill(pids[dead_master], signal.SIGKILL)
    os.kill(pids[dead_replica], signal.SIGKILL)
    wait_or_fail(lambda: not alive(dead_master) and not alive(dead_replica), 5, "the pair did not die")
    live = [a for a in addrs if a not in (dead_master, dead_replica)]
    wait_or_fail(lambda: all("fail" in vv[dead_id]["flags"] for vv in views(live).values()), 30, "the master never failed")
    inv = _inventory(tmp, addrs)

    # the lossy path refuses without its gate, and assigns nothing
    run, report = recover(report_dir, inventory=inv)
    assert run.rc != 0
    msg = run.result(SLOTS_TASK)["msg"]
    assert "refusing the lossy repair of %d slots" % len(dead_slots) in msg and "allow_data_loss" in msg, msg
    for a, vv in views(live).items():
        assert vv[dead_id]["slots"] == dead_slots, "%s %s %s %s %s %s" % (
            a, dead_master, dead_replica, report["timeline"], run.stdout[-1500:],
            [(n["addr"], n["role"], n["flags"], min(n["slots"] or [-1]), len(n["slots"])) for n in vv.values()])

    # with it: every slot covered, in contiguous ranges, --cluster check clean, the other masters' keys kept
    run, report = recover(report_dir, inventory=inv, p3_redis_allow_data_loss=True)
    assert run.rc == 0, run.stdout[-3000:]
    for a in run.result(SLOTS_TASK)["plan"]["assign"]:
        assert "," not in a["slots"], a
    for a, vv in views(live).items():
        assert len(owner_map(vv)) == 16384 and not vv[dead_id]["slots"], a
        no_double_owner(vv)
    cluster_check(live[0])
    kept = dict((k, val) for k, val in keys.items() if key_slot(k.encode()) not in dead_slots)
    assert missing_keys(live, kept) == []
    kept.update(write_acked(live, 300, "after-lossy"))

    # both come back (empty): today the cluster stays at 2 masters + 4 replicas and a run says "nothing to do"
    _restart(tmp, pids, dead_master)
    _restart(tmp, pids, dead_replica)
    before = _stable(addrs, 30, "the restarted nodes did not rejoin")
    calls = topology_calls(addrs)
    masters, reps = _shape(before[addrs[0]])
    assert len(masters) == 2, masters

    # check mode: the plan only, nothing changes
    run, report = recover(report_dir, check=True, inventory=inv, p3_redis_designed_masters=3, p3_redis_reshape=True)
    assert run.rc == 0, run.stdout[-3000:]
    plan = run.result(RESHAPE_TASK)
    assert plan["changed"] is True and plan["plan"]["new_masters"], plan
    after_check = views(addrs)
    # no slot and no role changed in any node's view (Redis itself may re-point a chained replica meanwhile)
    assert _changed(before, after_check) == [], (topology_calls(addrs), calls)
    assert topology_calls(addrs) == calls  # and nothing was sent that would change them

    # without the gate the run only says what is off
    run, report = recover(report_dir, inventory=inv, p3_redis_designed_masters=3)
    assert run.rc == 0 and changed_count(run) == 0, run.stdout[-3000:]
    assert "reshape" in report["before"]["next_actions"] and "reshape: set p3_redis_reshape" in report["decision"]["why"]

    # the real run: 3 masters with one replica each, no slot with two owners, every key still there
    run, report = recover(report_dir, inventory=inv, p3_redis_designed_masters=3, p3_redis_reshape=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert run.result(RESHAPE_TASK)["changed"] is True
    did = [e["action"] for e in report["timeline"]]
    assert report["changed"] is True and "cluster reset soft" in did and "reshard" in did, did

    def designed():
        vs = views(addrs)
        if len(vs) != 6:
            return False
        for vv in vs.values():
            m, r = _shape(vv)
            if len(m) != 3 or sorted(len(x) for x in r.values()) != [1, 1, 1] or len(owner_map(vv)) != 16384:
                return False
        return _linked(addrs) and set(states(addrs).values()) == {"ok"}

    wait_or_fail(designed, 20, "the cluster is not at its designed shape: %s" % [_shape(vv) for vv in views(addrs).values()])
    for a, vv in views(addrs).items():
        no_double_owner(vv)
        for m in _shape(vv)[0]:  # contiguous: one range per master
            mid = next(i for i, n in vv.items() if n["addr"] == m)
            s = sorted(vv[mid]["slots"])
            assert s[-1] - s[0] + 1 == len(s), (a, m)
    for a in addrs:
        cluster_check(a)
    assert missing_keys(addrs, kept) == []

    # a second run has nothing to do
    run, report = recover(report_dir, inventory=inv, p3_redis_designed_masters=3, p3_redis_reshape=True,
                          p3_redis_require_redundancy=True)
    assert run.rc == 0 and changed_count(run) == 0, run.changed_tasks()
    assert report["fully_healthy"] is True, report["reason"]


def test_second_master_killed_one_second_into_the_recovery(cluster6, report_dir):
    tmp, addrs, pids = cluster6
    keys = write_acked(addrs, 600, "second")
    masters, reps = _shape(views(addrs[:1])[addrs[0]])
    first, second = masters[0], masters[1]
    # the replicas never fail over by themselves (the operator leaves it to the runbook): the run must act, and the
    # second death lands while it waits for the cluster's verdict on the first, or during its failover
    for a in addrs:
        client(a).config_set("cluster-replica-no-failover", "yes")
    _kill(pids, first)
    inv = _inventory(tmp, addrs)

    def kill_second():
        time.sleep(1.0)
        _kill(pids, second)

    t0 = time.monotonic()
    run = run_playbook("recover_redis.yml", extravars={"p3_report_dir": report_dir}, inventory=inv,
                       on_start=kill_second)
    took = time.monotonic() - t0
    report = latest_report(report_dir, "recover_redis")
    assert run.status != "timeout" and report is not None, run.stdout[-3000:]
    print("first run: rc %s after %.1f s: %s" % (run.rc, took, report["reason"]))
    # a clear verdict: recovered, or one line naming what is still broken (both dead masters)
    if run.rc != 0:
        assert report["healthy"] is False
        reason = report["reason"]
        assert "\n" not in reason and "Traceback" not in run.stdout, reason
        assert first in reason and second in reason, reason
        assert "allow_takeover" in reason, reason
    # the second run (with the gate the first named) finishes the job: every acknowledged key is there
    run, report = recover(report_dir, inventory=inv, p3_redis_allow_takeover=True)
    assert run.rc == 0, run.stdout[-3000:]
    live = [a for a in addrs if a not in (first, second)]
    for a, vv in views(live).items():
        assert len(owner_map(vv)) == 16384, a
        no_double_owner(vv)
    assert set(states(live).values()) == {"ok"}
    cluster_check(live[0])
    assert missing_keys(live, keys) == []
