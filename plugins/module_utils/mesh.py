# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mesh relay plumbing of p3.recovery (runbook scenario 2, Mesh Relay Outage): pub/sub state of every Redis node
(in a cluster PUBSUB CHANNELS / NUMSUB / NUMPAT only answer for the node asked), the control-channel publish,
and the connection count on the app port (psutil). The Redis functions import redis_client where they run: the
modules that only count connections or relay over HTTP (connection_storm_probe, mesh_peers_probe) load no redis-py."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import traceback

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    DeadlineExceeded, P3Error, close_quietly, one_line, run_parallel)

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
    from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
    rec = dict(address=address, reachable=False, error=None, channels={}, numpat=None)
    client = None
    try:
        host, port = rc.parse_address(address)
        client = rc.node_client(settings, host, port)
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
        rec["error"] = rc.describe_redis_error(e, settings)
    finally:
        close_quietly(client)
    return rec


def cluster_nodes(settings):
    """(addresses of every reachable node, unreachable addresses, redis verdict)."""
    from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
    verdict = rc.summarize(rc.probe_nodes(settings), seeds=settings.seed_addresses)
    reachable = [n["address"] for n in verdict["nodes"] if n["reachable"]]
    unreachable = [n["address"] for n in verdict["nodes"] if not n["reachable"]]
    if not reachable:
        raise P3Error("no Redis node reachable via %s: %s" % (
            ", ".join(settings.seed_addresses), verdict.get("reason") or "no answer"))
    return reachable, unreachable, verdict


