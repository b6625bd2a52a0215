# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis Cluster recovery logic of p3.recovery: the merged topology (redis_cluster_topology), safe failover
(redis_cluster_failover), slot repair (redis_cluster_slots) and membership (redis_cluster_node).

Connections come from redis_client (one short-timeout connection per node, no retries). The pure parts
(build_topology, plan_failover, plan_slot_repair, ...) take plain data so the unit tests can drive them; the
actions (run_*) talk to the nodes, poll until every reachable node agrees, and return a timeline.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from collections import Counter

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    DeadlineExceeded, P3Error, hostport, num_text, one_line, timeline_entry)
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import (
    CLUSTER_SLOTS,
    compress_slots,
    describe_redis_error,
    format_ranges,
    node_client,
    parse_address,
    parse_cluster_nodes,
    parse_info,
    probe_nodes,
    slots_from_ranges,
)

FAIL = "fail"
PFAIL = "fail?"
POLL = 0.05

# The options of doc fragment p3.recovery.redis_cluster, defined once.
REDIS_CLUSTER_ARGUMENT_SPEC = dict(
    unanswered_ms=dict(type="int", default=15000),
    confirm_timeout=dict(type="float", default=0.0),
)


def cluster_param_error(params):
    """One line naming a bad option of doc fragment p3.recovery.redis_cluster, or None."""
    if params.get("unanswered_ms") is not None and params["unanswered_ms"] <= 0:
        return "unanswered_ms must be > 0, got %s" % params["unanswered_ms"]
    if params.get("confirm_timeout") is not None and params["confirm_timeout"] < 0:
        return "confirm_timeout must be >= 0, got %s" % params["confirm_timeout"]
    return None


# Redis's own default cluster-node-timeout: what "down" means when no node answers CONFIG GET.
DEFAULT_NODE_TIMEOUT_MS = 15000

CONFIRM_POLL = 0.25


def range_slots(ranges):
    """['0-99', '200'] -> set of slot numbers."""
    out = set()
    for r in ranges or ():
        a, sep, b = str(r).partition("-")
        out.update(range(int(a), int(b if sep else a) + 1))
    return out


def ranges_text(slots, limit=8):
    """Set / iterable of slots -> '0-99,200' (cut after limit ranges)."""
    r = format_ranges(compress_slots(slots))
    if len(r) > limit:
        return ",".join(r[:limit]) + ",... (%d ranges)" % len(r)
    return ",".join(r)


# ---------------------------------------------------------------------------------------------------------------
# Reading: every node, merged
# ---------------------------------------------------------------------------------------------------------------

def _extra(client, rec):
    """Per-node extras on the probe's connection: memory, the node's clock (for ping ages), key count."""
    mem = parse_info(client.execute_command("INFO", "memory"))
    rec["memory"] = dict(
        used_memory=_int(mem.get("used_memory")),
        maxmemory=_int(mem.get("maxmemory")),
        maxmemory_policy=mem.get("maxmemory_policy"),
        total_system_memory=_int(mem.get("total_system_memory")),
    )
    t = client.execute_command("TIME")
    rec["time_ms"] = int(t[0]) * 1000 + int(t[1]) // 1000
    rec["keys"] = int(client.execute_command("DBSIZE"))
    rec["node_timeout_ms"] = read_node_timeout(client)


def read_node_timeout(client):
    """The node's cluster-node-timeout in ms (CONFIG GET), or None when it refuses CONFIG (renamed, ACL)."""
    try:
        reply = client.execute_command("CONFIG", "GET", "cluster-node-timeout")
    except Exception:  # noqa: BLE001 - a managed Redis may refuse CONFIG: the caller falls back
        return None
    if isinstance(reply, dict):
        return _int(reply.get("cluster-node-timeout"))
    if isinstance(reply, (list, tuple)) and len(reply) >= 2:
        return _int(reply[1])
    return None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read_records(settings, deadline=None):
    return probe_nodes(settings, extra=_extra, deadline=deadline)


def read_topology(settings, unanswered_ms=DEFAULT_NODE_TIMEOUT_MS, confirm_timeout=0.0):
    """Probe every node reachable from the seeds and merge their views (see build_topology).

    confirm_timeout: while a slot-owning master is busy (unreachable from here, not yet down by the cluster's own
    definition), read again every 0.25 s for at most this many seconds, until it answers again or the cluster
    confirms it down. A total deadline: a read after the first is cut at it (plus one connection and one reply
    time), its unanswered nodes reported as such.
    """
    end = settings.deadline.cut(time.monotonic() + max(0.0, confirm_timeout or 0.0))
    since = {}
    waited = 0.0
    t0 = time.monotonic()
    first = True
    while True:
        now = time.monotonic()
        c, t = settings.connect_timeout, settings.socket_timeout
        cut = None if first else max(min(end, now + 2 * c + 4 * t + 1.0), now + c + t + 0.5)
        first = False
        topo = build_topology(read_records(settings, deadline=cut), seeds=settings.seed_addresses,
                              unanswered_ms=unanswered_ms,
                              unreachable_since=dict((i, (now - t) * 1000.0) for i, t in since.items()))
        busy = [n for n in topo.get("nodes") or () if n.get("health") == "busy" and n.get("slot_count")]
        for n in topo.get("nodes") or ():
            if n.get("id") and not n.get("reachable"):
                since.setdefault(n["id"], now)
            elif n.get("id"):
                since.pop(n["id"], None)
        if not busy or time.monotonic() + CONFIRM_POLL >= end:
            break
        time.sleep(CONFIRM_POLL)
        waited = time.monotonic() - t0
    if topo.get("cluster_enabled"):
        topo["confirm_waited"] = round(waited, 3)
    return topo


def _dedupe(records, seeds):
    """One record per node: a node reached under two names keeps the first (seeds first)."""
    out, ids = {}, set()
    for address in [a for a in seeds if a in records] + sorted(a for a in records if a not in seeds):
        rec = records[address]
        me = _myself(rec)
        if rec.get("reachable") and me is not None:
            if me["id"] in ids:
                continue
            ids.add(me["id"])
        out[address] = rec
    return out


def _myself(rec):
    for n in rec.get("cluster_nodes") or ():
        if n["myself"]:
            return n
    return None


def _owner_map(lines):
    owners = [None] * CLUSTER_SLOTS
    for n in lines:
        if n["role"] == "master":
            for a, b in n["slots"]:
                for s in range(a, b + 1):
                    owners[s] = n["id"]
    return owners


def judge_node(reachable, peer_lines, peer_now_ms, node_timeout_ms, own_unreachable_ms=None):
    """The one model of a cluster node's health; every verdict (topology, redis_probe, redis_serving, the actions'
    re-checks) is a view of it. Pure.

    reachable: the node answered us. peer_lines: {viewer: that viewer's CLUSTER NODES line about the node} (the
    node's own line excluded). peer_now_ms: {viewer: the viewer's clock (TIME) in ms}. node_timeout_ms: the
    cluster's own cluster-node-timeout. own_unreachable_ms: how long we have seen it unreachable ourselves.

    health is
      - "up": it answers us;
      - "down": it does not answer us, and the cluster itself marks it failed (a majority of the peers that list it
        carry the fail flag), or every peer has waited for its pong longer than cluster-node-timeout (flag fail?
        or a ping pending that long) - with no peer answering, our own observation counts;
      - "busy": it does not answer us but is not down by that definition: slow, stalled, paused or just dead and
        not yet confirmed. A busy node is never failed over, forgotten or repaired around.
    Returns dict(health, failed (majority fail flag), pfail, fail_votes, viewers, unanswered_ms (the shortest time
    every peer has been waiting for its pong, 0 when one has heard from it), why).
    """
    viewers = sorted(peer_lines)
    fail_votes = [v for v in viewers if FAIL in peer_lines[v]["flags"]]
    pfail_votes = [v for v in viewers if PFAIL in peer_lines[v]["flags"]]
    failed = bool(viewers) and len(fail_votes) * 2 > len(viewers)
    ages = []
    for v in viewers:
        n = peer_lines[v]
        now = peer_now_ms.get(v)
        if v in fail_votes or v in pfail_votes:
            ages.append(node_timeout_ms + 1 if not (n["ping_sent"] and now) else max(now - n["ping_sent"],
                                                                                     node_timeout_ms + 1))
        elif n["ping_sent"] and now:
            ages.append(max(0, now - n["ping_sent"]))
        else:
            ages.append(0)
    unanswered = int(min(ages)) if ages else 0
    if reachable:
        health, why = "up", "answers"
    elif failed:
        health, why = "down", "flagged fail by %d of %d peers" % (len(fail_votes), len(viewers))
    elif viewers and unanswered > node_timeout_ms:
        health, why = "down", "no peer has heard from it for %d ms > cluster-node-timeout %d ms" % (
            unanswered, node_timeout_ms)
    elif not viewers and own_unreachable_ms is not None and own_unreachable_ms > node_timeout_ms:
        health, why = "down", "unreachable from here for %d ms > cluster-node-timeout %d ms (no peer to ask)" % (
            int(own_unreachable_ms), node_timeout_ms)
    else:
        seen = ("peers waiting for its pong %d ms" % unanswered if unanswered else "a peer heard from it recently"
                ) if viewers else "no peer to ask"
        health, why = "busy", "not flagged fail by a majority of its peers (%d of %d), %s <= cluster-node-timeout " \
            "%d ms: busy or not yet confirmed, not down" % (len(fail_votes), len(viewers), seen, node_timeout_ms)
    return dict(health=health, failed=failed, pfail=bool(pfail_votes) and not failed, fail_votes=len(fail_votes),
                viewers=len(viewers), unanswered_ms=unanswered if viewers else None, why=why)


def cluster_node_timeout(records, default=DEFAULT_NODE_TIMEOUT_MS):
    """The cluster-node-timeout the reachable nodes report (the largest, to stay on the safe side), else default."""
    values = [r.get("node_timeout_ms") for r in records.values() if r.get("reachable") and r.get("node_timeout_ms")]
    return max(values) if values else int(default or DEFAULT_NODE_TIMEOUT_MS)


