"""`p3lab heal`: undo every fault (recorded or not) without the collection, then wait until the lab is healthy."""
import json
import os
import shutil
import signal
import time

from . import anvil, pg, rediscluster, status
from .common import ONE_ETH, LabError, http, kill, live_pid, pid_alive, read_json, wait_until, write_json
from .faults import crash_marker, failed_jobs, holder_pids, peers, waiting
from .stack import INSTANCES_WAIT, Deadline, check_binaries, preflight_ports, start_infra, write_state


def _delete_corrupt_sessions(lab):
    _, nodes = rediscluster.view(lab)
    deleted = 0
    for m in status.masters_of(nodes or []):
        c = rediscluster.client(m["port"], decode=False, timeout=5)
        bad = []

        def page(keys, values, ttls, bad=bad):
            for k, v, t in zip(keys, values, ttls):
                if v is not None and not status.session_ok(v, t):
                    bad.append(k)

        status.scan_sessions(m["port"], page)
        for i in range(0, len(bad), 500):
            pipe = c.pipeline(transaction=False)  # one key per UNLINK: the keys live in different slots
            for k in bad[i:i + 500]:
                pipe.unlink(k)
            deleted += sum(pipe.execute())
    return deleted


def _dead_redis(lab):
    """Indexes (1..6) of our redis nodes whose process is gone (a frozen node is alive: not restarted)."""
    return [i for i in range(1, 7) if not live_pid(lab.redis_pidfile(i))]


def _hand_over_slots(lab, dead, dl):
    """Before a dead master is restarted, its best live replica takes its slots (CLUSTER FAILOVER FORCE, then
    TAKEOVER if the election is refused): restarted, the old master must never take its slots back, whatever data
    it would come back with. The process is gone (heal knows it from the pid file), so forcing is safe here.
    A dead master without a live replica keeps its slots: it comes back empty and serves them (its keys are lost,
    as a killed master's are without persistence)."""
    actions = []
    dead_ports = set(lab.redis_ports[i - 1] for i in dead)
    _, nodes = rediscluster.view(lab, prefer=next((p for p in lab.redis_ports if p not in dead_ports), None))
    for m in nodes or []:
        if m["port"] not in dead_ports or m["role"] != "master" or not m["slots"]:
            continue
        reps = []
        for r in nodes:
            if r["master_id"] == m["id"] and r["port"] not in dead_ports and rediscluster.ping(r["port"]):
                try:
                    offset = int(rediscluster.replication(r["port"]).get("slave_repl_offset") or 0)
                except Exception:  # noqa: BLE001
                    continue
                reps.append((offset, r))
        if not reps:
            continue
        r = max(reps, key=lambda t: t[0])[1]

        def promoted(r=r):
            me = [n for n in rediscluster.cluster_nodes(r["port"], timeout=0.7) if n["myself"]][0]
            return me["role"] == "master" and bool(me["slots"])

        for how in ("FORCE", "TAKEOVER"):
            try:
                rediscluster.client(r["port"], timeout=2).execute_command("CLUSTER", "FAILOVER", how)
            except Exception as e:  # noqa: BLE001 - already a master (Redis failed over by itself)
                actions.append("CLUSTER FAILOVER %s on %s: %s" % (how, r["address"], e))
            if wait_until(promoted, dl.left(6), 0.05):
                actions.append("%s took the slots of dead master %s (CLUSTER FAILOVER %s)"
                               % (r["address"], m["address"], how))
                break
        else:
            raise LabError("the replica %s of dead master %s did not take its slots" % (r["address"], m["address"]))
    return actions


