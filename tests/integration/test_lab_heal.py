"""`p3lab heal` brings the lab's own Redis Cluster back to its designed shape (issue 17 §3, the lab's side).

A master and its replica die together, the collection's lossy repair (what recover_redis.yml runs with
p3_redis_allow_data_loss) gives their slots to the two other masters, and both nodes come back empty: the cluster then serves every slot with
2 masters + 4 replicas. `p3lab heal` must restore 3 masters with one replica each, keep every key that survived the
repair, and a second heal must have nothing to do. Everything is asserted on state read from the nodes.
"""
import json
import os
import sys
import time

from redis.crc import key_slot

from p3harness import (PW, ROOT, alive, client, cluster_node_timeout, ensure_collection_importable, lab, lab_nodes,
                       lab_status, missing_keys, no_double_owner, owner_map, views, wait_or_fail, write_acked)
from test_recover_redis import cluster_check, states

sys.path.insert(0, os.path.join(ROOT, "lab"))
from p3lablib import faults, rediscluster  # noqa: E402
from p3lablib.common import Lab  # noqa: E402
from p3lablib.heal import _empty_disk  # noqa: E402

# the lab's nodes notice the dead pair within about 2 s instead of the lab's 15 s (set back in the end)
FAST_NODE_TIMEOUT_MS = 2000
# a controller slow between two nodes (a loaded machine): seconds before each CLUSTER DELSLOTSRANGE
SLOW_DELSLOTS_S = 2


def _shape(view):
    """(masters with slots, {master addr: [replica addrs]}, other nodes) of one node's view."""
    masters = sorted(n["addr"] for n in view.values() if n["role"] == "master" and n["slots"])
    reps = dict((m, []) for m in masters)
    other = []
    for n in view.values():
        owner = view.get(n["master"])
        if n["role"] == "replica" and owner and owner["addr"] in reps:
            reps[owner["addr"]].append(n["addr"])
        elif n["addr"] not in reps:
            other.append(n["addr"])
    return masters, reps, sorted(other)


def _heal():
    out = lab("heal", timeout=300)
    return json.loads([line for line in out.splitlines() if line.strip().startswith("{")][-1])


def _lossy_repair(addrs):
    ensure_collection_importable()
    from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc, redis_cluster as cl

    settings = rc.RedisSettings([rc.parse_address(a) for a in addrs], password=PW)
    topo = cl.read_topology(settings, unanswered_ms=FAST_NODE_TIMEOUT_MS)
    live = [n["address"] for n in topo["nodes"] if n["role"] == "master" and n["reachable"]]
    todo = cl.range_slots(topo["slots_uncovered"])
    assert todo, topo["reason"]
    plan = cl.plan_slot_repair(topo, cl.count_keys(settings, live, todo), allow_data_loss=True,
                               promote_replicas=False)
    assert plan["assign"] and plan["allowed"] and not plan["refused"], plan
    cl.run_slot_repair(settings, topo, plan)


def test_heal_restores_the_designed_shape_after_a_lossy_repair(lab_up):
    addrs = lab_nodes()
    _heal()  # a healthy lab first (an earlier test may have left a fault)
    keys = write_acked(addrs, 600, "labheal")
    v = views(addrs[:1])[addrs[0]]
    masters, reps, _ = _shape(v)
    assert len(masters) == 3 and all(len(r) == 1 for r in reps.values()), (masters, reps)
    dead_master = masters[0]
    dead_replica = reps[dead_master][0]
    dead_id = next(i for i, n in v.items() if n["addr"] == dead_master)
    dead_slots = v[dead_id]["slots"]
    live = [a for a in addrs if a not in (dead_master, dead_replica)]
    pids = dict((a, int(client(a).info("server")["process_id"])) for a in (dead_master, dead_replica))
    with cluster_node_timeout(addrs, FAST_NODE_TIMEOUT_MS):
        # down together: the replica cannot promote itself in between
        client(dead_replica).config_set("cluster-replica-no-failover", "yes")
        for pid in pids.values():
            os.kill(pid, 9)
        wait_or_fail(lambda: not alive(dead_master) and not alive(dead_replica), 5, "the pair did not die")
        wait_or_fail(lambda: all("fail" in vv[dead_id]["flags"] for vv in views(live).values()), 30, "the master never failed")

        # the lossy repair: the other masters take the dead pair's slots (their keys are gone); the collection's own
        # code (what redis_cluster_slots with allow_data_loss runs), in-process: recover_redis.yml takes about 30 s
        _lossy_repair(addrs)
        for a, vv in views(live).items():
            assert len(owner_map(vv)) == 16384 and not vv[dead_id]["slots"], a
        kept = dict((k, val) for k, val in keys.items() if key_slot(k.encode()) not in dead_slots)
        assert kept and missing_keys(live, kept) == []
        # keys written after the repair land in the reassigned slots too: the reshape must move them
        kept.update(write_acked(live, 300, "labheal-after"))

    # both come back empty, from their nodes.conf, as the lab starts them: 2 masters, 4 replicas
    L = Lab()
    back = [addrs.index(a) + 1 for a in (dead_master, dead_replica)]
    for i in back:
        _empty_disk(L, i)
    assert rediscluster.start_nodes(L, back) == back

    def misshapen():
        vs = views(addrs)
        return len(vs) == 6 and set(states(addrs).values()) == {"ok"} and all(
            len(_shape(vv)[0]) == 2 and len(owner_map(vv)) == 16384 for vv in vs.values())

    wait_or_fail(misshapen, 30, lambda: "not the 2-master state: %s" % [_shape(vv) for vv in views(addrs).values()])

    t0 = time.monotonic()
    res = _heal()
    took = time.monotonic() - t0
    # 3 masters, each with exactly one replica that replicates it, in every node's view
    vs = views(addrs)
    assert len(vs) == 6
    for a, vv in vs.items():
        m, r, other = _shape(vv)
        assert len(m) == 3 and sorted(len(x) for x in r.values()) == [1, 1, 1] and not other, (a, m, r, other, res)
        assert len(owner_map(vv)) == 16384, a
        no_double_owner(vv, a)
    _, r, _ = _shape(vs[addrs[0]])
    for m, replicas in r.items():
        info = client(replicas[0]).info("replication")
        assert info["role"] == "slave" and "%s:%s" % (info["master_host"], info["master_port"]) == m, (m, info)
        assert info["master_link_status"] == "up", info
    for a in addrs:
        cluster_check(a)
    # heal never loses data: every key that survived the lossy repair is still there with its value
    assert missing_keys(addrs, kept) == []
    assert any("reshape" in x for x in res["actions"]), res
    st = lab_status()
    assert st["healthy"] and st["app"]["healthy"], st

    # a second heal changes nothing
    again = _heal()
    assert again["actions"] == [], again
    print("heal of the 2+4 cluster took %.1f s: %s" % (took, res["actions"]))


