"""module_utils/redis_client.py: addresses, settings, CLUSTER NODES, slot ranges and the cluster verdict."""
import errno
import socket
import time

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

REAL_NODES = """\
da0e6eb21832ae2d322d7883fcf21a13997ccdfe 127.0.0.1:20004@30004 master - 0 1795873168915 7 connected 5461-10922
38bbf43ef818994e336a656adfefb7b9c3977ed8 127.0.0.1:20005@30005 slave e2853b9ac46b07ad39aa1d77ce5f6f3c778ee353 0 1795873168514 3 connected
0935212a61d235a6e524f14fe22cd49b17d6b9a2 127.0.0.1:20001@30001 myself,master - 0 1795873168000 1 connected 0-5460
e2853b9ac46b07ad39aa1d77ce5f6f3c778ee353 127.0.0.1:20003@30003 master - 0 1795873168514 3 connected 10923-16383
b1fff381c95fa756b59939129e18312ba109d6fe 127.0.0.1:20006@30006 slave 0935212a61d235a6e524f14fe22cd49b17d6b9a2 0 1795873168514 1 connected
4422ad16ecb39ad8bede44ba9c4e36853660df02 127.0.0.1:20002@30002 master,fail - 1795873160000 1795873150000 2 disconnected
"""


# ---------------------------------------------------------------- addresses, URLs, settings

@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:7001", ("127.0.0.1", 7001)),
    ("redis-0", ("redis-0", 6379)),
    ("[::1]:7001", ("::1", 7001)),
    ("[::1]", ("::1", 6379)),
    ("::1:7001", ("::1", 7001)),
    (" redis://h:7002 ", ("h", 7002)),
    ("rediss://:pw@h", ("h", 6379)),
])
def test_parse_address(text, expected):
    assert rc.parse_address(text) == expected


