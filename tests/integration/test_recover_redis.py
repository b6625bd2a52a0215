"""recover_redis.yml against real Redis: the lab's 6-node cluster (dead master, uncovered slots, frozen master,
an empty master rejoining), a throwaway 3-master cluster for the lossy path, and a standalone master/replica pair.

Every test writes keys before the fault and waits for replica acknowledgement (WAIT), then asserts on state read
straight from the nodes (CLUSTER NODES of every live node, CLUSTER INFO, GET of every key) and on the reference
tool, `redis-cli --cluster check` (judged by its output: it exits 0 on errors).
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import redis
import yaml

from redis.crc import key_slot

from p3harness import (FAILOVER_TASK, INVENTORY, PW, alive, client, failover_calls, lab, lab_fault, lab_nodes,
                       lab_status, missing_keys, owner_map, slow_failure_detection, topology_calls, views,
                       write_acked)
from p3harness import recover_redis as recover

SLOTS_TASK = "Act - repair slot coverage and open slots"
REJOIN_TASK = "Act - former masters rejoin as replicas"


def roles(view):
    return dict((i, (n["role"], n["master"], frozenset(n["slots"]))) for i, n in view.items())


def states(addrs, password=PW):
    return dict((a, client(a, password).execute_command("CLUSTER", "INFO").split("cluster_state:")[1].split()[0])
                for a in addrs if alive(a, password))


def missing_keys_standalone(addr, n):
    c = client(addr)
    return [i for i in range(n) if c.get("p3test:standalone:%d" % i) != str(i)]


def cluster_check(addr, password=PW):
    """redis-cli --cluster check (the reference tool); judged by its output, not its exit code."""
    host, port = addr.rsplit(":", 1)
    proc = subprocess.run(["redis-cli", "--no-auth-warning", "-a", password, "--cluster", "check", "%s:%s" % (host, port)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert "[OK] All 16384 slots covered" in out, out
    assert "[ERR]" not in out and "[WARNING]" not in out, out
    return out


def changed_count(run):
    return sum(run.changed.values()) if run.changed else 0


def assert_serving(addrs, keys, password=PW, check=True):
    live = [a for a in addrs if alive(a, password)]
    st = states(live, password)
    assert set(st.values()) == {"ok"}, st
    for a, v in views(live, password).items():
        assert len(owner_map(v)) == 16384, a
    assert missing_keys(addrs, keys, password) == []
    if check:
        cluster_check(live[0], password)


# ---------------------------------------------------------------- the lab cluster

def failover_result(run):
    """The failover step's result; a step skipped because the diagnosis already saw the replica promoted (Redis's own
    election can land while the run still waits for the cluster's verdict, more often on a loaded machine) did
    nothing: changed false, no failovers."""
    res = run.results(FAILOVER_TASK)
    return res[-1] if res else {"changed": False, "failovers": [], "skipped": True}


@pytest.mark.valkey
def test_healthy_cluster_is_left_alone(healthy_lab, report_dir):
    nodes = lab_nodes()
    before = views(nodes)
    run, report = recover(report_dir, verbosity=3)
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_count(run) == 0
    assert report["healthy"] is True and report["fully_healthy"] is True
    assert report["timeline"] == []
    assert report["before"]["next_actions"] == []
    after = views(nodes)
    assert dict((a, roles(v)) for a, v in after.items()) == dict((a, roles(v)) for a, v in before.items())
    assert PW not in run.stdout  # -vvv: the password never shows
    stats = run.stats["p3_recover_redis"]
    assert stats["healthy"] is True and stats["changed"] is False


@pytest.mark.valkey
def test_dead_master_promotes_its_replica(healthy_lab, report_dir):
    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "dead")
    # check mode without waiting for the cluster's verdict, while the peers have not flagged the killed master fail
    # yet: it is busy (not confirmed down): nothing is planned, nothing is sent, and no role or slot changes. The
    # peers' failure detection is slowed while it runs: on a loaded machine the lab's 15 s could pass before the run
    # looked (the master flagged fail, or promoted away by Redis itself - a valkey pass of a local CI at load 13).
    with slow_failure_detection(nodes):
        did = lab_fault("redis-master-down")
        dead, dead_id = did["node"], did["node_id"]
        live = [a for a in nodes if a != dead]
        before = views(live)

        replica = [n for n in before[live[0]].values() if n["master"] == dead_id][0]
        promoted, promoted_id = replica["addr"], replica["id"]

        calls = topology_calls(live)
        run, report = recover(report_dir, check=True, p3_redis_confirm_timeout=0)
        assert run.rc == 0, run.stdout[-3000:]
        assert dead in report["before"]["busy_nodes"] and report["before"]["failover_candidates"] == []
        assert run.results(FAILOVER_TASK) == [] or not run.result(FAILOVER_TASK).get("plan")
        assert topology_calls(live) == calls  # check mode sent no topology command to any node
        after_check = views(live)
        assert not any("fail" in v[dead_id]["flags"] for v in after_check.values()), after_check
        for a in live:
            assert roles(after_check[a]) == roles(before[a]), a
            assert after_check[a][dead_id]["slots"] == before[a][dead_id]["slots"]

    # the real run, role defaults: waits (read-only) for the cluster's own verdict, then promotes the replica - or
    # finds that Redis's own election (which starts about a second after the fail flag) already did; it claims only
    # what it did
    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["before"]["down_nodes"] == [dead] or report["before"]["failover_candidates"] == []
    res = failover_result(run)
    did_what = [(e["action"], e["target"]) for e in report["timeline"]]
    ours = [f for f in res.get("failovers") or () if f.get("by", "p3.recovery") == "p3.recovery"]
    if ours:
        assert ours[0]["master"] == dead and ours[0]["mode"] == "force" and ours[0]["replica"] == promoted
        assert res["changed"] is True and ("cluster failover force", promoted) in did_what, res
    else:
        assert res["changed"] is False and "cluster failover force" not in dict(did_what), res
    assert "cluster failover takeover" not in dict(did_what)
    dead_slots = set()
    for a, b in did["slots"]:
        dead_slots.update(range(a, b + 1))
    for a, v in views(live).items():
        assert v[promoted_id]["role"] == "master", a
        assert v[promoted_id]["slots"] == dead_slots, a
        assert not v[dead_id]["slots"], a
    assert_serving(nodes, keys)
    assert report["healthy"] is True and report["changed"] is bool(ours)
    assert [e["action"] for e in report["timeline"]] in (["cluster failover force", "converged"],
                                                         ["observed failover", "converged"], [])
    assert all(set(e) == {"ts", "action", "target", "detail"} for e in report["timeline"])
    assert report["after"]["masters_without_replica"] == [promoted]

    # a second run has nothing to do
    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_count(run) == 0
    assert run.results(FAILOVER_TASK) == []  # skipped: nothing to fail over

    # writes to the promoted replica survive the old master's return; it comes back empty, as a replica of the
    # promoted node: full redundancy again
    keys.update(write_acked(live, 300, "after-failover", acks=0))  # the promoted master has no replica yet
    lab("heal")
    v = views(nodes)
    assert v[promoted][dead_id]["role"] == "replica" and v[promoted][dead_id]["master"] == promoted_id
    assert "DB loaded from disk" not in _log_since_start(dead)
    run, report = recover(report_dir)
    assert run.rc == 0 and changed_count(run) == 0
    assert report["fully_healthy"] is True, report["reason"]
    assert missing_keys(nodes, keys) == []


@pytest.mark.valkey
def test_redis_own_failover_wins_and_the_run_claims_nothing(healthy_lab, report_dir):
    """A master dies while recover_redis.yml waits for the cluster's verdict, and its replica CAN fail over by itself
    (no cluster-replica-no-failover): Redis promotes it (about a second after the fail flag, while the run goes from
    its diagnosis to its failover step). The run sends no CLUSTER FAILOVER, reports any promotion it sees as by redis
    and does not count it as its change.

    Measured on the lab: Redis's promotion lands before the failover module's own topology read (about 2 s of Ansible
    between the diagnosis and that read), so the module plans nothing and reports nothing about it; its by=redis
    re-check right before FORCE (unit-tested) covers the narrower window between its read and its FORCE."""
    nodes = lab_nodes()
    for addr in nodes:
        assert client(addr).config_get("cluster-replica-no-failover")["cluster-replica-no-failover"] == "no"
    keys = write_acked(nodes, 300, "redis-wins")
    did = lab_fault("redis-master-down")
    dead, dead_id = did["node"], did["node_id"]
    live = [a for a in nodes if a != dead]
    replica = [n for n in views(live)[live[0]].values() if n["master"] == dead_id][0]
    calls = failover_calls(live)

    run, report = recover(report_dir, p3_redis_confirm_timeout=60)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["before"]["down_nodes"] == [dead], report["before"]  # it waited for, and got, the cluster's verdict
    # real state: the replica is the master of the dead master's slots on every live node, every slot is served
    dead_slots = set()
    for a, b in did["slots"]:
        dead_slots.update(range(a, b + 1))
    for a, v in views(live).items():
        assert v[replica["id"]]["role"] == "master" and v[replica["id"]]["slots"] == dead_slots, a
        assert len(owner_map(v)) == 16384, a
    assert_serving(nodes, keys)
    assert failover_calls(live) == calls  # no CLUSTER FAILOVER was sent by anyone: Redis promoted it itself
    # what the run says: nothing of ours - a promotion it saw is by redis, the run's change count does not claim it
    res = failover_result(run)
    assert res["changed"] is False and all(f["by"] == "redis" for f in res.get("failovers") or ()), res
    assert [e["action"] for e in report["timeline"]] in ([], ["observed failover", "converged"]), report["timeline"]
    assert "cluster failover force" not in [e["action"] for e in report["timeline"]]
    assert report["changed"] is False and changed_count(run) == 0, run.changed_tasks()


@pytest.mark.valkey
def test_uncovered_slots_go_back_to_the_master_holding_their_keys(healthy_lab, report_dir):
    nodes = lab_nodes()
    keys = write_acked(nodes, 3000, "slots")
    did = lab_fault("redis-slots-uncovered")
    a, b = did["range"]
    in_range = [k for k in keys if a <= key_slot(k.encode()) <= b]
    assert in_range, "no test key landed in the deleted range"
    owner_id = did["owner_id"]

    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assign = run.result(SLOTS_TASK)["plan"]["assign"]
    assert [(x["node"], x["slots"]) for x in assign] == [(did["owner"], "%d-%d" % (a, b))]
    for addr, v in views(nodes).items():  # check mode assigned nothing
        assert not any(a <= s <= b for s in owner_map(v)), addr
    assert set(states(nodes).values()) == {"fail"}

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    res = run.result(SLOTS_TASK)
    assert res["changed"] is True and res["plan"]["lossy_slots"] == ""
    for addr, v in views(nodes).items():
        assert v[owner_id]["slots"] >= set(range(a, b + 1)), addr
    assert_serving(nodes, keys)
    assert "addslots" in [e["action"] for e in report["timeline"]]
    # each other master was told the owner at once (SETSLOT NODE) unless it already knew it when the run asked
    # (a heartbeat can outrun the run on a busy host): none is left to the heartbeats unasked
    view = views(nodes)[did["owner"]]
    others = set(n["addr"] for n in view.values() if n["role"] == "master" and n["slots"] and n["id"] != owner_id)
    told = set(e["target"] for e in report["timeline"] if e["action"] == "setslot node")
    known = set(e["target"] for e in report["timeline"] if e["action"] == "owner known")
    assert len(others) == 2 and told | known == others and not told & known, (others, report["timeline"])

    run, report = recover(report_dir)
    assert run.rc == 0 and changed_count(run) == 0
    assert report["fully_healthy"] is True, report["reason"]


def _pid_of(addr):
    port = int(addr.rsplit(":", 1)[1])
    for name, svc in lab_status()["services"].items():
        if name.startswith("redis") and svc["port"] == port:
            return svc["pid"]
    raise AssertionError("no pid for %s" % addr)


@pytest.mark.valkey
def test_frozen_master_is_failed_over_and_rejoins_when_it_thaws(healthy_lab, report_dir):
    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "frozen")
    v0 = views(nodes)[nodes[0]]
    masters = sorted((n for n in v0.values() if n["role"] == "master" and n["slots"]), key=lambda n: n["addr"])
    frozen = masters[0]
    pid = _pid_of(frozen["addr"])
    os.kill(pid, signal.SIGSTOP)
    try:
        # a peer has an unanswered ping to it (what the probe takes as confirmation), within a few seconds
        deadline = time.monotonic() + 15
        peers = [a for a in nodes if a != frozen["addr"]]
        while time.monotonic() < deadline:
            now = int(time.time() * 1000)
            if any(v[frozen["id"]]["ping_sent"] and now - v[frozen["id"]]["ping_sent"] > 1500
                   for v in views(peers).values()):
                break
            time.sleep(0.2)
        # busy is not down: the run waits (read-only) until the cluster flags it fail; then its replica is promoted,
        # by this run (FORCE) or by Redis's own election if that came first
        run, report = recover(report_dir)
        assert run.rc == 0, run.stdout[-3000:]
        replica = [n for n in v0.values() if n["master"] == frozen["id"]][0]
        step = dict(replica_id=replica["id"])
        for f in failover_result(run).get("failovers") or ():
            assert f["master"] == frozen["addr"] and f["mode"] == "force" and f["replica_id"] == replica["id"]
        for a, v in views(peers).items():
            assert v[step["replica_id"]]["role"] == "master" and v[step["replica_id"]]["slots"] == frozen["slots"], a
        # (redis-cli --cluster check would hang on the frozen node: it has no timeout; run below, after the thaw)
        assert_serving(peers, keys, check=False)
    finally:
        os.kill(pid, signal.SIGCONT)
    # thawed, it learns that its slots have a newer owner and follows it
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        v = views([frozen["addr"]]).get(frozen["addr"], {})
        me = v.get(frozen["id"])
        if me and me["role"] == "replica" and me["master"] == step["replica_id"]:
            break
        time.sleep(0.2)
    assert me and me["role"] == "replica" and me["master"] == step["replica_id"], me
    assert missing_keys(nodes, keys) == []
    cluster_check(nodes[0])


@pytest.mark.valkey
def test_empty_master_rejoins_as_replica(healthy_lab, report_dir):
    nodes = lab_nodes()
    v0 = views(nodes)[nodes[0]]
    replica = sorted((n for n in v0.values() if n["role"] == "replica"), key=lambda n: n["addr"])[0]
    its_master = v0[replica["master"]]
    # the replica loses its state (as a node restarted without nodes.conf would) and is met again: an empty master
    c = client(replica["addr"])
    c.execute_command("CLUSTER", "RESET", "SOFT")
    host, port = its_master["addr"].rsplit(":", 1)
    c.execute_command("CLUSTER", "MEET", host, port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        vs = views(nodes)
        if all(replica["id"] in v and v[replica["id"]]["role"] == "master" for v in vs.values()):
            break
        time.sleep(0.2)

    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert run.result(REJOIN_TASK)["rejoined"] == [dict(node=replica["addr"], master=its_master["addr"])]
    assert views([replica["addr"]])[replica["addr"]][replica["id"]]["role"] == "master"

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    for a, v in views(nodes).items():
        assert v[replica["id"]]["role"] == "replica" and v[replica["id"]]["master"] == its_master["id"], a
    info = client(replica["addr"]).info("replication")
    assert info["master_link_status"] == "up"
    assert report["fully_healthy"] is True, report["reason"]
    run, report = recover(report_dir)
    assert run.rc == 0 and changed_count(run) == 0


def _log_since_start(addr):
    """The node's redis.log from its last start on (CONFIG GET dir / logfile)."""
    c = client(addr)
    d = c.config_get("dir")["dir"]
    log = c.config_get("logfile")["logfile"]
    with open(log if os.path.isabs(log) else os.path.join(d, log)) as f:
        text = f.read()
    return text[text.rfind("Server initialized"):]