def test_slots_uncovered_fault_holds_whichever_master_owns_the_range(healthy_lab, monkeypatch):
    """The lab fault redis-slots-uncovered must leave its range unassigned on every node whichever master owns it,
    however slow the controller is between two nodes. It deleted the range node by node in port order; a node done
    before the owner took the range back from the owner's next heartbeat (an unassigned slot goes to the master
    claiming it), so under load on Valkey 8 the fault failed ('cluster_state did not become fail on every node')
    whenever an earlier test had left the owner behind other nodes. Here the owner is the last master in port
    order and every DELSLOTSRANGE waits SLOW_DELSLOTS_S first."""
    L = Lab()
    _, nodes = rediscluster.view(L)
    owner = sorted((n for n in nodes if n["role"] == "master" and n["slots"]), key=lambda n: n["port"])[-1]
    monkeypatch.setattr(faults, "_pick_master", lambda lab: (owner, nodes))
    real_client = rediscluster.client

    def slow_client(port, *args, **kwargs):
        conn = real_client(port, *args, **kwargs)
        send = conn.execute_command

        def execute(*cmd, **opts):
            if cmd[:2] == ("CLUSTER", "DELSLOTSRANGE"):
                time.sleep(SLOW_DELSLOTS_S)
            return send(*cmd, **opts)
        conn.execute_command = execute
        return conn

    monkeypatch.setattr(rediscluster, "client", slow_client)
    rec = faults.redis_slots_uncovered(L)
    monkeypatch.undo()
    a, b = rec["range"]
    assert rec["owner"] == owner["address"] and set(rec["nodes"].values()) == {"OK"}, rec
    addrs = lab_nodes()
    for addr, view in views(addrs).items():
        assert not any(a <= s <= b for s in owner_map(view)), (addr, a, b)
    assert set(states(addrs).values()) == {"fail"}, states(addrs)


def test_slots_uncovered_fault_deletes_again_where_a_stale_heartbeat_gave_the_range_back(healthy_lab, monkeypatch):
    """A heartbeat the owner sent before its own DELSLOTSRANGE, read by a slow node only after that node deleted the
    range, gives the range back to the owner in that node's view (the owner no longer claims it, so nothing takes it
    away again): that node stays cluster_state ok, and the fault waited 10 s and failed - one way a test using it can
    fail on a loaded machine (stop 24's official CI failed test_redis_cause's uncovered-slots test, output not
    shown). Here that late heartbeat is played by CLUSTER SETSLOT NODE <owner> on another master right after the
    first round; the fault must delete again there."""
    L = Lab()
    _, nodes = rediscluster.view(L)
    owner = sorted((n for n in nodes if n["role"] == "master" and n["slots"]), key=lambda n: n["port"])[0]
    other = next(n for n in nodes if n["role"] == "master" and n["slots"] and n["port"] != owner["port"])
    monkeypatch.setattr(faults, "_pick_master", lambda lab: (owner, nodes))
    real_delslots = rediscluster.delslots_everywhere
    calls = []

    def delslots_then_late_heartbeat(lab, a, b, owner_port):
        res = real_delslots(lab, a, b, owner_port)
        calls.append(res)
        if len(calls) == 1:
            c = rediscluster.client(other["port"], timeout=2)
            for slot in range(a, b + 1):
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner["id"])
        return res

    monkeypatch.setattr(rediscluster, "delslots_everywhere", delslots_then_late_heartbeat)
    rec = faults.redis_slots_uncovered(L)
    monkeypatch.undo()
    a, b = rec["range"]
    assert rec["rounds"] == 2 and len(calls) == 2, rec
    assert calls[1]["127.0.0.1:%d" % other["port"]] == "OK", calls[1]  # deleted again where it had come back
    addrs = lab_nodes()
    for addr, view in views(addrs).items():
        assert not any(a <= s <= b for s in owner_map(view)), (addr, a, b)
    assert set(states(addrs).values()) == {"fail"}, states(addrs)
