"""module_utils/redis_cluster.py: the designed shape (shape_verdict, plan_reshape, plan_replica_balance) - pure."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import redis_cluster as cl
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

from test_redis_cluster import ADDR, BASE, records

# after a lossy repair of a's slots (given to b, its neighbour) and the return of a and d: 2 masters + 4 replicas,
# a a replica of b, d still a replica of a (chained)
AFTER_LOSSY = {
    "a": ("slave", "b", ""),
    "b": ("master", None, "0-10922"),
    "c": ("master", None, "10923-16383"),
    "d": ("slave", "a", ""),
    "e": ("slave", "b", ""),
    "f": ("slave", "c", ""),
}


def topo(spec, **kw):
    return cl.build_topology(records(spec=spec, **kw), seeds=[ADDR["b"]])


def test_designed_shape_is_ok_on_the_built_cluster_and_adds_no_action():
    t = cl.build_topology(records(), seeds=[ADDR["a"]])
    v = cl.shape_verdict(t, 3, 1)
    assert v["ok"] and v["masters"] == 3 and v["replicas"] == [1, 1, 1], v
    assert cl.with_shape(t, 3)["next_actions"] == []
    assert cl.shape_verdict(t, 0) is None and cl.with_shape(t, 0)["shape"] is None


def test_two_masters_four_replicas_is_off_shape_and_planned_back():
    t = topo(AFTER_LOSSY)
    assert t["serving"] and t["next_actions"] == []  # what today's run saw: nothing to do
    v = cl.shape_verdict(t, 3, 1)
    assert not v["ok"] and v["masters"] == 2 and v["free"] == [ADDR["d"]], v
    assert cl.with_shape(t, 3)["next_actions"] == ["reshape"]
    plan = cl.plan_reshape(t, 3, 1)
    # the chained replica d (of no slot master) becomes the new master, no replica of b needs to go
    assert [n["node"] for n in plan["new_masters"]] == [ADDR["d"]] and plan["new_masters"][0]["reset"]
    # it takes the lowest 5461 slots of b (the master with the most): one contiguous block, b keeps the rest
    assert [(m["src"], m["dst"], m["range"], m["count"]) for m in plan["moves"]] == [
        (ADDR["b"], ADDR["d"], "0-5460", 5461)]


def test_a_spare_replica_is_taken_only_from_a_master_with_more_than_designed():
    spec = dict(AFTER_LOSSY, d=("slave", "b", ""))  # b has a, d, e; c has f
    plan = cl.plan_reshape(topo(spec), 3, 1)
    assert len(plan["new_masters"]) == 1 and plan["new_masters"][0]["was"].startswith("spare replica of " + ADDR["b"])
    spec = {"b": ("master", None, "0-10922"), "c": ("master", None, "10923-16383"), "e": ("slave", "b", ""),
            "f": ("slave", "c", "")}
    with pytest.raises(P3Error, match="no node can become a master"):
        cl.plan_reshape(topo(spec), 3, 1)


def test_not_reshaping_while_a_node_is_down_or_with_more_masters():
    t = topo(AFTER_LOSSY, down=("d",), flags={"d": ["fail"]})
    with pytest.raises(P3Error, match="not reshaping while %s is down" % ADDR["d"]):
        cl.plan_reshape(t, 3, 1)
    assert "reshape" not in cl.with_shape(t, 3)["next_actions"]
    with pytest.raises(P3Error, match="more than the designed 2"):
        cl.plan_reshape(cl.build_topology(records(), seeds=[ADDR["a"]]), 2, 1)


def test_replica_balance_moves_spares_to_masters_without_one():
    spec = dict(BASE, f=("slave", "b", ""))  # b has e and f, c has none
    t = topo(spec)
    steps = cl.plan_replica_balance(t, 1)
    # the one furthest behind (e: offset 904 < f: 905) goes, the best stays
    assert [(r["address"], m["address"]) for r, m in steps] == [(ADDR["e"], ADDR["c"])]
    # a new master without slots yet (in also) gets one too, before its slots move
    t = topo(dict(AFTER_LOSSY, a=("master", None, ""), d=("slave", "b", "")))
    steps = cl.plan_replica_balance(t, 1, also=[cl.find_node(t, ADDR["a"])["id"]])
    assert [(r["address"], m["address"]) for r, m in steps] == [(ADDR["d"], ADDR["a"])]
    assert cl.plan_replica_balance(t, 1) == []  # without it, a is not a master to serve
    assert cl.plan_replica_balance(cl.build_topology(records(), seeds=[ADDR["a"]]), 1) == []