@pytest.mark.parametrize("text", ["", ":7001", "h:abc", "h:0", "h:70000", "[::1:7001"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError):
        rc.parse_address(text)


def test_parse_redis_url():
    u = rc.parse_redis_url("rediss://ops:p%40ss@redis.example:6380/2")
    assert u == dict(host="redis.example", port=6380, username="ops", password="p@ss", tls=True, db=2)
    u = rc.parse_redis_url("redis://127.0.0.1")
    assert u["port"] == 6379 and u["password"] is None and u["tls"] is False and u["db"] == 0


@pytest.mark.parametrize("url,fragment", [
    ("http://h:1", "scheme"),
    ("redis://:secretpw@h:abc", "abc"),
    ("redis:///0", "no host"),
    ("redis://h/x", "not a number"),
])
def test_parse_redis_url_errors_name_the_problem_without_the_password(url, fragment):
    with pytest.raises(ValueError) as e:
        rc.parse_redis_url(url)
    assert fragment in str(e.value)
    assert "secretpw" not in str(e.value)


def params(**kw):
    base = dict(redis_url=None, redis_nodes=None, redis_username=None, redis_password=None, redis_tls=False,
                redis_ca_cert=None, redis_validate_certs=True, redis_socket_timeout=2.0, redis_connect_timeout=2.0)
    base.update(kw)
    return base


def test_settings_from_url_with_overrides(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    s = rc.resolve_redis_settings(params(redis_url="rediss://u:urlpw@h:7001/1", redis_password="taskpw"))
    assert s.seeds == [("h", 7001)] and s.username == "u" and s.password == "taskpw" and s.tls and s.db == 1
    assert s.secrets == ["taskpw"] and s.source == "url"


def test_settings_from_nodes(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    s = rc.resolve_redis_settings(params(redis_nodes=["127.0.0.1:1", " 127.0.0.1:2", "127.0.0.1:1"], redis_tls=True))
    assert s.seeds == [("127.0.0.1", 1), ("127.0.0.1", 2)] and s.tls and s.source == "nodes"
    assert s.seed_addresses == ["127.0.0.1:1", "127.0.0.1:2"]


def test_settings_task_value_beats_the_other_from_env(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://envhost:1")
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "a:1,b:2")
    # what AnsibleModule hands over when the task sets redis_nodes and REDIS_URL fills redis_url
    s = rc.resolve_redis_settings(params(redis_url="redis://envhost:1", redis_nodes=["x:9"]))
    assert s.seeds == [("x", 9)]
    s = rc.resolve_redis_settings(params(redis_url="redis://task:5", redis_nodes=["a:1", "b:2"]))
    assert s.seeds == [("task", 5)]
    # both from the environment: the cluster seed list wins
    s = rc.resolve_redis_settings(params(redis_url="redis://envhost:1", redis_nodes=["a:1", "b:2"]))
    assert s.seeds == [("a", 1), ("b", 2)]


def test_settings_errors(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    with pytest.raises(P3Error, match="no Redis target"):
        rc.resolve_redis_settings(params())
    with pytest.raises(P3Error, match="mutually exclusive"):
        rc.resolve_redis_settings(params(redis_url="redis://h:1", redis_nodes=["h:2"]))
    with pytest.raises(P3Error, match="invalid redis_nodes entry"):
        rc.resolve_redis_settings(params(redis_nodes=["h:port"]))
    with pytest.raises(P3Error, match="invalid redis_url"):
        rc.resolve_redis_settings(params(redis_url="redis://:pw@h:x"))
    with pytest.raises(P3Error, match="must be > 0"):
        rc.resolve_redis_settings(params(redis_nodes=["h:1"], redis_socket_timeout=0))


# ---------------------------------------------------------------- CLUSTER NODES and INFO

def test_parse_cluster_nodes_real_output():
    nodes = rc.parse_cluster_nodes(REAL_NODES)
    assert len(nodes) == 6
    me = [n for n in nodes if n["myself"]][0]
    assert me["address"] == "127.0.0.1:20001" and me["role"] == "master" and me["flags"] == ["master"]
    assert me["slots"] == [[0, 5460]] and me["cport"] == 30001 and me["master_id"] is None
    replica = [n for n in nodes if n["address"] == "127.0.0.1:20005"][0]
    assert replica["role"] == "replica" and replica["master_id"].startswith("e2853b9a") and replica["slots"] == []
    dead = [n for n in nodes if n["address"] == "127.0.0.1:20002"][0]
    assert dead["flags"] == ["master", "fail"] and dead["link_state"] == "disconnected" and dead["slots"] == []
    assert dead["config_epoch"] == 2 and dead["pong_recv"] == 1795873150000


def test_parse_cluster_nodes_edge_cases():
    text = (
        "aaa 10.0.0.1:7000@17000,redis-a.example myself,master - 0 0 1 connected 0-10 12 [13->-bbb] [14-<-ccc]\n"
        "bbb :0@0 master,noaddr - 0 0 2 disconnected\n"
        "ccc 10.0.0.3:7000@17000 handshake - 0 0 0 connected\n"
        "ddd ::1:7003@17003 slave,fail? aaa 0 0 1 connected\n"
        "garbage line\n"
    )
    nodes = {n["id"]: n for n in rc.parse_cluster_nodes(text.encode())}
    a = nodes["aaa"]
    assert a["hostname"] == "redis-a.example" and a["slots"] == [[0, 10], [12, 12]]
    assert a["migrating"] == [{"slot": 13, "node": "bbb"}] and a["importing"] == [{"slot": 14, "node": "ccc"}]
    assert nodes["bbb"]["address"] is None
    assert nodes["ccc"]["role"] == "unknown" and nodes["ccc"]["flags"] == ["handshake"]
    assert nodes["ddd"]["address"] == "[::1]:7003" and nodes["ddd"]["flags"] == ["slave", "fail?"]
    assert len(nodes) == 4


def test_parse_info():
    info = rc.parse_info("# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n\r\n")
    assert info == {"role": "slave", "master_link_status": "up"}
    assert rc.parse_info({"a": 1}) == {"a": 1}


# ---------------------------------------------------------------- slots

def test_slot_ranges_roundtrip():
    assert rc.compress_slots([5, 1, 2, 3, 7, 6, 10]) == [[1, 3], [5, 7], [10, 10]]
    assert rc.format_ranges([[1, 3], [10, 10]]) == ["1-3", "10"]
    assert rc.slots_from_ranges([[0, 2], [5, 5]]) == {0, 1, 2, 5}
    assert rc.compress_slots([]) == []


def test_uncovered_ranges():
    covered = rc.slots_from_ranges([[0, 5460], [10923, 16383]])
    assert rc.uncovered_ranges(covered) == [[5461, 10922]]
    assert rc.uncovered_ranges(set(range(16384))) == []
    assert rc.uncovered_ranges(set()) == [[0, 16383]]
    assert rc.uncovered_ranges({1}, total=4) == [[0, 0], [2, 3]]


# ---------------------------------------------------------------- cluster verdict

MASTERS = {"A": (1, [0, 5460]), "B": (2, [5461, 10922]), "C": (3, [10923, 16383])}
REPLICAS = {"D": (4, "B"), "E": (5, "C"), "F": (6, "A")}


def addr(port):
    return "127.0.0.1:%d" % port


def view_text(me, dead=(), fail_flag="fail", overrides=None):
    """CLUSTER NODES as node `me` would print it; nodes in `dead` are flagged fail_flag."""
    overrides = overrides or {}
    lines = []
    for nid, (port, slots) in MASTERS.items():
        flags = ["master"]
        if nid == me:
            flags.insert(0, "myself")
        if nid in dead:
            flags.append(fail_flag)
        slots = overrides.get(nid, slots)
        slot_txt = " ".join("%d-%d" % (slots[i], slots[i + 1]) for i in range(0, len(slots), 2))
        lines.append("%s 127.0.0.1:%d@%d %s - 0 0 %d connected %s" % (nid * 40, port, port + 10000, ",".join(flags), port, slot_txt))
    for nid, (port, master) in REPLICAS.items():
        flags = ["slave"]
        if nid == me:
            flags.insert(0, "myself")
        if nid in dead:
            flags.append(fail_flag)
        lines.append("%s 127.0.0.1:%d@%d %s %s 0 0 1 connected" % (nid * 40, port, port + 10000, ",".join(flags), master * 40))
    return "\n".join(lines) + "\n"


def record(nid, reachable=True, state="ok", dead=(), fail_flag="fail", overrides=None, error=None, link="up"):
    port = (MASTERS.get(nid) or REPLICAS.get(nid))[0]
    r = dict(address=addr(port), host="127.0.0.1", port=port, reachable=reachable, error=error,
             latency_ms=1.0 if reachable else None, role=None, cluster_enabled=False, cluster_info=None,
             cluster_nodes=None, replication=None, redis_version=None)
    if reachable:
        role = "master" if nid in MASTERS else "replica"
        r.update(role=role, cluster_enabled=True, cluster_info={"cluster_state": state},
                 cluster_nodes=rc.parse_cluster_nodes(view_text(nid, dead, fail_flag, overrides)),
                 replication={"role": "master" if role == "master" else "slave",
                              "master_link_status": None if role == "master" else link})
    elif error is None:
        r["error"] = "connection refused"
    return r


def cluster(**per_node):
    recs = {}
    for nid in list(MASTERS) + list(REPLICAS):
        rec = per_node.get(nid) or record(nid)
        recs[rec["address"]] = rec
    return recs


def test_healthy_cluster():
    v = rc.summarize(cluster(), seeds=[addr(1)])
    assert v["healthy"] is True, v["reason"]
    assert v["cluster_enabled"] is True and v["cluster_state"] == "ok"
    assert v["slots_assigned"] == 16384 and v["slots_ok"] == 16384 and v["slots_uncovered"] == []
    assert v["masters"] == 3 and v["replicas"] == 3 and v["failed_nodes"] == [] and v["views_agree"] is True
    assert v["reason"] == "6 nodes reachable (3 masters, 3 replicas); cluster_state=ok; 16384/16384 slots ok"
    n1 = v["nodes"][0]
    assert n1["address"] == addr(1) and n1["role"] == "master" and n1["slots"] == ["0-5460"] and n1["id"] == "A" * 40
    d = [n for n in v["nodes"] if n["address"] == addr(4)][0]
    assert d["role"] == "replica" and d["master"] == addr(2) and d["master_link_status"] == "up"


def test_master_killed_before_failover():
    dead = ("B",)
    v = rc.summarize(cluster(B=record("B", reachable=False),
                             **{n: record(n, dead=dead, fail_flag="fail?") for n in "ACDEF"}), seeds=[addr(1)])
    assert v["healthy"] is False
    assert v["reason"].startswith("node 127.0.0.1:2 unreachable (connection refused)")
    assert "slots uncovered: 5461-10922 (5462 slots)" in v["reason"] and v["reason"].endswith("cluster_state=ok")
    assert v["failed_nodes"] == [addr(2)] and v["masters"] == 2 and v["slots_ok"] == 16384 - 5462
    assert v["slots_uncovered"] == ["5461-10922"] and v["slots_assigned"] == 16384
    b = [n for n in v["nodes"] if n["address"] == addr(2)][0]
    assert b["reachable"] is False and b["role"] == "master" and b["flags"] == ["master", "fail?"]
    assert b["id"] == "B" * 40 and b["error"] == "connection refused"


def test_cluster_down_state_is_reported():
    v = rc.summarize(cluster(**{n: record(n, state="fail") for n in "ABCDEF"}))
    assert v["healthy"] is False and v["cluster_state"] == "fail" and v["reason"] == "cluster_state=fail"


def test_slots_dropped_on_one_node_disagree():
    # CLUSTER DELSLOTSRANGE 0 100 on A only: A stops claiming them, the others still think A has them
    over = {"A": [101, 5460]}
    v = rc.summarize(cluster(A=record("A", state="fail", overrides=over)))
    assert v["healthy"] is False and v["views_agree"] is False
    assert v["slots_uncovered"] == ["0-100"] and v["cluster_state"] == "fail"
    assert "nodes disagree about the slot configuration" in v["reason"]


def test_replica_link_down_is_unhealthy():
    v = rc.summarize(cluster(D=record("D", link="down")))
    assert v["healthy"] is False and "replica 127.0.0.1:4 master link down" in v["reason"]


def test_reachable_node_with_a_command_error():
    rec = record("A")
    rec["error"] = "answered PING, but ACL denied (NOPERM)"
    v = rc.summarize(cluster(A=rec))
    assert v["healthy"] is False and "node 127.0.0.1:1: answered PING, but ACL denied" in v["reason"]


def test_standalone():
    rec = dict(address="127.0.0.1:6379", host="127.0.0.1", port=6379, reachable=True, error=None, latency_ms=0.3,
               role="master", cluster_enabled=False, cluster_info=None, cluster_nodes=None,
               replication={"role": "master"}, redis_version="7.0.15")
    v = rc.summarize({rec["address"]: rec}, seeds=[rec["address"]])
    assert v["healthy"] is True and v["cluster_enabled"] is False and v["cluster_state"] is None
    assert v["slots_ok"] is None and v["masters"] == 1 and v["reason"] == "1 node answered PING (standalone)"


def test_nothing_reachable():
    rec = dict(address="127.0.0.1:1", host="127.0.0.1", port=1, reachable=False, error="connection refused",
               latency_ms=None, role=None, cluster_enabled=False, cluster_info=None, cluster_nodes=None,
               replication=None, redis_version=None)
    v = rc.summarize({rec["address"]: rec}, seeds=[rec["address"]])
    assert v["healthy"] is False and v["cluster_enabled"] is None
    assert v["reason"] == "node 127.0.0.1:1 unreachable (connection refused)"
    assert v["failed_nodes"] == ["127.0.0.1:1"] and v["nodes"][0]["role"] == "unknown"


# ---------------------------------------------------------------- errors and timeouts (loopback only)

def test_describe_redis_error():
    redis = pytest.importorskip("redis")
    s = rc.RedisSettings([("h", 1)], password="pw-in-msg", socket_timeout=1.5, connect_timeout=0.5)
    assert rc.describe_redis_error(redis.exceptions.AuthenticationError(
        "invalid username-password pair or user is disabled."), s) == \
        "authentication failed (invalid username-password pair or user is disabled)"
    assert rc.describe_redis_error(redis.exceptions.TimeoutError("Timeout reading from h:1"), s) == "timed out after 1.5s"
    assert rc.describe_redis_error(redis.exceptions.TimeoutError("Timeout connecting to server"), s) == "timed out after 0.5s"
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as e:
            raise redis.exceptions.ConnectionError("Error 111 connecting to h:1. Connection refused.") from e
    except redis.exceptions.ConnectionError as e:
        assert rc.describe_redis_error(e, s) == "connection refused"
    assert "pw-in-msg" not in rc.describe_redis_error(redis.exceptions.ResponseError("odd pw-in-msg"), s)


def test_probe_never_hangs_on_a_silent_node():
    """A port that accepts TCP but never answers (like a SIGSTOPped redis) costs one socket timeout."""
    pytest.importorskip("redis")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    try:
        port = hole.getsockname()[1]
        s = rc.RedisSettings([("127.0.0.1", port), ("127.0.0.1", closed_port)], socket_timeout=0.5, connect_timeout=0.5)
        t0 = time.monotonic()
        v = rc.probe(s)
        took = time.monotonic() - t0
    finally:
        hole.close()
    assert took < 2.0, took
    assert v["healthy"] is False
    by = {n["address"]: n for n in v["nodes"]}
    assert by["127.0.0.1:%d" % port]["error"] == "timed out after 0.5s"
    assert by["127.0.0.1:%d" % closed_port]["error"] == "connection refused"
    assert "unreachable (timed out after 0.5s)" in v["reason"]


def test_seed_host_name_and_peer_ip_are_one_node():
    """Seeds given by host name, peers listing the same node by IP: one node, under the seed's name."""
    recs = cluster()
    a = dict(recs.pop(addr(1)), address="redis-a:1", host="redis-a")
    alias = dict(record("A"))  # the same node reached again under its IP
    recs2 = {"redis-a:1": a, addr(1): alias}
    recs2.update(recs)
    v = rc.summarize(recs2, seeds=["redis-a:1"])
    assert v["healthy"] is True, v["reason"]
    assert [n["address"] for n in v["nodes"]].count("redis-a:1") == 1
    assert addr(1) not in [n["address"] for n in v["nodes"]] and len(v["nodes"]) == 6
    f = [n for n in v["nodes"] if n["address"] == addr(6)][0]
    assert f["master"] == "redis-a:1"


def test_summarize_is_a_view_of_the_one_model():
    """redis_probe's verdict, redis_cluster_topology's and the redis_serving filter judge a node the same way
    (redis_cluster.judge_node): a master that does not answer while its peers do not flag it is busy, not failed;
    once a majority flags it fail it is down."""
    from ansible_collections.p3.recovery.plugins.filter.verdicts import redis_serving
    from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import build_topology
    # busy: B does not answer, no peer flags it
    recs = cluster(B=record("B", reachable=False, error="timed out after 1s"))
    v = rc.summarize(recs, seeds=[addr(1)])
    t = build_topology(recs, seeds=[addr(1)])
    b = [n for n in v["nodes"] if n["address"] == addr(2)][0]
    assert b["health"] == "busy" and v["busy_nodes"] == t["busy_nodes"] == [addr(2)] and v["down_nodes"] == []
    assert v["serving"] is t["serving"] is False and redis_serving(v) is False
    assert v["slots_uncovered"] == t["slots_uncovered"] == ["5461-10922"]
    # a reachable master flagged fail? by one peer only: neither view calls it failed
    recs = cluster(A=record("A", dead=("B",), fail_flag="fail?"))
    v = rc.summarize(recs, seeds=[addr(1)])
    t = build_topology(recs, seeds=[addr(1)])
    assert v["failed_nodes"] == list(t["failed_nodes"]) == []
    # down: a majority flags it fail
    recs = cluster(B=record("B", reachable=False), **{n: record(n, dead=("B",)) for n in "ACDEF"})
    v = rc.summarize(recs, seeds=[addr(1)])
    t = build_topology(recs, seeds=[addr(1)])
    assert v["down_nodes"] == t["down_nodes"] == [addr(2)] and v["failed_nodes"] == t["failed_nodes"]
    assert redis_serving(v) is False and redis_serving(rc.summarize(cluster())) is True


# ---------------------------------------------------------------- key routing (key_node_client)

class _FakeNode(object):
    """A node as key_node_client sees it: INFO cluster, CLUSTER SLOTS, PING; dead nodes refuse to connect."""

    def __init__(self, net, address):
        self.net, self.address, self.closed = net, address, False
        if net["nodes"].get(address) is None:
            raise ConnectionError("Error 111 connecting to %s:%d. Connection refused." % address)
        self.node = net["nodes"][address]
        self.net["opened"].append(address)

    def info(self, section):
        return {"cluster_enabled": 1 if self.node.get("slots") is not None else 0}

    def execute_command(self, *args):
        assert args == ("CLUSTER", "SLOTS")
        return self.node["slots"]

    def ping(self):
        return True

    def close(self):
        self.closed = True


@pytest.fixture
def fake_net(monkeypatch):
    net = {"nodes": {}, "opened": [], "auth": []}

    def node_client(settings, host, port, decode_responses=True):
        net["auth"].append((settings.username, settings.password))
        return _FakeNode(net, (host, int(port)))
    monkeypatch.setattr(rc, "node_client", node_client)
    return net


def _slots(*ranges):
    return [[a, b, [h.encode(), p, b"id"]] for a, b, h, p in ranges]


def test_key_node_client_routes_to_the_slot_master(fake_net):
    table = _slots((0, 5460, "127.0.0.1", 7001), (5461, 10922, "127.0.0.1", 7002), (10923, 16383, "127.0.0.1", 7003))
    for port in (7001, 7002, 7003):
        fake_net["nodes"][("127.0.0.1", port)] = {"slots": table}
    s = rc.RedisSettings([("127.0.0.1", 7001)], username="u", password="pw")
    slot = rc.key_slot("{p3recovery}:lock:x")
    want = 7001 if slot <= 5460 else 7002 if slot <= 10922 else 7003
    client, owner, cluster = rc.key_node_client(s, "{p3recovery}:lock:x")
    assert cluster is True and owner == ("127.0.0.1", want) and client.address == owner
    assert set(fake_net["auth"]) == {("u", "pw")}  # credentials on every connection


def test_key_node_client_skips_dead_seeds_and_names_them(fake_net):
    fake_net["nodes"][("127.0.0.1", 7001)] = None
    fake_net["nodes"][("127.0.0.1", 7002)] = {"slots": _slots((0, 16383, "", 7002))}  # '' host: the seed's own
    s = rc.RedisSettings([("127.0.0.1", 7001), ("127.0.0.1", 7002)])
    client, owner, cluster = rc.key_node_client(s, "k")
    assert owner == ("127.0.0.1", 7002) and cluster
    fake_net["nodes"][("127.0.0.1", 7002)] = None
    with pytest.raises(P3Error) as e:
        rc.key_node_client(s, "k")
    assert "127.0.0.1:7001" in e.value.msg and "127.0.0.1:7002" in e.value.msg and "\n" not in e.value.msg


def test_key_node_client_uncovered_slot_and_standalone(fake_net):
    fake_net["nodes"][("h", 1)] = {"slots": _slots((0, 10, "h", 1))}
    s = rc.RedisSettings([("h", 1)])
    with pytest.raises(P3Error) as e:
        rc.key_node_client(s, "{p3recovery}:lock:x")
    assert "not served by any master" in e.value.msg
    fake_net["nodes"][("h", 2)] = {"slots": None}
    client, owner, cluster = rc.key_node_client(rc.RedisSettings([("h", 2)]), "any")
    assert (owner, cluster) == (("h", 2), False)


def test_key_node_client_follows_moved(fake_net):
    fake_net["nodes"][("10.0.0.9", 7009)] = {"slots": []}
    client, owner, cluster = rc.key_node_client(rc.RedisSettings([("h", 1)]), "k", moved="MOVED 866 10.0.0.9:7009")
    assert owner == ("10.0.0.9", 7009) and fake_net["opened"] == [("10.0.0.9", 7009)]
    with pytest.raises(P3Error):
        rc.key_node_client(rc.RedisSettings([("h", 1)]), "k", moved="ERR nonsense")