def _masters(addrs):
    v0 = views(addrs)[addrs[0]]
    return sorted((n for n in v0.values() if n["role"] == "master" and n["slots"]), key=lambda n: n["addr"])


@pytest.mark.valkey
@pytest.mark.parametrize("stall,extra", [
    (4, {}),  # the role's defaults
    # the operator allows data loss and does not wait: a busy master's slots are still never repaired around
    (5, {"p3_redis_allow_data_loss": True, "p3_redis_confirm_timeout": 0}),
], ids=["defaults", "allow_data_loss"])
def test_busy_master_is_not_failed_over(healthy_lab, report_dir, stall, extra):
    """A master stalled by DEBUG SLEEP (a slow script, a big delete, a fork stall) while recover_redis.yml runs:
    busy is not down - no failover, no slot assignment, no acknowledged write lost, roles unchanged."""
    import threading

    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "busy")
    busy = _masters(nodes)[0]
    before = dict((a, roles(v)) for a, v in views(nodes).items())
    around, around_errors = {}, []

    def stall_and_write():
        c = client(busy["addr"], timeout=15)
        t = threading.Thread(target=lambda: client(busy["addr"], timeout=15).execute_command("DEBUG", "SLEEP", stall))
        t.start()
        time.sleep(0.3)
        # writes sent during the stall: answered once it ends, and acknowledged by the replica
        mine = [k for k in ("p3test:busy-around:%d" % i for i in range(400)) if key_slot(k.encode()) in busy["slots"]]
        pipe = c.pipeline(transaction=False)
        for k in mine:
            pipe.set(k, "around")
        replies = pipe.execute(raise_on_error=False)
        try:
            acked = c.execute_command("WAIT", 1, 5000)
        except redis.RedisError as e:
            acked = e
        around.update((k, "around") for k, r in zip(mine, replies) if r is True)
        around_errors.extend(str(r) for r in replies + [acked] if isinstance(r, Exception))
        t.join()

    def later():
        time.sleep(1.2)  # ansible-playbook's own start: the stall covers the diagnosis
        stall_and_write()

    th = threading.Thread(target=later)
    th.start()
    run, report = recover(report_dir, **extra)
    th.join()
    assert run.rc == 0, run.stdout[-3000:]
    assert around and not around_errors, around_errors[:3]
    actions = [e["action"] for e in report["timeline"]]
    assert not [a for a in actions if a.startswith("cluster failover") or a == "addslots"], report["timeline"]
    for res in run.results(FAILOVER_TASK):
        assert not res.get("failovers"), res
    after = dict((a, roles(v)) for a, v in views(nodes).items())
    assert after == before
    keys.update(around)
    assert missing_keys(nodes, keys) == []
    cluster_check(nodes[0])


