"""The anchor worker's connections keep their name across a failover and a failback (issue 17, the chaos soak's
"anchor worker absent after a failover under load"; pass a).

BullMQ names its worker's connections (CLIENT SETNAME), and that name is how diagnose and anchor_queue count the
queue's workers. P3's worker (ioredis `connectionName`) names every connection it ever opens. The lab app's Python
BullMQ named only the connections of the nodes its cluster client knew when the worker started: a node met later
(the killed master, back as a replica and then failed back to, as the collection's reshape or a planned failback
does) got connections without a name. Under load the worker is never idle, so the lab app's own follow-the-failover
check never replaced it, the worker kept taking jobs on an unnamed connection, and the final diagnose of recover_all
said "anchor worker absent" (the chaos bench had to pass p3_anchor_min_workers: 1 so that the anchor stage restarted
the app). Every assertion reads CLIENT LIST on the real master that serves the queue.
"""
import os
import signal
import sys
import time

from p3harness import PREFIX, ROOT, lab

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import rediscluster  # noqa: E402
from p3lablib.common import Lab, live_pid, wait_until  # noqa: E402

QUEUE_KEY = PREFIX + "wait"      # the queue's keys share one hash slot ({bull})
WORKER_NAME = PREFIX.rstrip(":")  # the lab app's BullMQ names its worker connections "<prefix>:<queue>..."


def _me(port):
    return [n for n in rediscluster.cluster_nodes(port, timeout=1.0) if n["myself"]][0]


def _worker_clients(port):
    """(named, unnamed blocking) connections of the anchor worker on the node: the worker is the only client that
    blocks in BZPOPMIN on the queue's marker."""
    clients = rediscluster.client(port, timeout=2).client_list()
    named = [c for c in clients if (c.get("name") or "").startswith(WORKER_NAME)]
    unnamed = [c for c in clients if not c.get("name") and c.get("cmd") == "bzpopmin"]
    return named, unnamed


def test_worker_connections_keep_their_name_across_a_failover_and_a_failback(healthy_lab):
    L = Lab()
    m_port = rediscluster.owner_port_for_key(L, QUEUE_KEY)
    m_index = L.redis_ports.index(m_port) + 1
    replica = [n for n in rediscluster.cluster_nodes(m_port) if n["master_id"] == _me(m_port)["id"]]
    assert replica, "the queue's master %d has no replica" % m_port
    assert wait_until(lambda: _worker_clients(m_port)[0], 20, 0.2), "no named worker connection on %d at start" % m_port

    # the queue's master dies and its replica takes its slots (as recover_redis does); the worker follows it there
    # while the dead master stays down, so its cluster client forgets that node
    r_port = replica[0]["port"]
    os.kill(live_pid(L.redis_pidfile(m_index)), signal.SIGKILL)
    rediscluster.client(r_port, timeout=2).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    assert wait_until(lambda: _me(r_port)["role"] == "master" and _me(r_port)["slots"], 20, 0.1)
    assert wait_until(lambda: _worker_clients(r_port)[0], 30, 0.2), "the worker never followed the slot to %d" % r_port
    # heal starts the dead master again, empty, as its old replica's replica
    lab("heal", timeout=240)
    assert wait_until(lambda: _me(m_port)["role"] == "replica"
                      and rediscluster.replication(m_port).get("master_link_status") == "up", 30, 0.2)

    # failback: the old master takes its slots again (a node the worker's client met after the worker started).
    # TAKEOVER, as for the failover: no election, so no vote a master cast in the last 2 x node timeout refuses it
    rediscluster.client(m_port, timeout=2).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    assert wait_until(lambda: _me(m_port)["role"] == "master" and _me(m_port)["slots"], 20, 0.1), \
        "the failback to %d did not happen" % m_port
    assert rediscluster.owner_port_for_key(L, QUEUE_KEY) == m_port

    # the worker follows the slot to the old master: every connection it blocks with there carries its name
    seen_named, seen_unnamed = [], []
    t_end = time.monotonic() + 15
    while time.monotonic() < t_end and not (seen_named and time.monotonic() > t_end - 7):
        named, unnamed = _worker_clients(m_port)
        seen_named += named
        seen_unnamed += unnamed
        time.sleep(0.2)
    assert not seen_unnamed, "the worker blocked on %d without its name: %s" % (
        m_port, sorted({"id=%s addr=%s age=%s" % (c.get("id"), c.get("addr"), c.get("age")) for c in seen_unnamed}))
    assert seen_named, "no named worker connection on the queue's master %d after the failback" % m_port