def build_topology(records, seeds=(), unanswered_ms=DEFAULT_NODE_TIMEOUT_MS, unreachable_since=None):
    """Merge per-node probe records (redis_client.probe_node + _extra) into one topology with a verdict.

    Pure. Each node's health comes from judge_node. unanswered_ms: the cluster-node-timeout to assume when no node
    answers CONFIG GET. unreachable_since: {node id: ms we have seen it unreachable} (read_topology's own
    observation). Returns a dict: cluster_enabled, nodes, slots (covered/uncovered/unassigned), open_slots,
    disagreements, masters_without_replica, failed/pfail/busy/down nodes, failover_candidates, rejoin_candidates,
    forget_candidates, serving, redundant, healthy, reason.

    The merge, step by step: _merge_views (who lists whom), _node_entries (one entry per node id, health from
    judge_node), _unknown_seeds, _link_masters, _slot_consensus, _served_slots, _epoch_checks, _open_slots,
    _redundancy (replicas, failover/rejoin/forget candidates), then _topology_verdict (problems, healthy, reason).
    """
    unreachable_since = unreachable_since or {}
    seeds = list(seeds or [])
    records = _dedupe(records, seeds)
    reachable = dict((a, r) for a, r in records.items() if r.get("reachable"))
    cluster = any(r.get("cluster_enabled") for r in reachable.values())
    if not reachable:
        return _empty_topology(records)
    if not cluster:
        return build_standalone(records)

    node_timeout = cluster_node_timeout(records, unanswered_ms)
    views, own, canonical, seen = _merge_views(reachable)
    nodes = _node_entries(records, own, canonical, seen, node_timeout, unreachable_since)
    nodes.update(_unknown_seeds(records, nodes))
    _link_masters(nodes)
    maps, consensus, disagree_slots, disagreements = _slot_consensus(views, nodes)
    served, uncovered, unassigned = _served_slots(nodes, own, consensus)
    owners = [n for n in nodes.values() if n["role"] == "master" and n["slot_count"]]
    epoch_disagreements, epoch_collisions = _epoch_checks(seen, nodes, owners)
    open_slots = _open_slots(own, nodes)
    r = _redundancy(nodes, owners)

    promotable = set(f["master_id"] for f in r["failover"] if f["replicas"])
    busy_ids = set(n["id"] for n in nodes.values() if n["health"] == "busy")
    # a busy master's slots are waited for, never repaired around
    orphaned = [s for s in uncovered if consensus[s] not in promotable and consensus[s] not in busy_ids]
    node_list = sorted(nodes.values(), key=lambda n: (n["address"] or "", n["id"] or ""))
    states = dict((n["address"], n["cluster_state"]) for n in node_list if n["reachable"])
    not_ok = sorted(a for a, s in states.items() if s != "ok")
    healthy, serving, redundant, reason, masters, replicas = _topology_verdict(
        node_list, owners, served, uncovered, not_ok, disagreements, disagree_slots, open_slots, epoch_collisions,
        r["without_replica"])
    return dict(
        cluster_enabled=True,
        healthy=healthy,
        serving=serving,
        redundant=redundant,
        reason=reason,
        nodes=node_list,
        cluster_state="ok" if not not_ok else "fail",
        cluster_states=states,
        masters=len(masters),
        replicas=len(replicas),
        slots_served=len(served),
        slots_uncovered=format_ranges(compress_slots(uncovered)),
        slots_uncovered_count=len(uncovered),
        slots_unassigned=format_ranges(compress_slots(unassigned)),
        slot_owners=dict((n["address"], n["slots"]) for n in owners),
        views_agree=not disagreements,
        disagreements=disagreements,
        epoch_disagreements=epoch_disagreements,
        epoch_collisions=epoch_collisions,
        open_slots=open_slots,
        failed_nodes=sorted(n["address"] for n in node_list if n["failed"] or not n["reachable"]),
        pfail_nodes=sorted(n["address"] for n in node_list if n["pfail"]),
        busy_nodes=sorted(n["address"] for n in node_list if n["health"] == "busy"),
        down_nodes=sorted(n["address"] for n in node_list if n["health"] == "down"),
        node_timeout_ms=node_timeout,
        masters_without_replica=r["without_replica"],
        failover_candidates=r["failover"],
        rejoin_candidates=r["rejoin"],
        forget_candidates=r["forget"],
        slots_orphaned=format_ranges(compress_slots(orphaned)),
        next_actions=[a for a, need in (("failover", promotable), ("slots", orphaned or open_slots or disagreements),
                                        ("rejoin", r["rejoin"]), ("forget", r["forget"])) if need],
        _consensus=consensus,
        _maps=maps,
        _claims=dict((me["id"], slots_from_ranges(me["slots"])) for me in own.values() if me["role"] == "master"),
    )


def _usable(n):
    """A node that serves: it answers us and no peer flags it fail or fail?."""
    return n["reachable"] and not n["failed"] and not n["pfail"]


def _merge_views(reachable):
    """(views {viewer: CLUSTER NODES lines}, own {viewer: its myself line}, canonical {node id: the address we
    reached it by}, seen {node id: {viewer: that viewer's line about it}})."""
    views = dict((a, r["cluster_nodes"]) for a, r in reachable.items() if r.get("cluster_nodes"))
    own = dict((a, _myself(r)) for a, r in reachable.items() if _myself(r) is not None)
    canonical = dict((me["id"], a) for a, me in own.items())
    seen = {}   # id -> {viewer: line}
    for viewer, lines in views.items():
        for n in lines:
            seen.setdefault(n["id"], {})[viewer] = n
    return views, own, canonical, seen


def _consensus_line(lines, viewer):
    """The line that describes a node: its own (viewer = the address it answers at), else the most common
    (role, master, slots) among its peers' lines, highest config epoch first."""
    if viewer in lines:
        return lines[viewer]
    counts = Counter((n["role"], n["master_id"], tuple(map(tuple, n["slots"]))) for n in lines.values())
    best = counts.most_common(1)[0][0]
    cands = [n for n in lines.values() if (n["role"], n["master_id"], tuple(map(tuple, n["slots"]))) == best]
    return max(cands, key=lambda n: n["config_epoch"] or 0)


def _node_entries(records, own, canonical, seen, node_timeout, unreachable_since):
    """{node id: the node's entry}: its consensus line, its own record when we reached it, what its peers flag and
    wait for, and its health (judge_node)."""
    nodes = {}
    for node_id in seen:
        line = _consensus_line(seen[node_id], canonical.get(node_id))
        address = canonical.get(node_id) or line["address"]
        rec = records.get(address) or {}
        me = own.get(address)
        reach = bool(rec.get("reachable")) and me is not None and me["id"] == node_id
        peers = dict((v, n) for v, n in seen[node_id].items() if v != address)
        flagged = {}
        disconnected, unanswered = [], []
        clocks = {}
        for v, n in sorted(peers.items()):
            for f in n["flags"]:
                if f in (FAIL, PFAIL):
                    flagged.setdefault(f, []).append(v)
            if n["link_state"] == "disconnected":
                disconnected.append(v)
            now = (records.get(v) or {}).get("time_ms")
            clocks[v] = now
            if n["ping_sent"] and now and now - n["ping_sent"] > node_timeout:
                unanswered.append(v)
        verdict = judge_node(reach, peers, clocks, node_timeout, unreachable_since.get(node_id))
        repl = rec.get("replication") or {} if reach else {}
        mem = rec.get("memory") or {} if reach else {}
        node = dict(
            id=node_id,
            address=address,
            reachable=reach,
            error=None if reach else (rec.get("error") or "not reachable from here (known from peers only)"),
            role=line["role"],
            master_id=line["master_id"],
            master=None,
            flags=list(line["flags"]),
            flagged_by=flagged,
            link_disconnected_from=disconnected,
            unanswered_pings_from=unanswered,
            config_epoch=line["config_epoch"],
            slots=format_ranges(line["slots"]) if line["role"] == "master" else [],
            slot_count=len(slots_from_ranges(line["slots"])) if line["role"] == "master" else 0,
            cluster_state=(rec.get("cluster_info") or {}).get("cluster_state") if reach else None,
            current_epoch=_int((rec.get("cluster_info") or {}).get("cluster_current_epoch")) if reach else None,
            repl_offset=_int(repl.get("master_repl_offset")),
            replica_offset=_int(repl.get("slave_repl_offset")) if line["role"] == "replica" else None,
            master_link_status=repl.get("master_link_status") if line["role"] == "replica" else None,
            lag_bytes=None,
            keys=rec.get("keys") if reach else None,
            **_memory_fields(mem)
        )
        node["health"] = verdict["health"]
        node["health_why"] = verdict["why"]
        node["failed"] = verdict["failed"]
        node["pfail"] = bool(flagged) and not node["failed"]
        node["unanswered_ms"] = verdict["unanswered_ms"]
        node["down_confirmed"] = verdict["health"] == "down"
        nodes[node_id] = node
    return nodes


def _unknown_seeds(records, nodes):
    """Entries ('?<address>') for the unreachable seeds no reachable node knows: busy, never confirmed down."""
    out = {}
    for address, rec in records.items():
        if not rec.get("reachable") and not any(n["address"] == address for n in nodes.values()):
            out["?" + address] = dict(
                id=None, address=address, reachable=False, error=rec.get("error"), role="unknown", master_id=None,
                master=None, flags=[], flagged_by={}, link_disconnected_from=[], unanswered_pings_from=[],
                config_epoch=None, slots=[], slot_count=0, cluster_state=None, current_epoch=None, repl_offset=None,
                replica_offset=None, master_link_status=None, lag_bytes=None, keys=None, used_memory=None,
                maxmemory=None, total_system_memory=None, memory_pct=None, failed=False, pfail=False, down_confirmed=False,
                health="busy", health_why="no reachable node knows it: cannot be confirmed down", unanswered_ms=None)
    return out


def _link_masters(nodes):
    """Each replica's master address and replication lag (when both ends answered)."""
    for n in nodes.values():
        if n["master_id"] and n["master_id"] in nodes:
            m = nodes[n["master_id"]]
            n["master"] = m["address"]
            if m["reachable"] and n["replica_offset"] is not None and m["repl_offset"] is not None:
                n["lag_bytes"] = max(0, m["repl_offset"] - n["replica_offset"])


def _slot_consensus(views, nodes):
    """(maps {viewer: owner id per slot}, consensus owner per slot (majority of views), the slots the views
    disagree on, disagreements: at most 20 ranges with each viewer's owner address)."""
    maps = dict((v, _owner_map(lines)) for v, lines in views.items())
    viewers = sorted(maps)
    first = maps[viewers[0]]
    agree = all(maps[v] == first for v in viewers[1:])
    if agree:
        consensus = list(first)
        disagree_slots = []
    else:
        consensus = []
        disagree_slots = []
        for s in range(CLUSTER_SLOTS):
            votes = Counter(maps[v][s] for v in viewers)
            consensus.append(votes.most_common(1)[0][0])
            if len(votes) > 1:
                disagree_slots.append(s)
    disagreements = []
    if disagree_slots:
        groups = []
        for s in disagree_slots:
            key = tuple((v, maps[v][s]) for v in viewers)
            if groups and groups[-1][0] == key and groups[-1][2] == s - 1:
                groups[-1][2] = s
            else:
                groups.append([key, s, s])
        for key, a, b in groups[:20]:
            disagreements.append(dict(
                slots="%d-%d" % (a, b) if a != b else str(a),
                owners=dict((v, nodes[i]["address"] if i in nodes else i) for v, i in key)))
    return maps, consensus, disagree_slots, disagreements


def _served_slots(nodes, own, consensus):
    """(served: the slots a usable master claims itself and is the consensus owner of, uncovered: the others,
    unassigned: the slots no view gives an owner)."""
    served = set()
    for n in nodes.values():
        me = own.get(n["address"]) if n["reachable"] else None
        if me is not None and me["role"] == "master" and _usable(n):
            mine = slots_from_ranges(me["slots"])
            served.update(s for s in mine if consensus[s] == n["id"])
    uncovered = [s for s in range(CLUSTER_SLOTS) if s not in served]
    unassigned = [s for s in range(CLUSTER_SLOTS) if consensus[s] is None]
    return served, uncovered, unassigned


def _epoch_checks(seen, nodes, owners):
    """(epoch_disagreements: nodes whose config epoch the viewers see differently, epoch_collisions: slot owners
    sharing one config epoch)."""
    epoch_disagreements = []
    for node_id, lines in seen.items():
        epochs = set(n["config_epoch"] for n in lines.values())
        if len(epochs) > 1:
            epoch_disagreements.append(dict(node=nodes[node_id]["address"],
                                            epochs=dict((v, n["config_epoch"]) for v, n in lines.items())))
    epoch_count = Counter(n["config_epoch"] for n in owners)
    epoch_collisions = sorted(n["address"] for n in owners if epoch_count[n["config_epoch"]] > 1)
    return epoch_disagreements, epoch_collisions


def _open_slots(own, nodes):
    """Slots a node itself lists as migrating or importing, with the peer address."""
    open_slots = []
    for address, me in sorted(own.items()):
        for m in me["migrating"]:
            open_slots.append(dict(slot=m["slot"], node=address, state="migrating",
                                   peer=nodes[m["node"]]["address"] if m["node"] in nodes else m["node"]))
        for m in me["importing"]:
            open_slots.append(dict(slot=m["slot"], node=address, state="importing",
                                   peer=nodes[m["node"]]["address"] if m["node"] in nodes else m["node"]))
    return open_slots


