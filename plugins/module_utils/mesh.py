# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mesh relay plumbing of p3.recovery (runbook scenario 2, Mesh Relay Outage): pub/sub state of every Redis node
(in a cluster PUBSUB CHANNELS / NUMSUB / NUMPAT only answer for the node asked), the control-channel publish,
and the connection count on the app port (psutil)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import traceback

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    DeadlineExceeded, P3Error, close_quietly, one_line, run_parallel)
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import (
    describe_redis_error,
    node_client,
    parse_address,
    probe_nodes,
    summarize,
)

PSUTIL_IMP_ERR = None
try:
    import psutil
    HAS_PSUTIL = True
except ImportError:  # pragma: no cover - depends on the environment
    PSUTIL_IMP_ERR = traceback.format_exc()
    HAS_PSUTIL = False


def _as_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def node_pubsub(settings, address, pattern, channels):
    """PUBSUB CHANNELS pattern, NUMSUB of channels (+ the ones found), NUMPAT on one node. Never raises."""
    rec = dict(address=address, reachable=False, error=None, channels={}, numpat=None)
    client = None
    try:
        host, port = parse_address(address)
        client = node_client(settings, host, port)
        found = [_as_text(c) for c in client.execute_command("PUBSUB", "CHANNELS", pattern)]
        names = sorted(set(found) | set(channels))
        if names:
            flat = client.execute_command("PUBSUB", "NUMSUB", *names)
            if isinstance(flat, dict):
                counts = dict((_as_text(k), int(v)) for k, v in flat.items())
            else:
                counts = dict((_as_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))
            rec["channels"] = dict((n, counts.get(n, 0)) for n in names)
        rec["numpat"] = int(client.execute_command("PUBSUB", "NUMPAT"))
        rec["reachable"] = True
    except Exception as e:
        rec["error"] = describe_redis_error(e, settings)
    finally:
        close_quietly(client)
    return rec


def cluster_nodes(settings):
    """(addresses of every reachable node, unreachable addresses, redis verdict)."""
    verdict = summarize(probe_nodes(settings), seeds=settings.seed_addresses)
    reachable = [n["address"] for n in verdict["nodes"] if n["reachable"]]
    unreachable = [n["address"] for n in verdict["nodes"] if not n["reachable"]]
    if not reachable:
        raise P3Error("no Redis node reachable via %s: %s" % (
            ", ".join(settings.seed_addresses), verdict.get("reason") or "no answer"))
    return reachable, unreachable, verdict


def pubsub_census(settings, pattern="mesh:*", channels=()):
    """Pub/sub state of every node, asked in parallel (each bounded by the client timeouts)."""
    reachable, unreachable, verdict = cluster_nodes(settings)
    deadline = settings.deadline.bound(settings.connect_timeout + 3 * settings.socket_timeout + 1.0)

    def call(address):
        return lambda: node_pubsub(settings, address, pattern, list(channels))

    results, errors, dummy = run_parallel(dict((a, call(a)) for a in reachable), deadline, "pubsub")
    unanswered = [a for a in reachable if not (results.get(a) or {}).get("reachable")] + list(unreachable)
    if unanswered and settings.deadline.expired:
        # a census cut by the call's total deadline is no verdict: say so rather than "nobody listens"
        raise DeadlineExceeded(settings.deadline.message(", ".join(unanswered)))
    nodes = []
    for address in reachable:
        error = describe_redis_error(errors[address], settings) if address in errors else (
            "no answer within the probe deadline")
        nodes.append(results.get(address) or dict(address=address, reachable=False, channels={}, numpat=None,
                                                  error=error))
    for address in unreachable:
        nodes.append(dict(address=address, reachable=False, channels={}, numpat=None, error="unreachable"))
    totals = {}
    for n in nodes:
        for name, count in n["channels"].items():
            totals[name] = totals.get(name, 0) + count
    roles = dict((n["address"], n["role"]) for n in verdict["nodes"])
    for n in nodes:
        n["role"] = roles.get(n["address"])
    return dict(
        pattern=pattern,
        nodes=nodes,
        channels=totals,
        numpat=sum(n["numpat"] or 0 for n in nodes),
        nodes_with_patterns=[n["address"] for n in nodes if n["numpat"]],
        unreachable_nodes=[n["address"] for n in nodes if not n["reachable"]],
        # Unreachable and flagged fail by their peers: the cluster gave them up, no client can be subscribed there.
        failed_nodes=[n["address"] for n in verdict["nodes"]
                      if n["address"] in unreachable and "fail" in (n.get("flagged_by_peers") or [])],
        cluster=bool(verdict.get("cluster_enabled")),
    )


def publish(settings, channel, message, address=None):
    """PUBLISH on one node (the first reachable master unless address is given); returns (node, receivers on
    that node). In a cluster the message is forwarded to every node over the cluster bus."""
    candidates = [address] if address else None
    if candidates is None:
        verdict = summarize(probe_nodes(settings), seeds=settings.seed_addresses)
        failed = set(verdict["failed_nodes"])
        candidates = [n["address"] for n in verdict["nodes"]
                      if n["reachable"] and n["address"] not in failed and n["role"] == "master"]
        candidates += [n["address"] for n in verdict["nodes"] if n["reachable"] and n["address"] not in candidates]
    errors = []
    for addr in candidates:
        client = None
        try:
            host, port = parse_address(addr)
            client = node_client(settings, host, port)
            return addr, int(client.publish(channel, message))
        except Exception as e:
            errors.append("%s: %s" % (addr, describe_redis_error(e, settings)))
        finally:
            close_quietly(client)
    raise P3Error("cannot publish on %s: %s" % (channel, "; ".join(errors) or "no Redis node reachable"))


def count_connections(port, states=("ESTABLISHED",), top=5):
    """Connections on a local TCP port (as server: local port == port), by state, with the busiest remote hosts."""
    if not HAS_PSUTIL:
        raise P3Error("the psutil Python library is required to count connections (pip install psutil)")
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        raise P3Error("not allowed to list the TCP connections of other processes (run as root / become)")
    except Exception as e:
        raise P3Error("cannot list TCP connections: %s" % one_line(e, 200))
    by_state = {}
    remotes = {}
    listening = False
    for c in conns:
        if not c.laddr or c.laddr.port != port:
            continue
        if c.status == "LISTEN":
            listening = True
            continue
        by_state[c.status] = by_state.get(c.status, 0) + 1
        if c.status in states and c.raddr:
            remotes[c.raddr.ip] = remotes.get(c.raddr.ip, 0) + 1
    counted = sum(v for k, v in by_state.items() if k in states)
    busiest = sorted(remotes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return dict(port=port, listening=listening, connections=counted, by_state=by_state,
                top_remotes=[dict(address=a, connections=n) for a, n in busiest])