def pubsub_census(settings, pattern="mesh:*", channels=()):
    """Pub/sub state of every node, asked in parallel (each bounded by the client timeouts)."""
    from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
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
        error = rc.describe_redis_error(errors[address], settings) if address in errors else (
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
    from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
    candidates = [address] if address else None
    if candidates is None:
        verdict = rc.summarize(rc.probe_nodes(settings), seeds=settings.seed_addresses)
        failed = set(verdict["failed_nodes"])
        candidates = [n["address"] for n in verdict["nodes"]
                      if n["reachable"] and n["address"] not in failed and n["role"] == "master"]
        candidates += [n["address"] for n in verdict["nodes"] if n["reachable"] and n["address"] not in candidates]
    errors = []
    for addr in candidates:
        client = None
        try:
            host, port = rc.parse_address(addr)
            client = rc.node_client(settings, host, port)
            return addr, int(client.publish(channel, message))
        except Exception as e:
            errors.append("%s: %s" % (addr, rc.describe_redis_error(e, settings)))
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


# ---------------------------------------------------------------------------------------------------------------
# P3 as coded: the global mesh relay (server/mesh/globalRelay.ts) keeps its peers and their message queues in the
# app's process memory; "the mesh works" is a message relayed through it reaching its target.
# ---------------------------------------------------------------------------------------------------------------

RELAY_LANE = 2  # FOUNDATION_LANES.KEEPALIVE of P3's global relay


def relay_manifest(account, node_id, now_ms):
    """The node manifest P3's POST <relay>/register accepts: an EIP-191 signature by the node's wallet over
    p3-global-relay:<nodeId>:<wallet lowercase>:<timestamp ms> (timestamp within 5 minutes of P3's clock)."""
    from eth_account.messages import encode_defunct

    wallet = account.address
    message = "p3-global-relay:%s:%s:%d" % (node_id, wallet.lower(), now_ms)
    signature = account.sign_message(encode_defunct(text=message)).signature.hex()
    if not signature.startswith("0x"):
        signature = "0x" + signature
    return dict(nodeId=node_id, wallet=wallet, signature=signature, foundationLaneVersion="1.0.0", customLanes=[],
                capabilities=["p3-recovery-probe"], endpoint="", timestamp=now_ms)


def relay_roundtrip(target, relay_path, node_prefix="p3-recovery-probe"):
    """Use P3's global mesh relay as a peer does: register a throwaway node (a fresh key made for this call signs
    its manifest, so nothing secret is involved and unregistering removes only this node), relay one message to
    itself on the KEEPALIVE lane, read it back from its queue, and unregister (always, once registered).
    target.timeout is the total deadline of the whole round trip. Returns a probe result: healthy when the message
    came back; peers = other nodes registered (P3's globalNodes.size minus this one), relays, latency_ms."""
    import json
    import time
    import uuid

    from ansible_collections.p3.recovery.plugins.module_utils.common import probe_result
    from ansible_collections.p3.recovery.plugins.module_utils.http_client import describe_response, request

    # eth_account is imported here, not at the top: it pulls in py_ecc, whose BLS tables cost seconds of CPU at
    # import, and every module that imports this file would pay it (tests/unit/test_import_cost.py).
    try:
        from eth_account import Account
    except ImportError:
        raise P3Error("the eth-account Python library (part of web3) is required to sign the mesh probe's "
                      "node manifest")
    base = "/" + str(relay_path or "").strip("/")
    if base == "/":
        raise P3Error("relay_path must not be empty")
    account = Account.create()
    node_id = "%s-%s" % (node_prefix, uuid.uuid4().hex[:12])
    nonce = uuid.uuid4().hex
    t0 = time.monotonic()
    end = t0 + float(target.timeout)
    # the unregister keeps a share of the deadline: a register that timed out may still be served later (P3 queues
    # every /api/* request behind its telemetry insert), and the unregister queued after it removes the node then
    reserve = min(1.0, float(target.timeout) / 4)
    out = dict(node_id=node_id, url=None, peers=None, relayed=False, received=False, unregistered=None,
               latency_ms=None, status=None)

    def call(method, path, body=None, until=None):
        left = (until or end - reserve) - time.monotonic()
        if left <= 0:
            raise P3Error("mesh relay round trip: no answer within the total timeout of %ss before %s %s"
                          % (target.timeout, method, path))
        headers = dict(target.headers)
        headers["X-Wallet-Address"] = account.address
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        resp = request(target.url_for(base + path), method=method, timeout=left, headers=headers,
                       validate_certs=target.validate_certs, data=data, secrets=target.secrets,
                       context=target.context)
        out["status"] = resp["status"]
        return resp

    def bad(resp, what):
        body = resp["json"] if isinstance(resp["json"], dict) else {}
        detail = body.get("error") if body.get("error") else None
        return "mesh relay %s: %s%s" % (what, describe_response(resp), (" (%s)" % one_line(detail, 120)) if detail
                                        else "")

    problem = None
    registered = None  # unknown until P3 answers
    try:
        resp = call("POST", "/register", relay_manifest(account, node_id, int(time.time() * 1000)))
        out["url"] = resp["url"]
        if not (resp["ok"] and isinstance(resp["json"], dict) and resp["json"].get("ok") is True):
            registered = None if resp["status"] is None else False
            problem = bad(resp, "register")
        else:
            registered = True
            avail = resp["json"].get("peersAvailable")
            out["peers"] = max(0, int(avail) - 1) if isinstance(avail, int) else None
            resp = call("POST", "/relay", dict(target=node_id, lane=RELAY_LANE,
                                               payload=dict(probe="p3-recovery", nonce=nonce)))
            if not (resp["ok"] and isinstance(resp["json"], dict) and resp["json"].get("relayed") is True):
                problem = bad(resp, "relay")
            else:
                out["relayed"] = True
                resp = call("GET", "/messages")
                msgs = (resp["json"] or {}).get("messages") if isinstance(resp["json"], dict) else None
                if not resp["ok"] or not isinstance(msgs, list):
                    problem = bad(resp, "messages")
                elif not any(isinstance(m, dict) and isinstance(m.get("payload"), dict)
                             and m["payload"].get("nonce") == nonce for m in msgs):
                    problem = "mesh relay: the message relayed to %s was not in its queue (%d messages)" % (
                        node_id, len(msgs))
                else:
                    out["received"] = True
    except P3Error as e:
        problem = e.msg
    finally:
        if registered is not False:
            try:
                resp = call("POST", "/unregister", {}, until=end)
                out["unregistered"] = bool(resp["ok"])
                if not resp["ok"] and registered and problem is None:
                    problem = bad(resp, "unregister")
            except P3Error as e:
                out["unregistered"] = False
                problem = problem or e.msg
    out["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
    if problem:
        return probe_result(False, problem, **out)
    return probe_result(True, "mesh relay %s: a message relayed on lane %d came back in %s ms (%s other peers "
                        "registered)" % (base, RELAY_LANE, int(out["latency_ms"]), out["peers"]), **out)