def test_heal_never_resurrects_old_data(healthy_lab, report_dir):
    """A dead master restarted by `p3lab heal` comes back empty and rejoins as a replica: the RDB file an earlier
    sync (here: a SAVE) left behind never takes its slots back and never overwrites newer acknowledged writes."""
    nodes = lab_nodes()
    old = write_acked(nodes, 300, "heal-old")
    victim = _masters(nodes)[0]  # the fault kills the live master with the lowest port
    client(victim["addr"]).execute_command("SAVE")  # stale data on disk, as a replica sync leaves it
    new = write_acked(nodes, 600, "heal-new")
    did = lab_fault("redis-master-down")
    assert did["node"] == victim["addr"]
    lab("heal")
    keys = dict(old)
    keys.update(new)
    assert missing_keys(nodes, keys) == []
    for a, v in views(nodes).items():
        assert v[victim["id"]]["role"] == "replica" and not v[victim["id"]]["slots"], a
    assert "DB loaded from disk" not in _log_since_start(victim["addr"])
    cluster_check(nodes[0])


def _logfile(addr):
    c = client(addr)
    d = c.config_get("dir")["dir"]
    log = c.config_get("logfile")["logfile"]
    return log if os.path.isabs(log) else os.path.join(d, log)


def test_concurrent_runs_claim_only_what_they_did(healthy_lab, tmp_path):
    """Two recover_redis.yml at once on one dead master: each run claims a promotion (by=p3.recovery, changed)
    only for a FORCE the replica accepted (its log says so); when Redis's own election promoted it, no run claims
    it. No acknowledged key is lost either way."""
    import threading

    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "concurrent")
    v0 = views(nodes)[nodes[0]]
    did = lab_fault("redis-master-down")
    replica = [n for n in v0.values() if n["master"] == did["node_id"]][0]
    log = _logfile(replica["addr"])
    start = os.path.getsize(log)
    out = {}

    def one(i):
        out[i] = recover(str(tmp_path / ("r%d" % i)))

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(log) as f:
        f.seek(start)
        text = f.read()
    forced = text.count("Forced failover user request accepted")
    claims = 0
    for i, (run, report) in out.items():
        assert run.rc == 0, run.stdout[-3000:]
        ours = [f for res in run.results(FAILOVER_TASK) for f in res.get("failovers") or () if f.get("by", "p3.recovery") == "p3.recovery"]
        claims += len(ours)
        assert report["changed"] is bool(ours), report
        sent = [e for e in report["timeline"] if e["action"].startswith("cluster failover")]
        assert len(sent) == len(ours), report["timeline"]
    assert claims == forced, (claims, forced, text[-2000:])
    if not forced:
        assert "Failover election won" in text or "failover election" in text.lower(), text[-2000:]
    for a, v in views([a for a in nodes if a != did["node"]]).items():
        assert v[replica["id"]]["role"] == "master", a
    assert missing_keys(nodes, keys) == []