def _empty_disk(lab, i):
    """A restarted node comes back empty: drop whatever data files an earlier sync or SAVE left in its dir (its
    nodes.conf stays, so it rejoins under its id and follows the new owner of its slots as a replica)."""
    d = lab.redis_node_dir(i)
    gone = []
    for name in ("dump.rdb", "appendonly.aof", "appendonlydir"):
        path = os.path.join(d, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            gone.append(name)
        elif os.path.exists(path):
            os.remove(path)
            gone.append(name)
    return gone


def _publish_reconnect(lab):
    msg = json.dumps({"action": "reconnect"})
    for port in lab.redis_ports:
        try:
            return rediscluster.client(port, timeout=1).publish("mesh:control", msg)
        except Exception:  # noqa: BLE001
            continue
    raise LabError("no redis node answers: cannot publish on mesh:control")


def heal(lab):
    if lab.upstream:  # P3 Protocol's own server (lab/p3lablib/upstream_faults.py)
        from .upstream_faults import heal as heal_upstream

        return heal_upstream(lab)
    t0 = time.monotonic()
    dl = Deadline(240)
    faults = read_json(lab.faults_json, []) or []
    actions = []

    # 0. fault app-crashloop: the app may start and stay up again
    if os.path.exists(crash_marker(lab)):
        os.unlink(crash_marker(lab))
        actions.append("removed the app-crashloop marker")

    # 1. the db connection holder goes first (it would re-grab freed slots)
    for pid in holder_pids(lab):
        kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 3, 0.02)
        actions.append("killed db holder %d" % pid)

    # 2. the anchor wallet before anything (re)starts the app: a fresh worker would drain a backlog into failures
    wallet_faulted = any(f.get("fault") == "wallet-empty" for f in faults)
    if anvil.answering(lab):
        bal = anvil.balance(lab)
        if bal < ONE_ETH // 10 or wallet_faulted:
            anvil.set_balance(lab, ONE_ETH)
            actions.append("anchor wallet balance %d -> 1 ETH" % bal)
            wallet_faulted = False

    # 3. every process that is not running: dead redis nodes rejoin from nodes.conf, empty, and a dead master's
    #    slots go to its replica first (so it comes back as that replica's replica, never as their owner)
    dead = _dead_redis(lab)
    if dead and len(dead) < 6:
        actions += _hand_over_slots(lab, dead, dl)
    for i in dead:
        gone = _empty_disk(lab, i)
        if gone:
            actions.append("redis%d starts empty (removed %s)" % (i, ", ".join(gone)))
    check_binaries()
    preflight_ports(lab)
    write_state(lab)
    res = start_infra(lab, dl, wait_state=False)
    if res["redis"]["started"]:
        actions.append("restarted redis%s" % ",".join(str(i) for i in res["redis"]["started"]))
    for name in ("postgres", "anvil", "supervisord"):
        if res.get(name) is True:
            actions.append("started %s" % name)
    if res.get("p3app"):
        actions.append("started p3app")
    if res.get("meshpeers"):
        actions.append("started meshpeers")

    n = pg.terminate_leaks(lab)
    if n:
        actions.append("terminated %d p3-lab-leak backends" % n)

    # 4. redis: give unowned slots back to their recorded owner, then wait for a settled cluster; a cluster that
    #    serves every slot in another shape (2 masters + 4 replicas after a master and its replica were lost
    #    together and their slots reassigned) goes back to 3 masters with one replica each, keys moved with their
    #    slots (rediscluster.reshape)
    wanted = {}
    for f in faults:
        if f.get("fault") == "redis-slots-uncovered" and f.get("range"):
            a, b = f["range"]
            for s in range(a, b + 1):
                wanted[s] = f.get("owner_id")
    if not wait_until(lambda: rediscluster.topology_ok(lab), 2, 0.25):
        # let restarted nodes learn the topology before deciding which slots nobody owns
        wait_until(lambda: all(rediscluster.ping(p) for p in lab.redis_ports), dl.left(10), 0.1)
        time.sleep(0.5)
        actions += rediscluster.repair_slots(lab, wanted)
        if not rediscluster.wait_serving(lab, dl.left(90)):
            actions += rediscluster.repair_slots(lab, wanted)
            if not rediscluster.wait_serving(lab, dl.left(60)):
                st = status.collect(lab)
                raise LabError("redis did not settle: %s" % "; ".join(p for p in st["problems"] if p.startswith("redis")))
        if not rediscluster.topology_ok(lab):
            actions += rediscluster.reshape(lab, dl)
            if not rediscluster.wait_healthy(lab, dl.left(30)):
                st = status.collect(lab)
                raise LabError("redis is not back to %d masters with %d replica each: %s" % (
                    rediscluster.DESIGNED_MASTERS, rediscluster.DESIGNED_REPLICAS,
                    "; ".join(p for p in st["problems"] if p.startswith("redis"))))

    # 5. sessions
    n = _delete_corrupt_sessions(lab)
    if n:
        actions.append("deleted %d corrupt sessions" % n)

    # 6. the anchor wallet (again: anvil may have just been restarted)
    bal = anvil.balance(lab)
    if bal < ONE_ETH // 10 or wallet_faulted:
        anvil.set_balance(lab, ONE_ETH)
        actions.append("anchor wallet balance %d -> 1 ETH" % bal)

    # 7. the app (started above when it was down), healthy again
    def healthy():
        code, _ = http("GET", lab.app_url + "/health", timeout=2)
        return code == 200

    if not wait_until(healthy, dl.left(60), 0.25):
        code, body = http("GET", lab.app_url + "/health", timeout=2)
        raise LabError("the app is still unhealthy: %s %s (see %s)" % (code, body, lab.app_log))

    # 7b. with --app-instances N: every HAProxy server back in rotation (a drain or maintenance left by an operator or
    # by a restart whose health gate failed), and seen up by HAProxy's own checks
    if lab.lb_url:
        from . import haproxy

        left = [n for n, a in haproxy.admin_states(lab).items() if a != "ready"]
        for name in left:
            haproxy.command(lab, "set server %s/%s state ready" % (haproxy.BACKEND, name))
        if left:
            actions.append("haproxy: %s set ready" % ", ".join(sorted(left)))
        if not wait_until(lambda: haproxy.all_up(lab), dl.left(INSTANCES_WAIT), 0.25):
            raise LabError("haproxy does not see every app instance up: %s" % haproxy.servers(lab))

    # 8. the anchor worker
    code, body = http("POST", lab.app_url + "/_lab/anchor/resume", {}, timeout=15)
    if code not in (200, 202, 204):
        raise LabError("POST /_lab/anchor/resume answered %s %s" % (code, body))

    # 9. the mesh relay (peers of a freshly started app reconnect by themselves within about a second)
    if peers(lab) != lab.peers and not wait_until(lambda: peers(lab) == lab.peers, 2, 0.2):
        _publish_reconnect(lab)
        actions.append("published reconnect on mesh:control")
        end = time.monotonic() + dl.left(30)
        last = time.monotonic()
        while peers(lab) != lab.peers:
            if time.monotonic() > end:
                raise LabError("mesh peers did not come back: %s of %d (see %s)" % (peers(lab), lab.peers, lab.mesh_log))
            if time.monotonic() - last > 3:
                _publish_reconnect(lab)
                last = time.monotonic()
            time.sleep(0.2)

    # 10. jobs a fault failed go back to wait (BullMQ's retryJobs, in the app) and the anchor backlog drains
    failed = failed_jobs(lab)
    if failed:
        code, body = http("POST", lab.app_url + "/_lab/anchor/retry-failed", {}, timeout=20)
        if code != 200:
            raise LabError("POST /_lab/anchor/retry-failed answered %s %s" % (code, body))
        actions.append("%d failed anchor jobs retried" % failed)
    w = waiting(lab)
    if w:
        if not wait_until(lambda: waiting(lab) == 0, dl.left(90), 0.5):
            raise LabError("the anchor queue did not drain: %s jobs still waiting" % waiting(lab))
        actions.append("anchor backlog of %d drained" % w)
    if failed and not wait_until(lambda: failed_jobs(lab) == 0 and waiting(lab) == 0, dl.left(60), 0.5):
        raise LabError("failed anchor jobs did not complete: %s still failed" % failed_jobs(lab))

    # 11. everything at once
    last = {}

    def all_good():
        last["st"] = status.collect(lab)
        return last["st"]["healthy"]

    if not wait_until(all_good, dl.left(30), 0.5):
        raise LabError("still unhealthy after heal: %s" % "; ".join(last["st"]["problems"]))
    write_json(lab.faults_json, [])
    return {"healed": [f.get("fault") for f in faults], "actions": actions, "seconds": round(time.monotonic() - t0, 1)}