def _redundancy(nodes, owners):
    """dict(without_replica: slot owners without a usable replica, failover: one entry per down slot owner with
    its usable replicas ranked, rejoin: empty usable masters when redundancy or a failover needs them, forget:
    failed unreachable nodes without slots or reachable replicas)."""
    replicas_of = {}
    for n in nodes.values():
        if n["role"] == "replica" and n["master_id"]:
            replicas_of.setdefault(n["master_id"], []).append(n)
    without_replica = []
    for m in sorted(owners, key=lambda n: n["address"]):
        healthy_replicas = [r for r in replicas_of.get(m["id"], []) if _usable(r)]
        if not healthy_replicas:
            without_replica.append(m["address"])

    failover = []
    for m in sorted(owners, key=lambda n: n["address"]):
        if m["health"] != "down":
            continue
        cands = [r for r in replicas_of.get(m["id"], []) if _usable(r)]
        failover.append(dict(master=m["address"], master_id=m["id"], slots=m["slots"],
                             replicas=[r["address"] for r in rank_replicas(cands)]))
    empty_masters = sorted(n["address"] for n in nodes.values()
                           if n["role"] == "master" and not n["slot_count"] and _usable(n))
    rejoin = empty_masters if without_replica or any(f["master"] for f in failover) else []
    forget = sorted(n["address"] for n in nodes.values()
                    if n["id"] and not n["reachable"] and n["failed"] and not n["slot_count"]
                    and not any(r["reachable"] for r in replicas_of.get(n["id"], [])))
    return dict(without_replica=without_replica, failover=failover, rejoin=rejoin, forget=forget)


def _topology_verdict(node_list, owners, served, uncovered, not_ok, disagreements, disagree_slots, open_slots,
                      epoch_collisions, without_replica):
    """(healthy, serving, redundant, reason, usable masters, usable replicas): every problem seen, in one line."""
    problems = []
    for n in node_list:
        if not n["reachable"]:
            problems.append("%s %s %s (%s; %s)" % (n["role"], n["address"], n["health"], n["error"], n["health_why"]))
        elif n["failed"] or n["pfail"]:
            problems.append("%s %s flagged %s by peers" % (n["role"], n["address"], "fail" if n["failed"] else "fail?"))
        if n["reachable"] and n["role"] == "replica" and n["master_link_status"] not in (None, "up"):
            problems.append("replica %s link to %s %s" % (n["address"], n["master"], n["master_link_status"]))
        if n["memory_pct"] is not None and n["memory_pct"] >= 90:
            problems.append("%s memory %s%% of maxmemory" % (n["address"], n["memory_pct"]))
    if uncovered:
        problems.append("%d slots not served by a live master: %s" % (len(uncovered), ranges_text(uncovered)))
    if not_ok:
        problems.append("cluster_state not ok on %s" % ", ".join(not_ok))
    if disagreements:
        problems.append("nodes disagree about the owner of %d slots" % len(disagree_slots))
    if open_slots:
        problems.append("%d open slots (migrating/importing)" % len(open_slots))
    if epoch_collisions:
        problems.append("config epoch collision between %s" % ", ".join(epoch_collisions))
    if without_replica:
        problems.append("masters without a healthy replica: %s" % ", ".join(without_replica))
    serving = not uncovered and not not_ok and not disagreements
    redundant = not without_replica
    healthy = serving and redundant and not problems
    masters = [n for n in owners if _usable(n)]
    replicas = [n for n in node_list if n["role"] == "replica" and _usable(n)]
    if healthy:
        reason = "%d nodes (%d masters, %d replicas) reachable; cluster_state=ok everywhere; %d/%d slots served" % (
            len(node_list), len(masters), len(replicas), len(served), CLUSTER_SLOTS)
    else:
        reason = "; ".join(problems)
    return healthy, serving, redundant, reason, masters, replicas


def _empty_topology(records):
    nodes = [dict(address=a, reachable=False, error=r.get("error"), role="unknown") for a, r in sorted(records.items())]
    reason = "no Redis node reachable: " + "; ".join("%s %s" % (n["address"], n["error"]) for n in nodes)
    return dict(cluster_enabled=None, healthy=False, serving=False, redundant=False, reason=reason, nodes=nodes,
                failover_candidates=[], rejoin_candidates=[], forget_candidates=[], open_slots=[],
                slots_uncovered=[], slots_uncovered_count=None, failed_nodes=[n["address"] for n in nodes],
                masters_without_replica=[], slots_orphaned=[], next_actions=[])


def rank_replicas(replicas):
    """Best first: link up, highest replication offset, then address (stable)."""
    return sorted(replicas, key=lambda r: (0 if r.get("master_link_status") == "up" else 1,
                                           -(r.get("replica_offset") or r.get("repl_offset") or 0),
                                           r.get("address") or ""))


# ---------------------------------------------------------------------------------------------------------------
# Standalone (replication without cluster)
# ---------------------------------------------------------------------------------------------------------------

def _memory_fields(mem):
    """A node's memory as every topology node reports it (cluster and standalone alike)."""
    used, limit = mem.get("used_memory"), mem.get("maxmemory")
    return dict(used_memory=used, maxmemory=limit, total_system_memory=mem.get("total_system_memory"),
                memory_pct=round(100.0 * used / limit, 1) if limit and used is not None else None)


def build_standalone(records):
    nodes = []
    for address, rec in sorted(records.items()):
        repl = rec.get("replication") or {}
        role = rec.get("role") or "unknown"
        master = None
        if role == "replica" and repl.get("master_host"):
            master = hostport(repl.get("master_host"), repl.get("master_port"))
        nodes.append(dict(
            address=address, reachable=bool(rec.get("reachable")), error=rec.get("error"), role=role,
            master=master, master_link_status=repl.get("master_link_status") if role == "replica" else None,
            repl_offset=_int(repl.get("master_repl_offset")),
            replica_offset=_int(repl.get("slave_repl_offset")) if role == "replica" else None,
            connected_replicas=_int(repl.get("connected_slaves")) if role == "master" else None,
            replid=repl.get("master_replid"), replid2=repl.get("master_replid2"),
            keys=rec.get("keys"), **_memory_fields(rec.get("memory") or {})))
    by_addr = dict((n["address"], n) for n in nodes)
    masters = [n for n in nodes if n["reachable"] and n["role"] == "master"]
    replicas = [n for n in nodes if n["reachable"] and n["role"] == "replica"]
    problems = []
    for n in nodes:
        if not n["reachable"]:
            problems.append("%s unreachable (%s)" % (n["address"], n["error"]))
        elif n["role"] == "replica" and n["master_link_status"] != "up":
            problems.append("replica %s link to %s %s" % (n["address"], n["master"], n["master_link_status"]))
    # failover: reachable replicas whose master is unreachable (or not a master any more) and no live master
    orphans = [r for r in replicas if r["master"] and not (by_addr.get(r["master"]) or {}).get("reachable", False)
               and r["master_link_status"] != "up"]
    failover = []
    if orphans and not masters:
        failover.append(dict(master=orphans[0]["master"], master_id=None, slots=[],
                             replicas=[r["address"] for r in rank_replicas(orphans)]))
    # rejoin: masters without replicas while another master has them (an old master back after a promotion)
    rejoin = []
    current = masters[0] if masters else None
    if len(masters) > 1:
        # the current master: the one with replicas, else the promoted one (it keeps its old replication id as
        # replid2), else the one furthest ahead; another master rejoins (REPLICAOF discards its data) only when it
        # is empty - as in a cluster: a former master may hold writes taken after the failover
        current = sorted(masters, key=lambda m: (-(m["connected_replicas"] or 0),
                                                 0 if m["replid2"] and m["replid2"] != "0" * 40 else 1,
                                                 -(m["repl_offset"] or 0), m["address"]))[0]
        rejoin = sorted(m["address"] for m in masters if m is not current and not m["keys"])
        for m in masters:
            if m is not current and m["keys"]:
                problems.append("%s holds %d keys: not made a replica of %s (REPLICAOF would discard them; dump or "
                                "flush it after checking its data is stale)" % (m["address"], m["keys"],
                                                                                current["address"]))
        problems.append("%d masters (split brain): %s" % (len(masters), ", ".join(m["address"] for m in masters)))
    if not masters:
        problems.append("no reachable master")
    serving = len(masters) == 1
    healthy = serving and not problems
    reason = ("standalone: master %s, %d replicas linked" % (masters[0]["address"], len(replicas))
              if healthy else "standalone: " + "; ".join(problems))
    return dict(cluster_enabled=False, healthy=healthy, serving=serving, redundant=bool(replicas) or len(nodes) == 1,
                reason=reason, nodes=nodes, masters=len(masters), replicas=len(replicas), cluster_state=None,
                failover_candidates=failover, rejoin_candidates=rejoin, forget_candidates=[], open_slots=[],
                slots_uncovered=[], slots_uncovered_count=None,
                failed_nodes=[n["address"] for n in nodes if not n["reachable"]],
                masters_without_replica=[], disagreements=[], views_agree=None, slots_orphaned=[],
                _current_master=current,
                next_actions=[a for a, need in (("failover", failover), ("rejoin", rejoin)) if need])


def public(topology):
    """The topology without internal fields (for module results)."""
    return dict((k, v) for k, v in topology.items() if not k.startswith("_"))