# ---------------------------------------------------------------- throwaway deployments (ports base+40..)

def _base():
    return int(os.environ.get("P3LAB_BASE_PORT", "17000"))


def _start(ports, tmp, cluster, node_timeout=5000):
    pids = []
    for p in ports:
        d = os.path.join(tmp, str(p))
        os.makedirs(d)
        conf = ["port %d" % p, "bind 127.0.0.1", "daemonize yes", "pidfile %s/redis.pid" % d, "dir %s" % d,
                "logfile %s/redis.log" % d, 'save ""', "appendonly no", "requirepass %s" % PW, "masterauth %s" % PW,
                "repl-diskless-sync-delay 0"]
        if cluster:
            conf += ["cluster-enabled yes", "cluster-config-file nodes.conf",
                     "cluster-node-timeout %d" % node_timeout]
        with open(os.path.join(d, "redis.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        subprocess.run(["redis-server", os.path.join(d, "redis.conf")], check=True, env=dict(os.environ, P3LAB_OWNER=tmp))
    deadline = time.monotonic() + 10
    while not all(alive("127.0.0.1:%d" % p) for p in ports):
        assert time.monotonic() < deadline, "throwaway redis did not start"
        time.sleep(0.05)
    for p in ports:
        with open(os.path.join(tmp, str(p), "redis.pid")) as f:
            pids.append(int(f.read().strip()))
    return pids


def _inventory(tmp, addrs):
    """A throwaway Redis with the lab's database beside it, as in every P3 deployment: the run-level lock lives
    there (a Redis that is being repaired cannot hold it: a standalone master that is down leaves no writable node)."""
    with open(INVENTORY) as f:
        database_url = yaml.safe_load(f)["all"]["vars"]["p3_database_url"]
    path = os.path.join(tmp, "inventory.yml")
    with open(path, "w") as f:
        yaml.safe_dump({"all": {"vars": {"ansible_python_interpreter": os.path.join(os.path.dirname(os.sys.executable), "python"),
                                         "p3_redis_nodes": addrs, "p3_redis_password": PW,
                                         "p3_database_url": database_url},
                                "hosts": {"localhost": {"ansible_connection": "local"}}}}, f)
    return path


@pytest.fixture
def throwaway(lab_up):
    tmp = tempfile.mkdtemp(prefix="p3-redis-")
    started = []
    yield tmp, started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def test_lossy_repair_refused_unless_allowed(throwaway, report_dir):
    tmp, started = throwaway
    ports = [_base() + 40 + i for i in range(3)]
    addrs = ["127.0.0.1:%d" % p for p in ports]
    pids = _start(ports, tmp, cluster=True)
    started += pids
    proc = subprocess.run(["redis-cli", "--no-auth-warning", "-a", PW, "--cluster", "create"] + addrs +
                          ["--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
    assert "[OK] All 16384 slots covered" in proc.stdout, proc.stdout + proc.stderr
    deadline = time.monotonic() + 15
    while set(states(addrs).values()) != {"ok"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    data = {}
    for i in range(600):
        data["p3test:lossy:%d" % i] = str(i)
    live_owner = owner_map(views(addrs[:1])[addrs[0]])
    for k, val in data.items():
        client(live_owner[key_slot(k.encode())]).set(k, val)
    # the master of the first port dies; it has no replica
    dead = addrs[0]
    dead_view = views([dead])[dead]
    dead_id = next(i for i, n in dead_view.items() if n["myself"])
    dead_slots = dead_view[dead_id]["slots"]
    os.kill(pids[0], signal.SIGKILL)
    inv = _inventory(tmp, addrs)
    live = addrs[1:]
    time.sleep(0.3)

    run, report = recover(report_dir, inventory=inv)
    assert run.rc != 0
    msg = run.result(SLOTS_TASK)["msg"]
    assert "refusing the lossy repair of %d slots" % len(dead_slots) in msg and dead in msg, msg
    assert "allow_data_loss" in msg
    for a, v in views(live).items():  # nothing was assigned
        assert v[dead_id]["slots"] == dead_slots, a
    assert report["healthy"] is False and report["failed_task"] == SLOTS_TASK

    run, report = recover(report_dir, inventory=inv, p3_redis_allow_data_loss=True)
    assert run.rc == 0, run.stdout[-3000:]
    plan = run.result(SLOTS_TASK)["plan"]
    assert plan["keys_unknown_on"] == [dead]
    assert sum(a["count"] for a in plan["assign"]) == len(dead_slots)
    for a in plan["assign"]:  # contiguous: one range per new owner
        assert "," not in a["slots"], plan
    for a, v in views(live).items():
        assert not v[dead_id]["slots"] and len(owner_map(v)) == 16384, a
    lost = [k for k in data if key_slot(k.encode()) in dead_slots]
    kept = dict((k, val) for k, val in data.items() if k not in lost)
    assert lost and missing_keys(live, kept) == []
    assert set(states(live).values()) == {"ok"}
    cluster_check(live[0])

    # the dead node, slotless and flagged fail, is forgotten on every node only when asked to
    deadline = time.monotonic() + 20
    while not all("fail" in v[dead_id]["flags"] for v in views(live).values()):
        assert time.monotonic() < deadline, "the dead node was never flagged fail"
        time.sleep(0.2)
    run, report = recover(report_dir, inventory=inv)
    assert run.rc == 0 and changed_count(run) == 0
    assert report["before"]["next_actions"] == ["forget"] and "forget: set p3_redis_forget_failed" in report["decision"]["why"]
    assert all(dead_id in v for v in views(live).values())
    run, report = recover(report_dir, inventory=inv, p3_redis_forget_failed=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert run.result("Act - forget dead nodes on every node")["forgotten"] == [dead]
    assert all(dead_id not in v for v in views(live).values())
    assert report["healthy"] is True and report["after"]["forget_candidates"] == []
    run, report = recover(report_dir, inventory=inv, p3_redis_forget_failed=True)
    assert run.rc == 0 and changed_count(run) == 0


def test_standalone_promotes_the_replica_and_the_old_master_rejoins(throwaway, report_dir):
    tmp, started = throwaway
    ports = [_base() + 45, _base() + 46]
    addrs = ["127.0.0.1:%d" % p for p in ports]
    pids = _start(ports, tmp, cluster=False)
    started += pids
    master, replica = addrs
    client(replica).execute_command("REPLICAOF", "127.0.0.1", str(ports[0]))
    c = client(master)
    for i in range(200):
        c.set("p3test:standalone:%d" % i, str(i))
    assert c.execute_command("WAIT", 1, 5000) == 1
    inv = _inventory(tmp, addrs)
    run, report = recover(report_dir, inventory=inv)
    assert run.rc == 0 and changed_count(run) == 0 and report["healthy"] is True, run.stdout[-3000:]

    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.2)
    run, report = recover(report_dir, inventory=inv, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert client(replica).info("replication")["role"] == "slave"

    run, report = recover(report_dir, inventory=inv)
    assert run.rc == 0, run.stdout[-3000:]
    step = run.result(FAILOVER_TASK)["failovers"][0]
    assert step["replica"] == replica and step["mode"] == "replicaof"
    assert client(replica).info("replication")["role"] == "master"
    assert missing_keys_standalone(replica, 200) == []

    # the old master comes back (empty, as a second master): it rejoins as a replica of the new one
    started += _start([ports[0]], os.path.join(tmp, "again"), cluster=False)
    run, report = recover(report_dir, inventory=inv)
    assert run.rc == 0, run.stdout[-3000:]
    assert run.result(REJOIN_TASK)["rejoined"][0]["node"] == master
    info = client(master).info("replication")
    assert info["role"] == "slave" and info["master_port"] == ports[1] and info["master_link_status"] == "up"
    assert client(master).get("p3test:standalone:7") == "7"
    run, report = recover(report_dir, inventory=inv)
    assert run.rc == 0 and changed_count(run) == 0 and report["fully_healthy"] is True, report["reason"]


@pytest.mark.parametrize("nodes,fragment", [
    (["127.0.0.1:1"], "no Redis node reachable: 127.0.0.1:1 connection refused"),
    (["127.0.0.1:abc"], "invalid redis_nodes entry"),
])
def test_bad_input_or_unreachable_fails_cleanly(tmp_path, report_dir, nodes, fragment):
    inv = _inventory(str(tmp_path), nodes)
    run, report = recover(report_dir, inventory=inv)
    assert run.rc != 0
    assert fragment in report["reason"], report["reason"]
    assert "\n" not in report["reason"] and "Traceback" not in run.stdout
    assert PW not in run.stdout
