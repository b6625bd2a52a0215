"""module_utils/redis_cluster.py: merged topology, failover plan, slot repair plan, rejoin/forget plans (pure)."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import redis_cluster as cl
from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline, P3Error
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import parse_cluster_nodes

NOW = 1795873170000
IDS = dict((n, (n * 40)[:40]) for n in "abcdef")
ADDR = dict((n, "127.0.0.1:%d" % (7001 + i)) for i, n in enumerate("abcdef"))
BASE = {  # name: (role, master, slots)
    "a": ("master", None, "0-5460"),
    "b": ("master", None, "5461-10922"),
    "c": ("master", None, "10923-16383"),
    "d": ("slave", "a", ""),
    "e": ("slave", "b", ""),
    "f": ("slave", "c", ""),
}


def nodes_text(viewer, spec, flags=None, links=None, pings=None, epochs=None):
    lines = []
    for n, (role, master, slots) in spec.items():
        fl = [role] + (["myself"] if n == viewer else []) + (flags or {}).get(n, [])
        link = (links or {}).get(n, "connected")
        ping = (pings or {}).get(n, 0)
        epoch = (epochs or {}).get(n, "abc".index(n) + 1 if n in "abc" else 1)
        lines.append("%s %s@%d %s %s %d %d %d %s %s" % (
            IDS[n], ADDR[n], 17001 + "abcdef".index(n), ",".join(fl), IDS[master] if master else "-", ping, NOW,
            epoch, link, slots))
    return "\n".join(lines)


def records(spec=None, down=(), state="ok", viewer_spec=None, keys=None, node_timeout_ms=15000, **kw):
    spec = spec or BASE
    out = {}
    for n in spec:
        addr = ADDR[n]
        if n in down:
            out[addr] = dict(address=addr, reachable=False, error="connection refused", cluster_enabled=False)
            continue
        role, master = spec[n][:2]
        repl = {"role": "master" if role == "master" else "slave", "master_repl_offset": "1000"}
        if role != "master":
            repl.update(slave_repl_offset=str(900 + "abcdef".index(n)),
                        master_link_status="down" if master in down else "up")
        out[addr] = dict(address=addr, reachable=True, error=None, cluster_enabled=True,
                         cluster_nodes=parse_cluster_nodes(nodes_text(n, (viewer_spec or {}).get(n, spec), **kw)),
                         cluster_info={"cluster_state": state, "cluster_current_epoch": "6"}, replication=repl,
                         memory={"used_memory": 1000, "maxmemory": 0}, time_ms=NOW, keys=(keys or {}).get(n, 0),
                         node_timeout_ms=node_timeout_ms)
    return out


def topo(**kw):
    return cl.build_topology(records(**kw), seeds=[ADDR["a"]])


def test_healthy_cluster():
    t = topo()
    assert t["healthy"] and t["serving"] and t["redundant"], t["reason"]
    assert t["slots_served"] == 16384 and t["masters"] == 3 and t["replicas"] == 3
    assert t["next_actions"] == [] and t["failover_candidates"] == []
    d = [n for n in t["nodes"] if n["address"] == ADDR["d"]][0]
    assert d["master"] == ADDR["a"] and d["lag_bytes"] == 1000 - 903


def node(t, name):
    return [n for n in t["nodes"] if n["address"] == ADDR[name]][0]


def test_dead_master_flagged_fail_by_a_majority_is_a_failover_candidate():
    t = topo(down="a", flags={"a": ["fail"]}, links={"a": "disconnected"})
    assert node(t, "a")["health"] == "down" and t["down_nodes"] == [ADDR["a"]]
    assert not t["serving"] and t["slots_uncovered"] == ["0-5460"]
    assert t["failover_candidates"] == [dict(master=ADDR["a"], master_id=IDS["a"], slots=["0-5460"],
                                             replicas=[ADDR["d"]])]
    assert t["next_actions"] == ["failover"] and t["slots_orphaned"] == []
    steps = cl.plan_failover(t)
    assert [(s["replica"], s["mode"]) for s in steps] == [(ADDR["d"], "force")]


def test_busy_master_is_not_down():
    """DEBUG SLEEP 4 / a slow script: no answer within our timeout, peers waiting 4 s for its pong, link
    disconnected, no fail flag: busy - not a failover or lossy-repair candidate (it was force-failed-over before)."""
    t = topo(down="a", pings={"a": NOW - 4000}, links={"a": "disconnected"}, node_timeout_ms=15000)
    a = node(t, "a")
    assert a["health"] == "busy" and not a["down_confirmed"], a["health_why"]
    assert t["busy_nodes"] == [ADDR["a"]] and t["down_nodes"] == []
    assert t["failover_candidates"] == [] and t["next_actions"] == [] and t["slots_orphaned"] == []
    assert not t["serving"] and "busy" in t["reason"]
    assert cl.plan_failover(t) == []
    with pytest.raises(P3Error) as e:
        cl.plan_failover(t, master=ADDR["a"])
    assert "not down" in e.value.msg
    plan = cl.plan_slot_repair(t, {ADDR["b"]: {}, ADDR["c"]: {}}, allow_data_loss=True)
    assert plan["assign"] == [] and plan["lossy_slots"] == []


def test_a_minority_fail_flag_is_not_down():
    # every viewer prints the same flags in this fixture: make only two of the five say fail
    recs = records(down="a")
    for v in ("b", "c"):
        recs[ADDR[v]]["cluster_nodes"] = parse_cluster_nodes(nodes_text(v, BASE, flags={"a": ["fail"]}))
    t = cl.build_topology(recs, seeds=[ADDR["a"]])
    assert node(t, "a")["health"] == "busy" and t["failover_candidates"] == []
    assert node(topo(down="a", flags={"a": ["fail"]}), "a")["health"] == "down"


def test_down_once_every_peer_waited_longer_than_the_clusters_node_timeout():
    # the node timeout comes from the nodes (CONFIG GET), not from a module default
    assert node(topo(down="a", pings={"a": NOW - 3000}, node_timeout_ms=2000), "a")["health"] == "down"
    assert node(topo(down="a", pings={"a": NOW - 3000}, node_timeout_ms=5000), "a")["health"] == "busy"
    # nodes refusing CONFIG: the fallback (unanswered_ms) is the node timeout
    recs = records(down="a", pings={"a": NOW - 3000}, node_timeout_ms=None)
    assert node(cl.build_topology(recs, unanswered_ms=2000), "a")["health"] == "down"
    assert node(cl.build_topology(recs), "a")["health"] == "busy"
    t = topo(down="a", pings={"a": NOW - 16000})
    assert node(t, "a")["health"] == "down" and t["next_actions"] == ["failover"]


def test_judge_node_on_recorded_cluster_nodes():
    """The model on CLUSTER NODES lines as Redis 7.0 prints them (lab recordings)."""
    busy = parse_cluster_nodes(
        "e0a1 127.0.0.1:22002@32002 master - 1795873166000 1795873165990 2 connected 5461-10922")[0]
    pfail = parse_cluster_nodes(
        "e0a1 127.0.0.1:22002@32002 master,fail? 1795873150000 1795873149990 2 disconnected 5461-10922")[0]
    failed = parse_cluster_nodes(
        "e0a1 127.0.0.1:22002@32002 master,fail 1795873150000 1795873149990 2 disconnected 5461-10922")[0]
    up = parse_cluster_nodes("e0a1 127.0.0.1:22002@32002 master - 0 1795873169000 2 connected 5461-10922")[0]
    clocks = dict(v1=NOW, v2=NOW, v3=NOW)
    j = cl.judge_node
    assert j(True, dict(v1=busy), clocks, 15000)["health"] == "up"
    assert j(False, dict(v1=busy, v2=busy, v3=up), clocks, 15000)["health"] == "busy"
    assert j(False, dict(v1=pfail, v2=pfail, v3=busy), clocks, 15000)["health"] == "busy"
    assert j(False, dict(v1=pfail, v2=pfail, v3=pfail), clocks, 15000)["health"] == "down"
    assert j(False, dict(v1=failed, v2=failed, v3=busy), clocks, 15000)["health"] == "down"
    assert j(False, dict(v1=failed, v2=busy, v3=busy), clocks, 15000)["health"] == "busy"
    assert j(False, {}, {}, 15000)["health"] == "busy"
    assert j(False, {}, {}, 15000, own_unreachable_ms=16000)["health"] == "down"


def test_no_replica_to_promote_only_when_none_exists():
    t = topo(down="ad", flags={"a": ["fail"], "d": ["fail"]})
    plan = cl.plan_slot_repair(t, {ADDR["b"]: {}, ADDR["c"]: {}})
    why = set(plan["lossy"].values())
    assert why and not any("no replica to promote" in w for w in why), why
    assert any(ADDR["d"] in w for w in why)
    with pytest.raises(P3Error) as e:
        cl.plan_failover(t, master=ADDR["a"])
    assert "no replica to promote" not in e.value.msg and ADDR["d"] in e.value.msg
    spec = dict(BASE)
    del spec["d"]
    t = topo(spec=spec, down="a", flags={"a": ["fail"]})
    plan = cl.plan_slot_repair(t, {ADDR["b"]: {}, ADDR["c"]: {}})
    assert any("no replica to promote" in w for w in plan["lossy"].values())


def test_unreachable_from_here_only_is_not_failed_over():
    t = topo(down="a")  # peers still see a healthy link and no pending ping
    assert t["failover_candidates"] == [] and "failover" not in t["next_actions"]
    assert cl.plan_failover(t) == []


def test_no_majority_needs_takeover():
    spec = dict(BASE)
    t = topo(down="ab", flags={"a": ["fail"], "b": ["fail"]})
    with pytest.raises(P3Error) as e:
        cl.plan_failover(t, master=ADDR["a"])
    assert "allow_takeover" in e.value.msg and "1 of 3" in e.value.msg
    assert "not voting: %s, %s" % (ADDR["a"], ADDR["b"]) in e.value.msg  # both dead masters named
    steps = cl.plan_failover(t, master=ADDR["a"], allow_takeover=True)
    assert steps[0]["mode"] == "takeover" and steps[0]["replica"] == ADDR["d"]
    assert spec == BASE


def test_named_live_master_gets_a_coordinated_failover_and_a_replica_nothing():
    t = topo()
    assert cl.plan_failover(t, master=ADDR["b"])[0]["mode"] == "default"
    assert cl.plan_failover(t, master=ADDR["e"]) == []  # already a replica: done
    with pytest.raises(P3Error):
        cl.plan_failover(t, master="127.0.0.1:9")


def test_best_replica_has_the_link_up_then_the_highest_offset():
    ranked = cl.rank_replicas([
        dict(address="x", master_link_status="down", replica_offset=9000),
        dict(address="y", master_link_status="up", replica_offset=10),
        dict(address="z", master_link_status="up", replica_offset=20),
    ])
    assert [r["address"] for r in ranked] == ["z", "y", "x"]


def test_master_and_replica_dead_is_orphaned_and_lossy():
    t = topo(down="ad", links={"a": "disconnected", "d": "disconnected"}, flags={"a": ["fail"], "d": ["fail"]})
    assert t["failover_candidates"][0]["replicas"] == []
    assert t["next_actions"] == ["slots", "forget"] and t["slots_orphaned"] == ["0-5460"]
    assert cl.plan_failover(t) == []
    plan = cl.plan_slot_repair(t, {ADDR["b"]: {}, ADDR["c"]: {}})
    assert not plan["allowed"] and plan["keys_unknown_on"] == [ADDR["a"]]
    assert [(a["node"], cl.ranges_text(a["slots"])) for a in plan["assign"]] == [(ADDR["b"], "0-5460")]
    assert cl.plan_slot_repair(t, {}, allow_data_loss=True)["allowed"]


def _uncovered_spec():
    spec = dict(BASE)
    spec["a"] = ("master", None, "100-5460")
    return spec


def test_unassigned_slots_go_to_the_master_holding_their_keys_as_one_run():
    t = topo(spec=_uncovered_spec(), state="fail")
    assert t["slots_uncovered"] == ["0-99"] and t["slots_unassigned"] == ["0-99"]
    assert t["next_actions"] == ["slots"]
    plan = cl.plan_slot_repair(t, {ADDR["a"]: {5: 2, 50: 1}, ADDR["b"]: {}, ADDR["c"]: {}})
    assert plan["allowed"] and plan["lossy_slots"] == []
    assert [(a["node"], cl.ranges_text(a["slots"]), a["keys"]) for a in plan["assign"]] == [(ADDR["a"], "0-99", 3)]


def test_empty_unassigned_slots_go_to_the_neighbour():
    spec = dict(BASE)
    spec["b"] = ("master", None, "5461-6000 6101-10922")
    t = topo(spec=spec, state="fail")
    plan = cl.plan_slot_repair(t, {ADDR["a"]: {}, ADDR["b"]: {}, ADDR["c"]: {}})
    assert [(a["node"], cl.ranges_text(a["slots"])) for a in plan["assign"]] == [(ADDR["b"], "6001-6100")]


def test_keys_on_two_masters_is_lossy():
    t = topo(spec=_uncovered_spec(), state="fail")
    plan = cl.plan_slot_repair(t, {ADDR["a"]: {5: 3}, ADDR["b"]: {5: 1}})
    assert not plan["allowed"] and plan["keys_at_risk"] == 1 and plan["lossy_slots"] == [5]


def test_owner_that_lost_its_own_mapping_is_given_it_back():
    view_a = dict(BASE)
    view_a["a"] = ("master", None, "10-5460")
    t = cl.build_topology(records(viewer_spec={"a": view_a}), seeds=[ADDR["a"]])
    assert t["slots_uncovered"] == ["0-9"] and not t["views_agree"]
    plan = cl.plan_slot_repair(t, {ADDR["a"]: {}, ADDR["b"]: {}, ADDR["c"]: {}})
    assert [(a["node"], cl.ranges_text(a["slots"])) for a in plan["assign"]] == [(ADDR["a"], "0-9")]
    assert plan["allowed"]


def test_stale_master_view_is_fixed_with_setslot():
    view_b = dict(BASE)
    view_b["a"] = ("master", None, "10-5460")
    view_b["c"] = ("master", None, "0-9 10923-16383")
    t = cl.build_topology(records(viewer_spec={"b": view_b}), seeds=[ADDR["a"]])
    fixes = cl.plan_view_fixes(t)
    assert [(f["node"], f["owner"], cl.ranges_text(f["slots"])) for f in fixes] == [(ADDR["b"], ADDR["a"], "0-9")]


def test_open_slots_are_reported_and_grouped():
    spec = dict(BASE)
    spec["a"] = ("master", None, "0-5460 [7->-%s]" % IDS["b"])
    spec["b"] = ("master", None, "5461-10922 [7-<-%s]" % IDS["a"])
    t = topo(spec=spec)
    assert sorted((o["node"], o["state"], o["peer"]) for o in t["open_slots"]) == [
        (ADDR["a"], "migrating", ADDR["b"]), (ADDR["b"], "importing", ADDR["a"])]
    assert not t["healthy"] and "slots" in t["next_actions"]
    g = cl.open_slot_plan(t)[7]
    assert g["owner"] == ADDR["a"] and g["migrating"] == [(ADDR["a"], ADDR["b"])]


def test_empty_master_rejoins_and_dead_replica_can_be_forgotten():
    spec = dict(BASE)
    spec["d"] = ("master", None, "")
    t = topo(spec=spec)
    assert t["rejoin_candidates"] == [ADDR["d"]] and t["masters_without_replica"] == [ADDR["a"]]
    steps = cl.plan_rejoin(t)
    assert [(n["address"], m["address"]) for n, m in steps] == [(ADDR["d"], ADDR["a"])]
    t2 = topo(spec=spec, keys={"d": 5})
    with pytest.raises(P3Error) as e:
        cl.plan_rejoin(t2)
    assert "5 keys" in e.value.msg

    t3 = topo(down="f", links={"f": "disconnected"}, flags={"f": ["fail"]})
    assert t3["forget_candidates"] == [ADDR["f"]]
    assert [n["address"] for n in cl.plan_forget(t3)] == [ADDR["f"]]
    with pytest.raises(P3Error):
        cl.plan_forget(t3, [ADDR["e"]])  # reachable
    with pytest.raises(P3Error):
        cl.plan_forget(t3, [ADDR["a"]], force=True)  # owns slots


def test_no_node_reachable():
    t = cl.build_topology(dict((a, dict(address=a, reachable=False, error="connection refused")) for a in ADDR.values()))
    assert t["cluster_enabled"] is None and not t["healthy"]
    with pytest.raises(P3Error):
        cl.plan_failover(t)


def _standalone(addr, role, reachable=True, **repl):
    r = dict(role="master" if role == "master" else "slave")
    r.update(repl)
    return dict(address=addr, reachable=reachable, error=None if reachable else "connection refused", role=role,
                cluster_enabled=False, replication=r, keys=repl.pop("keys", 0) if "keys" in repl else 10, memory={})


def test_standalone_failover_and_stale_master_rejoin():
    recs = {
        "h:1": dict(address="h:1", reachable=False, error="connection refused"),
        "h:2": _standalone("h:2", "replica", master_host="h", master_port="1", master_link_status="down",
                           slave_repl_offset="50"),
        "h:3": _standalone("h:3", "replica", master_host="h", master_port="1", master_link_status="down",
                           slave_repl_offset="70"),
    }
    t = cl.build_topology(recs)
    assert t["cluster_enabled"] is False and not t["serving"]
    steps = cl.plan_failover(t)
    assert [(s["replica"], s["mode"]) for s in steps] == [("h:3", "replicaof")]

    recs = {
        "h:1": _standalone("h:1", "master", master_replid="n" * 40, master_replid2="0" * 40, connected_slaves="0"),
        "h:3": _standalone("h:3", "master", master_replid="p" * 40, master_replid2="o" * 40, connected_slaves="0",
                           master_repl_offset="70"),
    }
    recs["h:1"]["keys"] = 0
    t = cl.build_topology(recs)
    assert t["rejoin_candidates"] == ["h:1"] and "split brain" in t["reason"]
    assert [(n["address"], m["address"]) for n, m in cl.plan_rejoin(t)] == [("h:1", "h:3")]


class _InfoNodes(object):
    """Answers CLUSTER INFO like Nodes.try_run: {address: 'ok' | 'fail' | an error text}."""

    def __init__(self, states):
        self.states = states

    def try_run(self, address, *args):
        assert args == ("CLUSTER", "INFO")
        st = self.states[address]
        if st in ("ok", "fail"):
            return "cluster_state:%s\r\ncluster_slots_assigned:16384\r\n" % st, None
        return None, st


def test_behind_names_each_node_and_why():
    uncovered = dict(BASE, c=("master", None, "11023-16383"))  # 10923-11022 not yet learnt
    views = {
        ADDR["a"]: parse_cluster_nodes(nodes_text("a", BASE)),            # agrees, says ok
        ADDR["b"]: parse_cluster_nodes(nodes_text("b", uncovered)),       # still maps the slots to nobody
        ADDR["d"]: parse_cluster_nodes(nodes_text("d", BASE)),            # agrees but cluster_state:fail
        ADDR["e"]: parse_cluster_nodes(nodes_text("e", BASE)),            # agrees, INFO fails
        ADDR["c"]: parse_cluster_nodes(nodes_text("c", BASE).replace(    # agrees, its own slot still open
            "10923-16383", "10923-16383 [11000-<-%s]" % IDS["a"])),
        ADDR["f"]: parse_cluster_nodes(nodes_text("f", BASE).replace(    # agrees; another node's open slot
            "10923-16383", "10923-16383 [11000-<-%s]" % IDS["a"])),       # is not its business
    }
    nodes = _InfoNodes({ADDR["a"]: "ok", ADDR["b"]: "ok", ADDR["c"]: "ok", ADDR["d"]: "fail",
                        ADDR["e"]: "timed out", ADDR["f"]: "ok"})
    expected = [(IDS["c"], set(range(10923, 11023)))]
    behind = cl._behind(nodes, views, expected)
    assert sorted(behind) == [ADDR["b"], ADDR["c"], ADDR["d"], ADDR["e"]]
    assert behind[ADDR["c"]] == "still has an open slot"
    assert behind[ADDR["b"]] == "maps slots 10923-11022 to another node or to none"
    assert behind[ADDR["d"]] == "says cluster_state:fail"
    assert behind[ADDR["e"]] == "does not answer CLUSTER INFO: timed out"
    assert cl._behind(nodes, {ADDR["a"]: views[ADDR["a"]]}, expected) == {}


def _standalone_pair(keys_old_master):
    def rec(addr, role, keys, replid, replid2="0" * 40, replicas=0, master=None):
        repl = {"role": "master" if role == "master" else "slave", "master_replid": replid, "master_replid2": replid2,
                "master_repl_offset": "100", "connected_slaves": str(replicas)}
        if master:
            repl.update(master_host="127.0.0.1", master_port=master, master_link_status="up")
        return dict(address=addr, reachable=True, error=None, cluster_enabled=False, role=role,
                    replication=repl, keys=keys, memory={})
    return cl.build_topology({
        "127.0.0.1:6001": rec("127.0.0.1:6001", "master", keys_old_master, "r" * 40),
        "127.0.0.1:6002": rec("127.0.0.1:6002", "master", 10, "n" * 40, replid2="r" * 40, replicas=1),
        "127.0.0.1:6003": rec("127.0.0.1:6003", "replica", 10, "n" * 40, master="6002"),
    })


def test_standalone_rejoin_only_an_empty_former_master():
    """REPLICAOF discards a node's data: a former master holding keys (writes taken after the failover?) is not
    made a replica, even when it is the very master the current one was promoted from."""
    t = _standalone_pair(0)
    assert t["rejoin_candidates"] == ["127.0.0.1:6001"]
    t = _standalone_pair(5)
    assert t["rejoin_candidates"] == [] and "holds 5 keys" in t["reason"]
    with pytest.raises(P3Error) as e:
        cl.plan_rejoin(t, targets=["127.0.0.1:6001"])
    assert "holds 5 keys" in e.value.msg


def test_repair_changed_counts_what_was_sent_even_without_convergence():
    assign = dict(action="addslots", target="x", detail="ADDSLOTSRANGE 0-99 (100 slots, 0 keys already there)")
    assert cl.repair_changed([assign]) is True
    assert cl.repair_changed([dict(assign, detail="already owns 0-99")]) is False
    assert cl.repair_changed([dict(action="setslot node", target="y", detail="")]) is True
    assert cl.repair_changed([]) is False


class _Settings(object):
    seed_addresses = [ADDR["a"]]
    connect_timeout = 1.0
    socket_timeout = 1.0
    deadline = Deadline(None)  # no total bound (RedisSettings always carries one)


@pytest.fixture
def readings(monkeypatch):
    """A fake read_records that answers the records put in the returned list, one per call (the last one again
    once the list is used up), with no wait between reads; the calls are counted in readings.calls."""

    class Readings(list):
        pass

    seq = Readings()
    seq.calls = []

    def fake(settings, deadline=None):
        seq.calls.append(1)
        return seq[min(len(seq.calls), len(seq)) - 1]
    monkeypatch.setattr(cl, "read_records", fake)
    monkeypatch.setattr(cl, "CONFIRM_POLL", 0.0)
    return seq


def test_read_topology_waits_for_the_clusters_verdict(readings):
    """confirm_timeout: a busy master is read again until the cluster flags it fail (then it is a candidate)."""
    readings[:] = [records(down="a", pings={"a": NOW - 2000}), records(down="a", pings={"a": NOW - 9000}),
                   records(down="a", flags={"a": ["fail"]})]
    calls = readings.calls
    t = cl.read_topology(_Settings(), confirm_timeout=30)
    assert len(calls) == 3 and t["down_nodes"] == [ADDR["a"]] and t["next_actions"] == ["failover"]
    calls[:] = []
    t = cl.read_topology(_Settings(), confirm_timeout=0)
    assert len(calls) == 1 and t["busy_nodes"] == [ADDR["a"]] and t["next_actions"] == []


def test_read_topology_stops_waiting_when_the_master_answers(readings):
    readings[:] = [records(down="a", pings={"a": NOW - 2000}), records()]
    calls = readings.calls
    t = cl.read_topology(_Settings(), confirm_timeout=30)
    assert len(calls) == 2 and t["healthy"] and t["confirm_waited"] >= 0


class _FakeNodes(object):
    """Answers like a 6-node cluster whose master a is dead; replica d is master already when promoted_first."""

    def __init__(self, promoted_first, accept=True):
        self.promoted = promoted_first
        self.accept = accept
        self.sent = []

    def __call__(self, settings):
        return self

    def _view(self, viewer):
        spec = dict(BASE)
        if self.promoted:
            spec["d"] = ("master", None, "0-5460")
            spec["a"] = ("slave", "d", "")
        return parse_cluster_nodes(nodes_text(viewer, spec, flags={"a": ["fail"]}))

    def try_run(self, address, *args):
        name = [n for n, a in ADDR.items() if a == address][0]
        if args[0] == "PING":
            return (None, "connection refused") if name == "a" else ("PONG", None)
        if args[:2] == ("CLUSTER", "NODES"):
            return (None, "connection refused") if name == "a" else (self._view(name), None)
        if args[0] == "TIME":
            return [str(NOW // 1000), "0"], None
        if args[:2] == ("CLUSTER", "FAILOVER"):
            self.sent.append((address,) + args)
            if self.promoted:
                return None, "ERR You should send CLUSTER FAILOVER to a replica"
            self.promoted = True
            return "OK", None
        raise AssertionError(args)

    def close(self):
        pass


def _fake_views(nodes, addresses):
    out = {}
    for a in addresses:
        text, err = nodes.try_run(a, "CLUSTER", "NODES")
        if err is None:
            out[a] = text
    return out


@pytest.mark.parametrize("redis_first", [False, True])
def test_failover_claims_only_what_it_did(monkeypatch, redis_first):
    """A run claims only what it did: when Redis promoted the replica before our FORCE, the step says by=redis and
    nothing was sent; otherwise by=p3.recovery."""
    t = topo(down="a", flags={"a": ["fail"]})
    steps = cl.plan_failover(t)
    fake = _FakeNodes(promoted_first=redis_first)
    monkeypatch.setattr(cl, "Nodes", fake)
    monkeypatch.setattr(cl, "views_of", _fake_views)
    done, timeline, skipped = cl.run_failover(None, t, steps, wait_timeout=2)
    assert skipped == [] and len(done) == 1
    if redis_first:
        assert done[0]["by"] == "redis" and fake.sent == []
        assert [e["action"] for e in timeline] == ["observed failover", "converged"]
    else:
        assert done[0]["by"] == "p3.recovery" and fake.sent == [(ADDR["d"], "CLUSTER", "FAILOVER", "FORCE")]
        assert [e["action"] for e in timeline] == ["cluster failover force", "converged"]


def test_failover_recheck_leaves_a_master_that_answers_again(monkeypatch):
    t = topo(down="a", flags={"a": ["fail"]})
    steps = cl.plan_failover(t)
    fake = _FakeNodes(promoted_first=False)
    real = fake.try_run

    def try_run(address, *args):
        if args[0] == "PING":
            return "PONG", None  # a is back
        return real(address, *args)
    fake.try_run = try_run
    monkeypatch.setattr(cl, "Nodes", fake)
    monkeypatch.setattr(cl, "views_of", _fake_views)
    done, timeline, skipped = cl.run_failover(None, t, steps, wait_timeout=2)
    assert done == [] and fake.sent == [] and skipped[0]["master"] == ADDR["a"]
    assert "answers PING again" in skipped[0]["why"]


def test_cluster_param_errors_are_one_line():
    assert cl.cluster_param_error(dict(unanswered_ms=15000, confirm_timeout=0)) is None
    assert "unanswered_ms must be > 0" in cl.cluster_param_error(dict(unanswered_ms=0, confirm_timeout=0))
    assert "confirm_timeout must be >= 0" in cl.cluster_param_error(dict(unanswered_ms=1, confirm_timeout=-1))


def test_a_master_that_dies_during_the_election_is_named(monkeypatch):
    """FORCE is accepted, then master b dies before it votes: the election cannot win. The failure names b as the
    master that stopped answering and the lost majority - not a vote refusal, and not the live nodes as disagreeing."""
    t = topo(down="a", flags={"a": ["fail"]})
    steps = cl.plan_failover(t)
    fake = _FakeNodes(promoted_first=False)
    real = fake.try_run

    def try_run(address, *args):
        if address == ADDR["b"] and fake.sent:
            return None, "connection refused"  # b died right after the FORCE
        if args[:2] == ("CLUSTER", "FAILOVER"):
            fake.sent.append((address,) + args)
            return "OK", None  # accepted; the election then needs b's vote, which never comes
        return real(address, *args)
    fake.try_run = try_run
    monkeypatch.setattr(cl, "Nodes", fake)
    monkeypatch.setattr(cl, "views_of", _fake_views)
    monkeypatch.setattr(cl, "MANUAL_FAILOVER_TIMEOUT", 0.2)
    with pytest.raises(P3Error) as e:
        cl.run_failover(None, t, steps, wait_timeout=5)
    msg = e.value.msg
    assert "master %s stopped answering during the election" % ADDR["b"] in msg, msg
    assert "1 of 3 masters can vote" in msg and "majority 2" in msg, msg
    assert "slots 0-5460 of %s are not served" % ADDR["a"] in msg, msg
    assert "refuse to vote" not in msg and "still disagree" not in msg, msg
    assert "\n" not in msg


def test_standalone_nodes_report_memory_like_cluster_nodes():
    """A standalone Redis (P3's, FLAG_REDIS_CLUSTER=0) without maxmemory: the node carries the host's memory, as a
    cluster node does, so drift_check's redis_memory_high can be measured instead of staying unknown for good."""
    from ansible_collections.p3.recovery.plugins.filter.alerts import redis_memory_usage

    rec = _standalone("h:1", "master", connected_slaves="0")
    rec["memory"] = dict(used_memory=1048576, maxmemory=0, total_system_memory=1073741824)
    t = cl.build_topology({"h:1": rec})
    node = t["nodes"][0]
    assert node["total_system_memory"] == 1073741824 and node["memory_pct"] is None
    usage = redis_memory_usage(t)
    assert usage["value"] == 0.1 and usage["source"].startswith("h:1: ") and "system memory (maxmemory 0)" in usage["source"]
    rec["memory"]["maxmemory"] = 2097152
    node = cl.build_topology({"h:1": rec})["nodes"][0]
    assert node["memory_pct"] == 50.0 and redis_memory_usage(cl.build_topology({"h:1": rec}))["value"] == 50.0


def test_wait_until_agreed_names_the_nodes_behind_at_the_deadline(monkeypatch):
    """The one convergence wait of slot repair and reshard: returns the seconds it took once no node is behind;
    at the deadline, one line naming each node still behind (and the caller's hint), with the timeline."""
    behind = [{"h:2": "slot 5 -> a (sees b)"}, {}]
    monkeypatch.setattr(cl, "views_of", lambda nodes, watch: {})
    monkeypatch.setattr(cl, "_behind", lambda nodes, views, expected: behind.pop(0))
    monkeypatch.setattr(cl, "POLL", 0.01)
    took = cl._wait_until_agreed(None, [], [("a", {5})], 5, [], "reshard")
    assert isinstance(took, float) and 0 <= took < 5
    monkeypatch.setattr(cl, "_behind", lambda nodes, views, expected: {"h:2": "slot 5 -> a (sees b)"})
    timeline = [{"action": "setslot"}]
    with pytest.raises(P3Error) as e:
        cl._wait_until_agreed(None, [], [("a", {5})], 0, timeline, "slot repair", " (raise wait_timeout)")
    assert e.value.msg == "slot repair did not converge within 0s: h:2 slot 5 -> a (sees b) (raise wait_timeout)"
    assert e.value.details["timeline"] is timeline