def find_node(topology, ref):
    """A node of the topology by address or id (a unique id prefix of 8+ characters works too)."""
    ref = (ref or "").strip()
    for n in topology["nodes"]:
        if n.get("address") == ref or (n.get("id") and n["id"] == ref):
            return n
    try:
        host, port = parse_address(ref)
        addr = hostport(host, port)
        for n in topology["nodes"]:
            if n.get("address") == addr:
                return n
    except ValueError:
        pass
    if len(ref) >= 8:
        hits = [n for n in topology["nodes"] if n.get("id") and n["id"].startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    return None


# ---------------------------------------------------------------------------------------------------------------
# Failover
# ---------------------------------------------------------------------------------------------------------------

def plan_failover(topology, master=None, replica=None, allow_takeover=False):
    """Which replica to promote for which master, and how. Pure; raises P3Error when it cannot be done safely.

    Returns a list of steps: dict(master, master_id, replica, replica_id, mode (default|force|takeover|replicaof),
    slots, offset, why). Empty when there is nothing to do.
    """
    if topology.get("cluster_enabled") is None:
        raise P3Error(topology["reason"])
    nodes = topology["nodes"]
    if not topology["cluster_enabled"]:
        return _plan_standalone_failover(topology, master, replica)
    by_id = dict((n["id"], n) for n in nodes if n.get("id"))
    targets = []
    if master:
        m = find_node(topology, master)
        if m is None:
            raise P3Error("master %s is not a node of this cluster" % master)
        if m["role"] != "master" or not m["slot_count"]:
            return []  # already failed over (or never served slots): nothing to do
        if m.get("health") == "busy":
            raise P3Error("master %s does not answer but is not down (%s): refusing to fail it over - a forced "
                          "promotion of a busy master loses the writes its replica has not received; retry when it "
                          "answers (coordinated failover) or once the cluster flags it fail" % (
                              m["address"], m.get("health_why")))
        targets.append(m)
    else:
        # masters without a live replica are left to the slot repair (lossy, gated there)
        targets = [by_id[c["master_id"]] for c in topology["failover_candidates"] if c["replicas"]]
    if not targets:
        return []
    voters = [n for n in nodes if n["role"] == "master" and n["slot_count"]]
    needed = len(voters) // 2 + 1
    steps = []
    failing = set(t["id"] for t in targets)
    for m in targets:
        reps = [n for n in nodes if n["role"] == "replica" and n["master_id"] == m["id"]]
        live = [r for r in reps if r["reachable"] and not r.get("failed") and not r.get("pfail")]
        if replica:
            r = find_node(topology, replica)
            if r is None or r not in reps:
                raise P3Error("%s is not a replica of master %s" % (replica, m["address"]))
            if r not in live:
                raise P3Error("replica %s of master %s is not reachable (%s)" % (r["address"], m["address"], r["error"]))
            chosen = r
        else:
            if not live:
                if reps:
                    raise P3Error("master %s (slots %s): none of its replicas can be promoted now (%s); retry when "
                                  "one answers" % (m["address"], ",".join(m["slots"]), "; ".join(
                                      "%s %s" % (r["address"], r.get("error") or "flagged by its peers")
                                      for r in reps)))
                raise P3Error("master %s (slots %s) has no replica to promote; its slots stay uncovered until it "
                              "returns (or repair them with redis_cluster_slots allow_data_loss=true)"
                              % (m["address"], ",".join(m["slots"])))
            chosen = rank_replicas(live)[0]
        alive_voters = [v for v in voters if v["reachable"] and not v.get("failed") and not v.get("pfail")
                        and v["id"] not in failing]
        if m["reachable"] and not m.get("failed"):
            mode = "default"
            why = "master %s is reachable: coordinated failover (no write lost)" % m["address"]
            alive_voters.append(m)
        elif len(alive_voters) >= needed:
            mode = "force"
            why = "master %s is down (%s); %d of %d masters can vote" % (
                m["address"], m.get("health_why") or m.get("error") or "flagged fail", len(alive_voters), len(voters))
        elif allow_takeover:
            mode = "takeover"
            why = ("master %s is down and only %d of %d masters can vote (majority %d): takeover without election"
                   % (m["address"], len(alive_voters), len(voters), needed))
        else:
            silent = [v["address"] for v in voters if v not in alive_voters]
            raise P3Error("master %s is down and only %d of %d masters are reachable (a failover election needs %d; "
                          "not voting: %s): set allow_takeover to promote %s without a majority" % (
                              m["address"], len(alive_voters), len(voters), needed, ", ".join(silent),
                              chosen["address"]))
        steps.append(dict(master=m["address"], master_id=m["id"], replica=chosen["address"], replica_id=chosen["id"],
                          mode=mode, slots=list(m["slots"]), offset=chosen.get("replica_offset"),
                          link=chosen.get("master_link_status"),
                          alternatives=[r["address"] for r in rank_replicas(live) if r is not chosen], why=why))
    return steps


def _plan_standalone_failover(topology, master, replica):
    cands = topology["failover_candidates"]
    if master:
        m = find_node(topology, master)
        if m is None:
            raise P3Error("master %s is not one of the given nodes" % master)
        if m["reachable"] and m["role"] == "master":
            raise P3Error("master %s is reachable: a standalone switchover would lose writes; stop it first" % master)
        if m["role"] != "master" and m["reachable"]:
            return []
        cands = [c for c in cands if c["master"] == m["address"]] or cands
    if not cands:
        return []
    c = cands[0]
    chosen = c["replicas"][0]
    if replica:
        r = find_node(topology, replica)
        if r is None or r["address"] not in c["replicas"]:
            raise P3Error("%s is not a reachable replica of %s" % (replica, c["master"]))
        chosen = r["address"]
    node = find_node(topology, chosen)
    return [dict(master=c["master"], master_id=None, replica=chosen, replica_id=None, mode="replicaof",
                 slots=[], offset=node.get("replica_offset"), link=node.get("master_link_status"),
                 alternatives=[a for a in c["replicas"] if a != chosen],
                 why="standalone master %s is down: REPLICAOF NO ONE on the replica with the highest offset"
                 % c["master"])]


FAILOVER_ARGS = {"default": (), "force": ("FORCE",), "takeover": ("TAKEOVER",)}


class Nodes(object):
    """Short-lived per-node connections (one per address, reused while an action runs)."""

    def __init__(self, settings):
        self.settings = settings
        self.clients = {}

    def __call__(self, address):
        c = self.clients.get(address)
        if c is None:
            host, port = parse_address(address)
            c = node_client(self.settings, host, port)
            self.clients[address] = c
        return c

    def run(self, address, *args):
        try:
            return self(address).execute_command(*args)
        except DeadlineExceeded:
            self.drop(address)
            raise  # the call's total deadline ends the action, it is not one node's error
        except Exception as e:
            self.drop(address)
            raise P3Error("%s: %s failed: %s" % (address, " ".join(str(a) for a in args[:2]),
                                                 describe_redis_error(e, self.settings)))

    def try_run(self, address, *args):
        try:
            return self(address).execute_command(*args), None
        except DeadlineExceeded:
            self.drop(address)
            raise
        except Exception as e:
            self.drop(address)
            return None, describe_redis_error(e, self.settings)

    def drop(self, address):
        c = self.clients.pop(address, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def close(self):
        for a in list(self.clients):
            self.drop(a)


def views_of(nodes, addresses):
    """{address: parsed CLUSTER NODES} of the addresses that answer (quietly skips the others)."""
    out = {}
    for a in addresses:
        text, err = nodes.try_run(a, "CLUSTER", "NODES")
        if err is None:
            out[a] = parse_cluster_nodes(text)
    return out


def _sees(lines, node_id, role, slots=None):
    for n in lines:
        if n["id"] == node_id:
            if n["role"] != role:
                return False
            if slots is not None and not slots <= slots_from_ranges(n["slots"]):
                return False
            return True
    return False


# Redis ends a manual failover that did not win its election after 5 s (CLUSTER_MF_TIMEOUT).
MANUAL_FAILOVER_TIMEOUT = 5.5


def recheck_down(nodes, topology, node_id, address):
    """Right before a destructive step: is the node still down by the cluster's own definition (judge_node on fresh
    CLUSTER NODES of every other reachable node, after a PING of the node itself)? Returns (down, why, views)."""
    pong, err = nodes.try_run(address, "PING") if address else (None, "no address")
    if err is None:
        return False, "%s answers PING again" % address, {}
    watch = [n["address"] for n in topology["nodes"] if n.get("reachable") and n["address"] != address]
    views = views_of(nodes, watch)
    clocks, lines = {}, {}
    for v, view in views.items():
        line = next((x for x in view if x["id"] == node_id), None)
        if line is None or line["myself"]:
            continue
        t = nodes.try_run(v, "TIME")[0]
        clocks[v] = int(t[0]) * 1000 + int(t[1]) // 1000 if t else None
        lines[v] = line
    verdict = judge_node(False, lines, clocks, topology.get("node_timeout_ms") or DEFAULT_NODE_TIMEOUT_MS)
    return verdict["health"] == "down", verdict["why"], views


def _promoted_already(views, replica_id, slots):
    """The replica serves the slots as a master in its own view or in most views."""
    agree = [a for a, lines in views.items() if _sees(lines, replica_id, "master", slots)]
    return bool(views) and len(agree) * 2 > len(views)


def election_lost(topology, step, views):
    """Pure. One line when the failover's election cannot win because masters that could vote when it was planned
    stopped answering (a master that dies during the election): names them, the votes left against the majority,
    and what is still broken (the slots no live master serves). None while a majority can still vote, or for a
    TAKEOVER (no election)."""
    if step.get("mode") == "takeover":
        return None
    voters = [n for n in topology["nodes"] if n["role"] == "master" and n["slot_count"]]
    needed = len(voters) // 2 + 1
    gone = [v for v in voters if v["id"] != step["master_id"] and v.get("reachable") and v["address"] not in views]
    if not gone:
        return None
    voting = [v for v in voters if v["address"] in views and (v["id"] != step["master_id"] or step["mode"] == "default")]
    if len(voting) >= needed:
        return None
    broken = ["slots %s of %s are not served" % (",".join(step["slots"]), step["master"])] + [
        "slots %s of %s are not served (it stopped answering)" % (",".join(v["slots"]), v["address"]) for v in gone]
    return ("failover of %s to %s cannot win its election: master %s stopped answering during the election (%d of %d "
            "masters can vote, majority %d); still broken: %s; retry when %s answers again, or set allow_takeover to "
            "promote without a majority" % (
                step["master"], step["replica"], ", ".join(v["address"] for v in gone), len(voting), len(voters),
                needed, "; ".join(broken), ", ".join(v["address"] for v in gone)))


def run_failover(settings, topology, steps, wait_timeout=30.0, allow_takeover=False):
    """Execute the planned steps one after the other, each polled until every reachable node agrees.

    Right before a FORCE or TAKEOVER the master is checked again (PING, fresh views of every peer, judge_node): a
    master that answers or is no longer down is left alone, and a replica that is already the master of the slots
    (Redis failed over by itself, or another run did) is reported as promoted by Redis (by=redis), not by us. A run
    claims only what it did: each returned step says by=p3.recovery (our command was accepted) or by=redis.
    A FORCE failover whose election fails (masters refuse to vote for one master's replicas twice within
    2 x cluster-node-timeout) is retried as TAKEOVER when allow_takeover, else reported as not converged.
    Returns (done, timeline, skipped).
    """
    timeline, done, skipped = [], [], []
    nodes = Nodes(settings)
    try:
        for step in steps:
            if step["mode"] == "replicaof":
                done.append(dict(_standalone_failover(nodes, topology, step, wait_timeout, timeline), by="p3.recovery"))
                continue
            slots = range_slots(step["slots"])
            args = ("CLUSTER", "FAILOVER") + FAILOVER_ARGS[step["mode"]]
            t0 = time.monotonic()
            by = "p3.recovery"
            if step["mode"] in ("force", "takeover"):
                down, why, fresh = recheck_down(nodes, topology, step["master_id"], step["master"])
                if _promoted_already(fresh, step["replica_id"], slots):
                    by = "redis"
                elif not down:
                    skipped.append(dict(step, why=why))
                    timeline.append(timeline_entry("skipped failover", step["master"], "not failed over: %s" % why))
                    continue
            reply = None
            if by != "redis":
                reply, err = nodes.try_run(step["replica"], *args)
                if err is not None:
                    fresh = views_of(nodes, [step["replica"]])
                    if _promoted_already(fresh, step["replica_id"], slots):
                        by = "redis"
                    else:
                        raise P3Error("%s: %s failed: %s" % (step["replica"], " ".join(args), err),
                                      timeline=timeline, failovers=done)
            if by == "redis":
                timeline.append(timeline_entry("observed failover", step["replica"], "%s is already the master of %s: "
                                               "Redis promoted it over %s by itself; nothing sent" % (
                                                   step["replica"], ",".join(step["slots"]), step["master"])))
            else:
                timeline.append(timeline_entry(" ".join(args).lower(), step["replica"], "%s -> %s; promote over %s: %s"
                                               % (" ".join(args), reply, step["master"], step["why"])))
            watch = [n["address"] for n in topology["nodes"] if n["reachable"] and n["address"] != step["master"]]
            if step["mode"] == "default":
                watch.append(step["master"])
            deadline = t0 + wait_timeout
            fallback_at = (t0 + MANUAL_FAILOVER_TIMEOUT if step["mode"] == "force" and allow_takeover
                           and by != "redis" else None)
            last = {}
            while True:
                last = views_of(nodes, watch)
                agreed = [a for a, lines in last.items() if _sees(lines, step["replica_id"], "master", slots)]
                if step["replica"] in agreed and len(agreed) == len(last):
                    break
                now = time.monotonic()
                if fallback_at is not None and now >= fallback_at and step["replica"] not in agreed:
                    fallback_at = None
                    down, why, fresh = recheck_down(nodes, topology, step["master_id"], step["master"])
                    if not down and not _promoted_already(fresh, step["replica_id"], slots):
                        raise P3Error("the FORCE failover of %s to %s did not win its election, and TAKEOVER is not "
                                      "sent: %s" % (step["master"], step["replica"], why),
                                      timeline=timeline, failovers=done)
                    reply, err = nodes.try_run(step["replica"], "CLUSTER", "FAILOVER", "TAKEOVER")
                    if err is None:
                        step = dict(step, mode="takeover")
                        timeline.append(timeline_entry("cluster failover takeover", step["replica"], (
                            "the FORCE election did not win within %ss (votes refused?): CLUSTER FAILOVER TAKEOVER -> "
                            "%s (allow_takeover)") % (num_text(MANUAL_FAILOVER_TIMEOUT), reply)))
                    deadline = max(deadline, now + 3.0)
                lost = election_lost(topology, step, last)
                if step["replica"] not in agreed and lost and fallback_at is None and (
                        now >= deadline or now >= t0 + MANUAL_FAILOVER_TIMEOUT):
                    raise P3Error(lost, timeline=timeline, failovers=done)
                if now >= deadline:
                    behind = sorted(a for a in watch if a not in agreed)
                    raise P3Error("failover of %s to %s did not converge within %ss: %s still disagree (the election "
                                  "failed? masters refuse to vote twice for one master's replicas within "
                                  "2 x cluster-node-timeout; see the replica's log, retry later or allow_takeover)" % (
                                      step["master"], step["replica"], num_text(wait_timeout),
                                      ", ".join(behind) or "no node answers"),
                                  timeline=timeline, failovers=done)
                time.sleep(POLL)
            took = round(time.monotonic() - t0, 3)
            timeline.append(timeline_entry("converged", step["replica"], "%d reachable nodes see %s as the master of "
                                           "%s after %ss" % (len(last), step["replica"], ",".join(step["slots"]), took)))
            done.append(dict(step, seconds=took, by=by))
    except DeadlineExceeded as e:
        raise _progress(e, timeline=timeline, failovers=done)
    finally:
        nodes.close()
    return done, timeline, skipped


def _progress(exc, **details):
    """exc with what the action did so far (its timeline...), so a cut by the total deadline reports it."""
    for key, value in details.items():
        exc.details.setdefault(key, value)
    return exc


def _standalone_failover(nodes, topology, step, wait_timeout, timeline):
    t0 = time.monotonic()
    nodes.run(step["replica"], "REPLICAOF", "NO", "ONE")
    timeline.append(timeline_entry("replicaof no one", step["replica"], step["why"]))
    host, port = parse_address(step["replica"])
    others = [n["address"] for n in topology["nodes"] if n["reachable"] and n["role"] == "replica"
              and n["address"] != step["replica"] and n.get("master") == step["master"]]
    for a in others:
        nodes.run(a, "REPLICAOF", host, str(port))
        timeline.append(timeline_entry("replicaof", a, "follow the new master %s" % step["replica"]))
    deadline = t0 + wait_timeout
    while True:
        role = nodes.try_run(step["replica"], "ROLE")[0]
        if role and role[0] == "master":
            break
        if time.monotonic() >= deadline:
            raise P3Error("%s did not become master within %ss" % (step["replica"], num_text(wait_timeout)))
        time.sleep(POLL)
    return dict(step, repointed=others, seconds=round(time.monotonic() - t0, 3))


# ---------------------------------------------------------------------------------------------------------------
# Slot repair
# ---------------------------------------------------------------------------------------------------------------

def count_keys(settings, masters, slots):
    """{address: {slot: keys}} for the given reachable masters (pipelined CLUSTER COUNTKEYSINSLOT)."""
    out = {}
    slots = sorted(slots)
    for address in masters:
        host, port = parse_address(address)
        c = node_client(settings, host, port)
        try:
            counts = {}
            for i in range(0, len(slots), 1000):
                chunk = slots[i:i + 1000]
                pipe = c.pipeline(transaction=False)
                for s in chunk:
                    pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
                for s, n in zip(chunk, pipe.execute()):
                    if int(n):
                        counts[s] = int(n)
            out[address] = counts
        except Exception as e:
            raise P3Error("%s: CLUSTER COUNTKEYSINSLOT failed: %s" % (address, describe_redis_error(e, settings)))
        finally:
            c.close()
    return out


def plan_slot_repair(topology, key_counts, allow_data_loss=False, promote_replicas=True):
    """Decide what to do with every slot that no live master serves. Pure.

    key_counts: {master address: {slot: keys}} over the uncovered slots. Returns dict(failover (owners to fail
    over first), assign ([{node, node_id, slots (set), why, lossy, keys}]), refused ([...]), lossy_slots,
    keys_at_risk).
    """
    consensus = topology["_consensus"]
    nodes = topology["nodes"]
    by_id = dict((n["id"], n) for n in nodes if n.get("id"))
    live_masters = [n for n in nodes if n["role"] == "master" and n["reachable"] and not n.get("failed")
                    and not n.get("pfail")]
    live_ids = set(n["id"] for n in live_masters)
    uncovered = range_slots(topology["slots_uncovered"])
    failover_ids = set()
    if promote_replicas:
        failover_ids = set(c["master_id"] for c in topology["failover_candidates"] if c["replicas"])
    busy_ids = set(n["id"] for n in nodes if n.get("id") and n.get("health") == "busy")
    # a busy master (not answering us, not down by the cluster's definition) keeps its slots: never repaired around
    todo = set(s for s in uncovered if consensus[s] not in failover_ids and consensus[s] not in busy_ids)
    replicas_of = {}
    for n in nodes:
        if n["role"] == "replica" and n.get("master_id"):
            replicas_of.setdefault(n["master_id"], []).append(n)
    owner_of = {}      # slot -> node id
    why = {}
    lossy = {}         # slot -> reason
    refused = []
    holders = {}
    for address, counts in key_counts.items():
        for s, k in counts.items():
            holders.setdefault(s, []).append((k, address))
    unreachable_masters = [n for n in nodes if n["role"] in ("master", "unknown") and not n["reachable"]]
    addr_id = dict((n["address"], n["id"]) for n in nodes)
    for s in sorted(todo):
        h = sorted(holders.get(s, []), reverse=True)
        known = consensus[s]
        if len(h) == 1:
            owner_of[s] = addr_id[h[0][1]]
            why[s] = "keys"
            if known and known != owner_of[s] and known not in live_ids:
                lossy[s] = "owner %s is down" % by_id[known]["address"]
        elif len(h) > 1:
            owner_of[s] = addr_id[h[0][1]]
            why[s] = "keys"
            lossy[s] = "keys on %d masters (%s); the others' keys in this slot are not moved" % (
                len(h), ", ".join(holder[1] for holder in h))
        elif known and known in live_ids:
            owner_of[s] = known  # the owner lost its own mapping; everyone else still points at it
            why[s] = "owner"
        else:
            owner_of[s] = None  # decided by neighbourhood below
            if known:
                reps = replicas_of.get(known, [])
                if not reps:
                    lossy[s] = "owner %s is down with no replica to promote" % by_id[known]["address"]
                else:
                    lossy[s] = "owner %s is down and none of its replicas (%s) can be promoted now" % (
                        by_id[known]["address"], ", ".join("%s %s" % (r["address"], r.get("health") or (
                            "up" if r["reachable"] else "unreachable")) for r in reps))
            elif unreachable_masters:
                lossy[s] = "unassigned and %s unreachable (may hold its keys)" % ", ".join(
                    n["address"] for n in unreachable_masters)
    # empty slots of a run whose keys all sit on one master go to that master; other empty slots go to the
    # master of the nearest slot (keeps ranges contiguous)
    final = list(consensus)
    for s, i in owner_of.items():
        final[s] = i
    for a, b in compress_slots(todo):
        run_holders = set(owner_of[s] for s in range(a, b + 1) if owner_of.get(s))
        if len(run_holders) == 1:
            pick = run_holders.pop()
            for s in range(a, b + 1):
                if owner_of.get(s, 0) is None:
                    owner_of[s] = final[s] = pick
                    why[s] = "run"
    for s in sorted(s for s, i in owner_of.items() if i is None):
        left = next((final[j] for j in range(s - 1, -1, -1) if final[j] in live_ids), None)
        right = next((final[j] for j in range(s + 1, CLUSTER_SLOTS) if final[j] in live_ids), None)
        pick = left or right
        if pick is None and live_masters:
            pick = sorted(live_masters, key=lambda n: n["address"])[0]["id"]
        if pick is None:
            refused.append(dict(slots=str(s), why="no live master to take it"))
            continue
        owner_of[s] = pick
        final[s] = pick
        why[s] = "neighbour"
    assign = {}
    for s, i in owner_of.items():
        if i is None:
            continue
        assign.setdefault(i, set()).add(s)
    out = []
    lossy_slots = set(lossy)
    for i, slots in sorted(assign.items(), key=lambda kv: by_id[kv[0]]["address"]):
        n = by_id[i]
        keys = sum(key_counts.get(n["address"], {}).get(s, 0) for s in slots)
        out.append(dict(node=n["address"], node_id=i, slots=slots, keys=keys,
                        lossy=sorted(slots & lossy_slots),
                        taken_from=sorted(set(by_id[consensus[s]]["address"] for s in slots
                                              if consensus[s] and consensus[s] != i))))
    keys_at_risk = 0
    for s in lossy_slots:
        h = sorted(holders.get(s, []), reverse=True)
        keys_at_risk += sum(holder[0] for holder in h[1:])
    unknown_risk = sorted(set(by_id[consensus[s]]["address"] for s in lossy_slots if consensus[s]
                              and consensus[s] not in live_ids))
    return dict(failover=sorted(failover_ids), assign=out, refused=refused, lossy=lossy,
                lossy_slots=sorted(lossy_slots), keys_at_risk=keys_at_risk, keys_unknown_on=unknown_risk,
                allowed=allow_data_loss or not lossy_slots)


def plan_view_fixes(topology):
    """Live masters whose own view maps a slot to someone else than the consensus owner, while that owner claims
    the slot itself: [{node, owner, owner_id, slots}] to fix with CLUSTER SETSLOT <slot> NODE <owner>.
    (Replicas follow their master; unassigned slots are learnt from the owner's heartbeats.)"""
    consensus = topology["_consensus"]
    maps = topology.get("_maps") or {}
    by_id = dict((n["id"], n) for n in topology["nodes"] if n.get("id"))
    claims = topology.get("_claims") or {}
    fixes = []
    for viewer, owners in sorted(maps.items()):
        v = next((n for n in topology["nodes"] if n["address"] == viewer), None)
        if v is None or v["role"] != "master" or not v["reachable"]:
            continue
        wrong = {}
        for s in range(CLUSTER_SLOTS):
            o = consensus[s]
            if o is not None and owners[s] is not None and owners[s] != o and o != v["id"] and s in claims.get(o, ()):
                wrong.setdefault(o, set()).add(s)
        for o, slots in sorted(wrong.items()):
            fixes.append(dict(node=viewer, owner=by_id[o]["address"], owner_id=o, slots=slots))
    return fixes


def open_slot_plan(topology):
    """Group the open slots: {slot: {'migrating': [(node, peer)], 'importing': [(node, peer)], 'owner': addr}}."""
    consensus = topology["_consensus"]
    by_id = dict((n["id"], n) for n in topology["nodes"] if n.get("id"))
    out = {}
    for o in topology["open_slots"]:
        e = out.setdefault(o["slot"], dict(migrating=[], importing=[], owner=None))
        e[o["state"]].append((o["node"], o["peer"]))
        owner = consensus[o["slot"]]
        e["owner"] = by_id[owner]["address"] if owner in by_id else None
    return out


def run_slot_repair(settings, topology, plan, wait_timeout=30.0, migrate_timeout_ms=5000):
    """Close open slots, assign the planned slots (DELSLOTS/ADDSLOTS/BUMPEPOCH on the new owner), poll until every
    reachable node maps them to it and says cluster_state:ok."""
    timeline = []
    nodes = Nodes(settings)
    by_addr = dict((n["address"], n) for n in topology["nodes"])
    try:
        for slot, e in sorted(open_slot_plan(topology).items()):
            _close_open_slot(settings, nodes, by_addr, slot, e, timeline, migrate_timeout_ms)
        for a in plan["assign"]:
            for gone in a.get("taken_from") or ():
                # the slots of an owner that is not serving them: re-check, right before the ADDSLOTS, that it is
                # still down by the cluster's definition (a busy master keeps its slots)
                owner = by_addr.get(gone) or {}
                if owner.get("reachable") and not owner.get("failed"):
                    continue
                down, why, dummy = recheck_down(nodes, topology, owner.get("id"), gone)
                if not down:
                    raise P3Error("not reassigning slots of %s: %s" % (gone, why), timeline=timeline)
            _assign(nodes, by_addr, a, timeline)
        for f in plan.get("view_fixes") or ():
            pipe = nodes(f["node"]).pipeline(transaction=False)
            for s in sorted(f["slots"]):
                pipe.execute_command("CLUSTER", "SETSLOT", s, "NODE", f["owner_id"])
            errors = [str(r) for r in pipe.execute(raise_on_error=False) if isinstance(r, Exception)]
            if errors:
                raise P3Error("%s: CLUSTER SETSLOT NODE failed: %s" % (f["node"], one_line(errors[0], 200)),
                              timeline=timeline)
            timeline.append(timeline_entry("setslot node", f["node"], "slots %s -> %s (the owner claims them)" % (
                ranges_text(f["slots"]), f["owner"])))
        watch = [n["address"] for n in topology["nodes"] if n["reachable"]]
        expected = []
        for a in plan["assign"]:
            expected.append((a["node_id"], set(a["slots"])))
        for f in plan.get("view_fixes") or ():
            expected.append((f["owner_id"], set(f["slots"])))
        _push_owners(nodes, topology, expected, timeline)
        took = _wait_until_agreed(nodes, watch, expected, wait_timeout, timeline, "slot repair",
                                  " (slot ownership reaches the other nodes by heartbeat, at least every "
                                  "cluster-node-timeout/2; raise wait_timeout if that is longer)")
        if plan["assign"] or topology["open_slots"]:
            timeline.append(timeline_entry("converged", "cluster", "every reachable node agrees and says "
                                           "cluster_state:ok after %ss" % took))
    except DeadlineExceeded as e:
        raise _progress(e, timeline=timeline)
    finally:
        nodes.close()
    return timeline


def _wait_until_agreed(nodes, watch, expected, wait_timeout, timeline, what, hint=""):
    """Poll every watched node until each says cluster_state:ok and sees the expected owner of every slot of
    expected ([(owner id, slots)]); returns the seconds it took. P3Error (with the timeline) naming the nodes still
    behind once wait_timeout has passed."""
    t0 = time.monotonic()
    deadline = t0 + wait_timeout
    while True:
        behind = _behind(nodes, views_of(nodes, watch), expected)
        if not behind:
            return round(time.monotonic() - t0, 3)
        if time.monotonic() >= deadline:
            lagging = "; ".join("%s %s" % item for item in sorted(behind.items()))
            raise P3Error("%s did not converge within %ss: %s%s" % (what, num_text(wait_timeout), lagging, hint),
                          timeline=timeline)
        time.sleep(POLL)


def _behind(nodes, views, expected):
    """{address: why} of the nodes that answer but do not yet map every expected slot to its owner, still have an
    open slot, or do not say cluster_state:ok."""
    behind = {}
    for addr, lines in views.items():
        owners = _owner_map(lines)
        wrong = sorted(s for i, slots in expected for s in slots if owners[s] != i)
        if wrong:
            behind[addr] = "maps slots %s to another node or to none" % ranges_text(wrong)
            continue
        if any(n["migrating"] or n["importing"] for n in lines if n["myself"]):
            behind[addr] = "still has an open slot"
            continue
        info, err = nodes.try_run(addr, "CLUSTER", "INFO")
        state = parse_info(info).get("cluster_state") if err is None else None
        if state != "ok":
            behind[addr] = "says cluster_state:%s" % state if err is None else "does not answer CLUSTER INFO: %s" % err
    return behind


def _push_owners(nodes, topology, expected, timeline):
    """Tell every other reachable master the new owners at once (CLUSTER SETSLOT <slot> NODE <owner>), as
    redis-cli does after moving a slot, instead of waiting for the owner's heartbeats (which reach each node only
    every few seconds, up to cluster-node-timeout/2). A master that claims a slot itself is left alone; replicas
    cannot take SETSLOT and still learn by heartbeat. Best effort: a refusal is logged and gossip does the rest."""
    owner_ids = set(i for i, dummy in expected)
    for n in topology["nodes"] if expected else ():
        if not (n["reachable"] and n["role"] == "master" and n.get("id")):
            continue
        text, err = nodes.try_run(n["address"], "CLUSTER", "NODES")
        if err is not None:
            continue
        lines = parse_cluster_nodes(text)
        owners = _owner_map(lines)
        todo = [(s, i) for i, slots in expected for s in sorted(slots) if owners[s] not in (i, n["id"])]
        if not todo:
            if n["id"] not in owner_ids:  # it learned the new owners by heartbeat before we could tell it
                known = ranges_text(s for dummy, slots in expected for s in slots)
                timeline.append(timeline_entry("owner known", n["address"],
                                               "already maps slots %s to their new owner" % known))
            continue
        pipe = nodes(n["address"]).pipeline(transaction=False)
        for s, i in todo:
            pipe.execute_command("CLUSTER", "SETSLOT", s, "NODE", i)
        try:
            errors = [str(r) for r in pipe.execute(raise_on_error=False) if isinstance(r, Exception)]
        except Exception as e:  # noqa: BLE001 - acceleration only: the heartbeats still carry the change
            errors = [describe_redis_error(e, nodes.settings)]
        detail = "told the new owner of slots %s (instead of waiting for heartbeats)" % ranges_text(t[0] for t in todo)
        if errors:
            detail += "; %d refused, left to the heartbeats: %s" % (len(errors), one_line(errors[0], 200))
        timeline.append(timeline_entry("setslot node", n["address"], detail))


def _assign(nodes, by_addr, a, timeline):
    target = a["node"]
    slots = set(a["slots"])
    lines = parse_cluster_nodes(nodes.run(target, "CLUSTER", "NODES"))
    owners = _owner_map(lines)
    elsewhere = sorted(s for s in slots if owners[s] is not None and owners[s] != a["node_id"])
    missing = sorted(s for s in slots if owners[s] != a["node_id"])
    if not missing:
        timeline.append(timeline_entry("addslots", target, "already owns %s" % ranges_text(slots)))
        return
    pipe = nodes(target).pipeline(transaction=True)
    for x, y in compress_slots(elsewhere):
        pipe.execute_command("CLUSTER", "DELSLOTSRANGE", x, y)
    for x, y in compress_slots(missing):
        pipe.execute_command("CLUSTER", "ADDSLOTSRANGE", x, y)
    bump = bool(elsewhere) or bool(a.get("taken_from"))
    if bump:
        pipe.execute_command("CLUSTER", "BUMPEPOCH")
    try:
        replies = pipe.execute(raise_on_error=False)
    except Exception as e:
        raise P3Error("%s: slot assignment failed: %s" % (target, describe_redis_error(e, nodes.settings)),
                      timeline=timeline)
    errors = [str(r) for r in replies if isinstance(r, Exception)]
    if errors:
        raise P3Error("%s: slot assignment failed: %s" % (target, one_line("; ".join(errors), 300)),
                      timeline=timeline)
    detail = "ADDSLOTSRANGE %s (%d slots, %d keys already there)" % (ranges_text(missing), len(missing), a["keys"])
    if elsewhere:
        detail += "; took %s from %s (DELSLOTSRANGE + BUMPEPOCH)" % (ranges_text(elsewhere),
                                                                     ", ".join(a.get("taken_from") or []))
    if a.get("lossy"):
        detail += "; allow_data_loss: keys of %d slots may be lost" % len(a["lossy"])
    timeline.append(timeline_entry("addslots", target, detail))


def _migrate_keys(settings, nodes, src, dst, slot, timeline, timeout_ms, replace=False):
    host, port = parse_address(dst)
    moved = 0
    while True:
        keys = nodes.run(src, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        args = ["MIGRATE", host, port, "", 0, timeout_ms]
        if replace:
            args.append("REPLACE")
        if settings.password:
            if settings.username:
                args += ["AUTH2", settings.username, settings.password]
            else:
                args += ["AUTH", settings.password]
        args += ["KEYS"] + list(keys)
        nodes.run(src, *args)
        moved += len(keys)
    if moved:
        timeline.append(timeline_entry("migrate", src, "moved %d keys of slot %d to %s" % (moved, slot, dst)))
    return moved


def _close_open_slot(settings, nodes, by_addr, slot, e, timeline, timeout_ms):
    """Like redis-cli --cluster fix: finish a migration both sides agree on, else bring the keys home."""
    owner = e["owner"]
    mig, imp = e["migrating"], e["importing"]
    if len(mig) == 1 and len(imp) == 1 and mig[0][0] == owner and mig[0][1] == imp[0][0]:
        dst = imp[0][0]
        _migrate_keys(settings, nodes, owner, dst, slot, timeline, timeout_ms)
        dst_id = by_addr[dst]["id"]
        for addr in [dst, owner] + sorted(a for a, n in by_addr.items() if n["reachable"] and n["role"] == "master"
                                          and a not in (dst, owner)):
            nodes.run(addr, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        timeline.append(timeline_entry("setslot node", dst, "slot %d: finished the migration %s -> %s" % (slot, owner, dst)))
        return
    if not mig and imp and owner:
        for node, _peer in imp:
            _migrate_keys(settings, nodes, node, owner, slot, timeline, timeout_ms)
            nodes.run(node, "CLUSTER", "SETSLOT", slot, "STABLE")
        timeline.append(timeline_entry("setslot stable", ",".join(pair[0] for pair in imp),
                                       "slot %d: importing without a migration; keys back to the owner %s" % (slot, owner)))
        return
    if mig and not imp and owner and all(pair[0] == owner for pair in mig):
        nodes.run(owner, "CLUSTER", "SETSLOT", slot, "STABLE")
        timeline.append(timeline_entry("setslot stable", owner, "slot %d: migrating to %s which is not importing"
                                       % (slot, mig[0][1])))
        return
    raise P3Error("slot %d is open in a way this module does not close safely (owner %s, migrating %s, importing %s)"
                  % (slot, owner, mig, imp), timeline=timeline)


# ---------------------------------------------------------------------------------------------------------------
# Membership: rejoin as replica, forget
# ---------------------------------------------------------------------------------------------------------------

def pick_master_for(topology, node):
    """The slot-owning master with the fewest healthy replicas (then the lowest address)."""
    nodes = topology["nodes"]
    masters = [n for n in nodes if n["role"] == "master" and n["slot_count"] and n["reachable"]
               and not n.get("failed") and n["address"] != node["address"]]
    if not masters:
        return None

    def healthy_replicas(m):
        return len([r for r in nodes if r["role"] == "replica" and r["master_id"] == m["id"] and r["reachable"]
                    and not r.get("failed") and not r.get("pfail")])
    return sorted(masters, key=lambda m: (healthy_replicas(m), m["address"]))[0]


def plan_rejoin(topology, targets=None, master=None):
    """[(node, master)] to attach. Pure. targets: addresses/ids, default the topology's rejoin candidates."""
    steps = []
    cluster = topology.get("cluster_enabled")
    refs = list(targets or topology["rejoin_candidates"])
    for ref in refs:
        n = find_node(topology, ref)
        if n is None:
            raise P3Error("node %s is not known to the cluster (CLUSTER MEET it first)" % ref)
        if not n["reachable"]:
            raise P3Error("node %s is not reachable (%s)" % (n["address"], n["error"]))
        if cluster:
            m = find_node(topology, master) if master else pick_master_for(topology, n)
            if m is None:
                raise P3Error("no live master with slots to attach %s to" % n["address"])
            if m["role"] != "master" or not m["slot_count"]:
                raise P3Error("%s is not a master serving slots" % m["address"])
            if n["role"] == "replica" and (n["master_id"] == m["id"] or not master):
                continue
            if n["role"] == "master" and n["slot_count"]:
                raise P3Error("%s serves slots %s: fail it over or move its slots before making it a replica"
                              % (n["address"], ",".join(n["slots"])))
            if n.get("keys"):
                raise P3Error("%s holds %d keys: CLUSTER REPLICATE needs an empty node (flush it after checking "
                              "its data is stale)" % (n["address"], n["keys"]))
        else:
            m = find_node(topology, master) if master else topology.get("_current_master")
            if m is None:
                raise P3Error("no master to attach %s to" % n["address"])
            if n["role"] == "replica" and n["master"] == m["address"]:
                continue
            if n["role"] == "master" and n.get("keys"):
                raise P3Error("%s holds %d keys: REPLICAOF would discard them (it may hold writes taken after the "
                              "failover); dump or flush it after checking its data is stale" % (
                                  n["address"], n["keys"]))
        steps.append((n, m))
    return steps


def run_rejoin(settings, topology, steps, wait_timeout=30.0, wait_link=True):
    timeline, done = [], []
    nodes = Nodes(settings)
    try:
        for n, m in steps:
            t0 = time.monotonic()
            if topology.get("cluster_enabled"):
                nodes.run(n["address"], "CLUSTER", "REPLICATE", m["id"])
                timeline.append(timeline_entry("cluster replicate", n["address"], "replica of %s (%s)" % (
                    m["address"], ",".join(m["slots"]))))
            else:
                host, port = parse_address(m["address"])
                nodes.run(n["address"], "REPLICAOF", host, str(port))
                timeline.append(timeline_entry("replicaof", n["address"], "replica of %s" % m["address"]))
            watch = [x["address"] for x in topology["nodes"] if x["reachable"]]
            deadline = t0 + wait_timeout
            while True:
                info = nodes.try_run(n["address"], "INFO", "replication")[0]
                info = parse_info(info or "")
                ok = info.get("role") == "slave" and (not wait_link or info.get("master_link_status") == "up")
                if ok and topology.get("cluster_enabled"):
                    views = views_of(nodes, watch)
                    ok = all(any(x["id"] == n["id"] and x["role"] == "replica" and x["master_id"] == m["id"]
                                 for x in lines) for lines in views.values())
                if ok:
                    break
                if time.monotonic() >= deadline:
                    raise P3Error("%s did not become a linked replica of %s within %ss (role %s, link %s)" % (
                        n["address"], m["address"], num_text(wait_timeout), info.get("role"),
                        info.get("master_link_status")), timeline=timeline, rejoined=done)
                time.sleep(POLL)
            took = round(time.monotonic() - t0, 3)
            timeline.append(timeline_entry("converged", n["address"], "linked replica of %s, every reachable node "
                                           "agrees, after %ss" % (m["address"], took)))
            done.append(dict(node=n["address"], master=m["address"], seconds=took))
    except DeadlineExceeded as e:
        raise _progress(e, timeline=timeline, rejoined=done)
    finally:
        nodes.close()
    return done, timeline


def plan_forget(topology, targets=None, force=False):
    out = []
    for ref in list(targets or topology["forget_candidates"]):
        n = find_node(topology, ref)
        if n is None:
            continue  # already forgotten everywhere
        if not n.get("id"):
            raise P3Error("%s has no cluster id" % ref)
        if not force:
            if n["reachable"]:
                raise P3Error("%s is reachable: refusing to forget a live node (force=true to override)" % n["address"])
            if not n.get("failed"):
                raise P3Error("%s is not flagged fail by its peers yet: refusing to forget it (force=true to "
                              "override)" % n["address"])
        if n["slot_count"]:
            raise P3Error("%s still owns slots %s: fail it over or repair the slots first" % (
                n["address"], ",".join(n["slots"])))
        out.append(n)
    return out


def run_forget(settings, topology, targets, recheck=True):
    timeline = []
    nodes = Nodes(settings)
    try:
        for t in targets:
            if recheck:
                down, why, dummy = recheck_down(nodes, topology, t["id"], t["address"])
                if not down:
                    raise P3Error("not forgetting %s: %s" % (t["address"], why), timeline=timeline)
            told, errors = [], []
            for x in topology["nodes"]:
                if not x["reachable"] or x["id"] == t["id"]:
                    continue
                err = nodes.try_run(x["address"], "CLUSTER", "FORGET", t["id"])[1]
                if err and "Unknown node" not in err:
                    errors.append("%s: %s" % (x["address"], err))
                else:
                    told.append(x["address"])
            timeline.append(timeline_entry("cluster forget", t["address"], "forgotten by %d nodes (id %s)%s" % (
                len(told), t["id"], "; errors: " + "; ".join(errors) if errors else "")))
            if errors:
                raise P3Error("CLUSTER FORGET %s failed on %s" % (t["address"], "; ".join(errors)), timeline=timeline)
    finally:
        nodes.close()
    return timeline


def repair_changed(timeline):
    """Whether a slot repair's timeline records a command that changed the cluster (an ADDSLOTS that assigned
    something, a SETSLOT, a MIGRATE, a promotion), converged or not."""
    for e in timeline or ():
        if e["action"] in ("setslot node", "setslot stable", "migrate") or e["action"].startswith("cluster failover"):
            return True
        if e["action"] == "addslots" and not e["detail"].startswith("already owns"):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Designed shape: N masters serving slots, R replicas each (after a lossy repair and the nodes' return)
# ---------------------------------------------------------------------------------------------------------------

def _usable(n):
    return bool(n.get("reachable")) and not n.get("failed") and not n.get("pfail") and bool(n.get("id"))


def shape_of(topology):
    """Pure. (slot masters sorted by address, {master id: [its usable replicas]}, other usable nodes: empty masters
    and replicas of a node that serves no slot (chained after a return))."""
    nodes = [n for n in topology.get("nodes") or () if n.get("id")]
    masters = sorted((n for n in nodes if n["role"] == "master" and n["slot_count"] and _usable(n)),
                     key=lambda n: n["address"])
    ids = set(m["id"] for m in masters)
    replicas_of = dict((m["id"], []) for m in masters)
    free = []
    for n in sorted(nodes, key=lambda n: n["address"]):
        if not _usable(n) or (n["role"] == "master" and n["slot_count"]):
            continue
        if n["role"] == "replica" and n["master_id"] in ids:
            replicas_of[n["master_id"]].append(n)
        else:
            free.append(n)
    return masters, replicas_of, free


def shape_verdict(topology, designed_masters, designed_replicas=1):
    """Pure. Does the cluster have its designed shape (designed_masters masters serving slots, designed_replicas
    usable replicas each)? dict(ok, reason, masters, replicas); None when no shape is designed (0) or no cluster."""
    if not designed_masters or not topology.get("cluster_enabled"):
        return None
    masters, replicas_of, free = shape_of(topology)
    counts = sorted(len(r) for r in replicas_of.values())
    ok = len(masters) == designed_masters and all(c == designed_replicas for c in counts)
    seen = "%d masters serving slots, replicas per master %s%s" % (
        len(masters), counts or "-", ", %d other nodes (%s)" % (len(free), ", ".join(n["address"] for n in free))
        if free else "")
    want = "designed %d masters with %d replica(s) each" % (designed_masters, designed_replicas)
    return dict(ok=ok, masters=len(masters), replicas=counts, free=[n["address"] for n in free],
                reason=("%s: %s" % (seen, "as designed" if ok else "not the " + want)))


def with_shape(topology, designed_masters, designed_replicas=1):
    """The topology with its shape verdict (shape_verdict) as topology['shape']; 'reshape' ends next_actions when
    the shape is off while nothing else is to do and every known node is up (only then can it be restored)."""
    shape = shape_verdict(topology, designed_masters, designed_replicas)
    out = dict(topology, shape=shape)
    if shape and not shape["ok"] and not topology.get("next_actions") and topology.get("serving") and all(
            _usable(n) for n in topology.get("nodes") or ()):
        out["next_actions"] = list(topology.get("next_actions") or []) + ["reshape"]
    return out


def _target_sizes(n_masters):
    base, extra = divmod(CLUSTER_SLOTS, n_masters)
    return [base + (1 if i < extra else 0) for i in range(n_masters)]


def plan_reshape(topology, designed_masters, designed_replicas=1):
    """What brings a serving cluster back to its designed shape. Pure.

    Returns dict(new_masters [{node, node_id, from (replica of / empty)}], moves [{src, src_id, dst, dst_id, slots
    (sorted list), count}], reason) - or raises P3Error naming why it is not done now (a node down or flagged, open
    slots, views disagreeing, more masters than designed, no node to make a master). New masters come from empty
    masters first, then replicas of no slot master, then the replicas beyond designed_replicas of the master with the
    most. Each new master takes a contiguous block of the lowest slots of the master with the most slots until it has
    its share (16384 / designed_masters), so the ranges stay contiguous; masters that already serve slots are not
    rebalanced among themselves. Replicas are balanced afterwards (plan_replica_balance), on a fresh read.
    """
    if not designed_masters:
        return dict(new_masters=[], moves=[], reason="no designed shape")
    if not topology.get("cluster_enabled"):
        raise P3Error("not reshaping: not a Redis Cluster")
    down = [n["address"] for n in topology["nodes"] if not _usable(n)]
    if down:
        raise P3Error("not reshaping while %s %s down or flagged by peers" % (
            ", ".join(down), "is" if len(down) == 1 else "are"))
    if not topology.get("serving") or topology.get("open_slots") or topology.get("disagreements"):
        raise P3Error("not reshaping a cluster that does not serve every slot in agreement: %s" % topology["reason"])
    masters, replicas_of, free = shape_of(topology)
    need = designed_masters - len(masters)
    if need < 0:
        raise P3Error("not reshaping: %d masters serve slots, more than the designed %d (merging masters moves their "
                      "slots: not automated)" % (len(masters), designed_masters))
    new = []
    pool = [(n, "empty master" if n["role"] == "master" else "replica of %s (no slots)" % (n.get("master") or "?"))
            for n in free]
    spare = []
    counts = dict((m["id"], len(r)) for m, r in ((m, replicas_of[m["id"]]) for m in masters))
    by_id = dict((m["id"], m) for m in masters)
    while len(pool) + len(spare) < need:
        donor = max(sorted(counts), key=lambda i: counts[i]) if counts else None
        if donor is None or counts[donor] <= designed_replicas:
            break
        # the replica furthest behind goes first: the best stays with its master
        reps = [r for r in rank_replicas(replicas_of[donor]) if r not in [s for s, dummy in spare]]
        spare.append((reps[-1], "spare replica of %s (it keeps %d)" % (by_id[donor]["address"], counts[donor] - 1)))
        counts[donor] -= 1
    for n, how in (pool + spare)[:need]:
        if n["role"] == "master" and n.get("keys"):
            raise P3Error("not reshaping: %s is a master without slots that holds %d keys (check and flush it first)"
                          % (n["address"], n["keys"]))
        new.append(dict(node=n["address"], node_id=n["id"], was=how, reset=n["role"] != "master"))
    if len(new) < need:
        raise P3Error("not reshaping: %d masters serve slots, designed %d, and no node can become a master (every "
                      "replica is the only one of its master)" % (len(masters), designed_masters))
    own = dict((m["id"], sorted(range_slots(m["slots"]))) for m in masters)
    moves = []
    sizes = _target_sizes(designed_masters)
    share = sizes[-1]
    for n in new:
        got = 0
        while got < share:
            donor = max(sorted(own), key=lambda i: len(own[i]))
            if len(own[donor]) <= share:
                break
            k = min(len(own[donor]) - share, share - got)
            block, own[donor] = own[donor][:k], own[donor][k:]
            moves.append(dict(src=by_id[donor]["address"], src_id=donor, dst=n["node"], dst_id=n["node_id"],
                              slots=block, count=len(block), range=ranges_text(block)))
            got += k
    reason = "; ".join(["make %s a master (%s)" % (n["node"], n["was"]) for n in new]
                       + ["move slots %s from %s to %s" % (m["range"], m["src"], m["dst"]) for m in moves])
    return dict(new_masters=new, moves=moves, reason=reason or "nothing to move")


def plan_replica_balance(topology, designed_replicas=1, also=()):
    """[(replica node, master node)] so every slot master - and each master without slots whose id is in also (a
    new master before its slots move) - has designed_replicas usable replicas: replicas of no such master (chained,
    or of an empty master) first, then those beyond designed_replicas of the master with the most. Pure; a master
    that stays short (no node left) is simply not in the plan."""
    masters, replicas_of, free = shape_of(topology)
    extra = [n for n in free if n["id"] in set(also) and n["role"] == "master"]
    for e in extra:
        replicas_of[e["id"]] = [n for n in free if n["role"] == "replica" and n["master_id"] == e["id"]]
    taken = set(r["id"] for reps in replicas_of.values() for r in reps)
    pool = [n for n in free if n["role"] == "replica" and n["id"] not in taken]
    targets = masters + extra
    steps = []
    for m in targets:
        while len(replicas_of[m["id"]]) < designed_replicas:
            if pool:
                r = pool.pop(0)
            else:
                donors = [x for x in targets if x is not m and len(replicas_of[x["id"]]) > designed_replicas]
                if not donors:
                    break
                donor = max(donors, key=lambda x: (len(replicas_of[x["id"]]), x["address"]))
                r = rank_replicas(replicas_of[donor["id"]])[-1]
                replicas_of[donor["id"]].remove(r)
            replicas_of[m["id"]].append(r)
            steps.append((r, m))
    return steps


def _wait_views(nodes, watch, ok, wait_timeout, what, timeline):
    """Poll every reachable node's CLUSTER NODES until ok(address, lines) holds for all; P3Error after wait_timeout."""
    deadline = time.monotonic() + wait_timeout
    while True:
        views = views_of(nodes, watch)
        behind = sorted(a for a in watch if a not in views or not ok(a, views[a]))
        if not behind:
            return
        if time.monotonic() >= deadline:
            raise P3Error("%s: not seen by %s within %ss" % (what, ", ".join(behind), num_text(wait_timeout)),
                          timeline=timeline)
        time.sleep(POLL)


def _make_master(nodes, topology, n, timeline, wait_timeout):
    """A replica becomes an empty master: re-check (still a replica, its master keeps another linked replica),
    CLUSTER RESET SOFT (it drops its copy of the data and forgets its peers), CLUSTER MEET back, wait until every
    node knows it as a master without slots and it knows every slot's owner."""
    addr = n["node"]
    watch = [x["address"] for x in topology["nodes"] if x.get("reachable")]
    if n["reset"]:
        lines = parse_cluster_nodes(nodes.run(addr, "CLUSTER", "NODES"))
        me = next(x for x in lines if x["myself"])
        if me["role"] != "replica":
            raise P3Error("not resetting %s: it is no longer a replica" % addr, timeline=timeline)
        if me["master_id"]:
            master = next((x for x in lines if x["id"] == me["master_id"]), None)
            if master is not None and master["slots"]:
                others = [x for x in lines if x["role"] == "replica" and x["master_id"] == me["master_id"]
                          and x["id"] != me["id"] and not (set(x["flags"]) & {FAIL, PFAIL})]
                if not others:
                    raise P3Error("not resetting %s: it is now the only replica of %s" % (addr, master["address"]),
                                  timeline=timeline)
        nodes.run(addr, "CLUSTER", "RESET", "SOFT")
        timeline.append(timeline_entry("cluster reset soft", addr, "%s -> empty master (its copy of the data "
                                       "dropped; the data stays on its master)" % n["was"]))
        peer = next(a for a in watch if a != addr)
        host, port = parse_address(peer)
        nodes.run(addr, "CLUSTER", "MEET", host, port)
        timeline.append(timeline_entry("cluster meet", addr, "met %s again" % peer))
    _wait_views(nodes, watch, lambda a, lines: any(
        x["id"] == n["node_id"] and x["role"] == "master" and not (set(x["flags"]) & {FAIL, PFAIL})
        for x in lines) and (a != addr or len(_owner_map(lines)) - _owner_map(lines).count(None) == CLUSTER_SLOTS),
        wait_timeout, "%s as an empty master" % addr, timeline)
    # a node that rejoins says cluster_state:ok only after a rejoin delay (up to 5 s): until then MIGRATE to it fails
    # with CLUSTERDOWN
    deadline = time.monotonic() + wait_timeout
    while True:
        info, err = nodes.try_run(addr, "CLUSTER", "INFO")
        if err is None and parse_info(info).get("cluster_state") == "ok":
            break
        if time.monotonic() >= deadline:
            raise P3Error("%s: not cluster_state:ok within %ss as an empty master (%s)" % (
                addr, num_text(wait_timeout), err or "cluster_state:%s" % parse_info(info).get("cluster_state")),
                timeline=timeline)
        time.sleep(POLL)


def _move_slots(settings, nodes, topology, m, timeline, timeout_ms, batch=256):
    """Move m's slots src -> dst the way redis-cli reshards: IMPORTING on dst, MIGRATING on src, MIGRATE every key,
    then SETSLOT NODE on dst, src and every other master (src refuses while it still holds keys of the slot)."""
    masters = [x["address"] for x in topology["nodes"] if x.get("reachable") and x["role"] == "master"
               and x["address"] not in (m["src"], m["dst"])]
    keys = 0
    scratch = []
    for i in range(0, len(m["slots"]), batch):
        chunk = m["slots"][i:i + batch]
        for addr, args in ((m["dst"], ("IMPORTING", m["src_id"])), (m["src"], ("MIGRATING", m["dst_id"]))):
            pipe = nodes(addr).pipeline(transaction=False)
            for s in chunk:
                pipe.execute_command("CLUSTER", "SETSLOT", s, *args)
            errors = [str(r) for r in pipe.execute(raise_on_error=False) if isinstance(r, Exception)]
            if errors:
                raise P3Error("%s: CLUSTER SETSLOT %s failed: %s" % (addr, args[0], one_line(errors[0], 200)),
                              timeline=timeline)
        pipe = nodes(m["src"]).pipeline(transaction=False)
        for s in chunk:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
        for s, k in zip(chunk, pipe.execute()):
            if int(k):
                keys += _migrate_keys(settings, nodes, m["src"], m["dst"], s, scratch, timeout_ms)
        for addr in [m["dst"], m["src"]] + masters:
            pipe = nodes(addr).pipeline(transaction=False)
            for s in chunk:
                pipe.execute_command("CLUSTER", "SETSLOT", s, "NODE", m["dst_id"])
            errors = [str(r) for r in pipe.execute(raise_on_error=False) if isinstance(r, Exception)]
            if errors and addr in (m["dst"], m["src"]):
                raise P3Error("%s: CLUSTER SETSLOT NODE failed: %s" % (addr, one_line(errors[0], 200)),
                              timeline=timeline)
    timeline.append(timeline_entry("reshard", m["dst"], "slots %s (%d) moved from %s with their %d keys (IMPORTING/"
                                   "MIGRATING, MIGRATE, SETSLOT NODE)" % (m["range"], m["count"], m["src"], keys)))
    return keys


def replica_offsets(info):
    """INFO replication of a master -> (master_repl_offset, [(replica address, state, acknowledged offset)])."""
    rep = parse_info(info)
    out = []
    for k in sorted(rep):
        if not (k.startswith("slave") and k[5:].isdigit()):
            continue
        f = rep[k]  # redis-py parses INFO itself: slave<N> is already a dict of typed values
        if not isinstance(f, dict):
            f = dict(kv.split("=", 1) for kv in str(f).split(",") if "=" in kv)
        out.append(("%s:%s" % (f.get("ip"), f.get("port")), f.get("state"), _int(f.get("offset"))))
    return _int(rep.get("master_repl_offset")), out


def wait_replicas_synced(nodes, masters, wait_timeout, timeline, what="reshard"):
    """Wait until every replica of each master in masters has acknowledged the master's replication offset as read
    now (the keys MIGRATE just wrote there have a second copy); a replica acknowledges about once a second.
    Returns the seconds it took; P3Error naming the replicas still behind (or the master without any) at the
    deadline. WAIT cannot do this: it only counts the writes of its own connection, and these came through MIGRATE
    from the source master."""
    t0 = time.monotonic()
    deadline = t0 + wait_timeout
    targets = {}
    for m in masters:
        offset, reps = replica_offsets(nodes.run(m, "INFO", "replication"))
        if reps:
            targets[m] = offset or 0
        else:  # nothing to wait for: said in the timeline, the shape verdict names the missing replica
            timeline.append(timeline_entry("replicated", m, "no replica: the moved keys exist in one copy"))
    while targets:
        behind = []
        for m, target in sorted(targets.items()):
            info, err = nodes.try_run(m, "INFO", "replication")
            if err is not None:
                behind.append("%s does not answer INFO: %s" % (m, err))
                continue
            reps = replica_offsets(info)[1]
            if not reps:
                behind.append("%s lost its replica" % m)
            behind += ["replica %s of %s at offset %s < %d (%s)" % (r, m, off, target, state)
                       for r, state, off in reps if state != "online" or (off or 0) < target]
        if not behind:
            took = round(time.monotonic() - t0, 3)
            timeline.append(timeline_entry("replicated", ",".join(sorted(targets)), "every replica acknowledged the "
                                           "moved keys (replication offset) after %ss" % took))
            return took
        if time.monotonic() >= deadline:
            raise P3Error("%s: the moved keys exist in one copy only: %s after %ss" % (
                what, "; ".join(behind), num_text(wait_timeout)), timeline=timeline)
        time.sleep(POLL)
    return 0.0


def run_reshape(settings, read, plan, designed_replicas=1, wait_timeout=30.0, migrate_timeout_ms=5000):
    """Execute plan_reshape's plan: new masters (reset + meet); then, on a fresh read, replicas for them before they
    take any slot (the moved keys then have a copy); the slot moves, polled until every node agrees and says
    cluster_state:ok; then, on a fresh read, the remaining replica balance (CLUSTER REPLICATE via run_rejoin).
    read(): a fresh topology. Returns (timeline, replicated); a P3Error carries the timeline too."""
    timeline, replicated = [], []
    nodes = Nodes(settings)
    try:
        topology = read()
        for n in plan["new_masters"]:
            _make_master(nodes, topology, n, timeline, wait_timeout)
        new_ids = [n["node_id"] for n in plan["new_masters"]]
        if new_ids:
            topology = read()
            steps = plan_replica_balance(topology, designed_replicas, also=new_ids)
            done, tl = run_rejoin(settings, topology, steps, wait_timeout=wait_timeout)
            timeline += tl
            replicated += done
        watch = [x["address"] for x in topology["nodes"] if x.get("reachable")]
        expected, filled = [], []
        for m in plan["moves"]:
            if _move_slots(settings, nodes, topology, m, timeline, migrate_timeout_ms) and designed_replicas:
                filled.append(m["dst"])
            expected.append((m["dst_id"], set(m["slots"])))
        if expected:
            took = _wait_until_agreed(nodes, watch, expected, wait_timeout, timeline, "reshard")
            timeline.append(timeline_entry("converged", "cluster", "every reachable node agrees on the moved slots "
                                           "and says cluster_state:ok after %ss" % took))
        if filled:  # not done while the moved keys exist on the new owner only
            wait_replicas_synced(nodes, sorted(set(filled)), wait_timeout, timeline)
        topology = read()
        steps = plan_replica_balance(topology, designed_replicas)
        if steps:
            done, tl = run_rejoin(settings, topology, steps, wait_timeout=wait_timeout)
            timeline += tl
            replicated += done
    except P3Error as e:  # DeadlineExceeded too: what was done so far goes with the failure
        e.details["timeline"] = timeline + [x for x in e.details.get("timeline") or () if x not in timeline]
        e.details.setdefault("replicated", replicated)
        raise
    finally:
        nodes.close()
    return timeline, replicated
