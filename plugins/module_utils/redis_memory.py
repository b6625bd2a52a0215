# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a Redis keyspace's memory goes (module p3.recovery.redis_memory_report), read-only: INFO memory of every
master, then SCAN + MEMORY USAGE (pipelined per page) up to per_master_limit keys per master, the biggest keys and the
biggest key prefixes. aggregate() is pure."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import describe_redis_error, node_client, parse_address
from ansible_collections.p3.recovery.plugins.module_utils.sessions import keyspace_nodes, printable_key


def key_prefix(key, separator=":", depth=1):
    """The first depth parts of key (the whole key when it has no separator): session:abc -> session."""
    parts = key.split(separator)
    if len(parts) <= depth:
        return key if len(parts) == 1 else separator.join(parts[:depth])
    return separator.join(parts[:depth])


def shown_key(key, separator=":", depth=1, show=False):
    """key as reports show it: the prefix and a hash of the rest (key names can carry session ids), or the whole key
    with show."""
    if show:
        return key
    prefix = key_prefix(key, separator, depth)
    rest = key[len(prefix):]
    if not rest:
        return prefix
    return "%s%s#%s" % (prefix, separator if rest.startswith(separator) else "",
                        hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:12])


def aggregate(samples, top=10, separator=":", depth=1, show_keys=False):
    """samples: [(node, key str, bytes)]. Returns (top_keys, prefixes): the top biggest keys [{key, bytes, node}]
    and the top prefixes by bytes [{prefix, keys, bytes, max_bytes}]."""
    by_prefix = {}
    for node, key, size in samples:
        p = key_prefix(key, separator, depth)
        e = by_prefix.setdefault(p, dict(prefix=p, keys=0, bytes=0, max_bytes=0))
        e["keys"] += 1
        e["bytes"] += size
        e["max_bytes"] = max(e["max_bytes"], size)
    biggest = sorted(samples, key=lambda s: (-s[2], s[1]))[:top]
    top_keys = [dict(key=shown_key(k, separator, depth, show_keys), bytes=b, node=n) for n, k, b in biggest]
    prefixes = sorted(by_prefix.values(), key=lambda e: (-e["bytes"], e["prefix"]))[:top]
    return top_keys, prefixes


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def scan_memory(settings, per_master_limit=10000, scan_count=500, pattern="*"):
    """Per master: INFO memory and the MEMORY USAGE of up to per_master_limit keys. Returns (nodes, samples, errors,
    unreadable)."""
    masters, unreadable, dummy, dummy2 = keyspace_nodes(settings)
    nodes, samples, errors = [], [], []
    for address in masters:
        node = dict(address=address, used_memory=None, maxmemory=None, used_pct=None, keys=None, sampled=0,
                    sampled_bytes=0, complete=False, error=None)
        nodes.append(node)
        try:
            host, port = parse_address(address)
            client = node_client(settings, host, port, decode_responses=False)
            mem = client.info("memory")
            node["used_memory"] = _int(mem.get("used_memory"))
            node["maxmemory"] = _int(mem.get("maxmemory"))
            if node["used_memory"] is not None and node["maxmemory"]:
                node["used_pct"] = round(100.0 * node["used_memory"] / node["maxmemory"], 2)
            node["keys"] = _int(client.dbsize())
            cursor = 0
            while node["sampled"] < per_master_limit:
                settings.deadline.check("redis_memory_report on %s" % address)
                cursor, keys = client.scan(cursor=cursor, match=pattern, count=scan_count)
                keys = keys[:per_master_limit - node["sampled"]]
                if keys:
                    pipe = client.pipeline(transaction=False)
                    for k in keys:
                        pipe.execute_command("MEMORY", "USAGE", k)
                    for k, size in zip(keys, pipe.execute(raise_on_error=False)):
                        if isinstance(size, int):
                            samples.append((address, printable_key(k), size))
                            node["sampled"] += 1
                            node["sampled_bytes"] += size
                if int(cursor) == 0:
                    node["complete"] = True
                    break
        except P3Error as e:
            node["error"] = e.msg
        except Exception as e:  # pylint: disable=broad-except
            node["error"] = describe_redis_error(e, settings)
        if node["error"]:
            errors.append("%s: %s" % (address, node["error"]))
    return nodes, samples, errors, unreadable


def memory_report(settings, params):
    """The redis_memory_report result (see its RETURN)."""
    t0 = time.monotonic()
    nodes, samples, errors, unreadable = scan_memory(settings, params["per_master_limit"], params["scan_count"],
                                                     params["pattern"])
    top_keys, prefixes = aggregate(samples, params["top"], params["separator"], params["prefix_depth"],
                                   params["show_keys"])
    pcts = [n["used_pct"] for n in nodes if n["used_pct"] is not None]
    worst = max(pcts) if pcts else None
    sampled = sum(n["sampled"] for n in nodes)
    sampled_bytes = sum(n["sampled_bytes"] for n in nodes)
    problems = []
    if worst is not None and worst > params["max_used_pct"]:
        problems.append("a master uses %.1f%% of its maxmemory (> %s%%)" % (worst, params["max_used_pct"]))
    bad = unreadable + [n["address"] for n in nodes if n["error"]]
    if bad:
        problems.append("masters not read: %s" % "; ".join(errors or bad))
    if prefixes:
        big = prefixes[0]
        where = "biggest prefix %s: %d keys, %.1f MiB (%.0f%% of %.1f MiB sampled in %d keys)" % (
            big["prefix"], big["keys"], big["bytes"] / 1048576.0,
            100.0 * big["bytes"] / sampled_bytes if sampled_bytes else 0, sampled_bytes / 1048576.0, sampled)
    else:
        where = "no keys sampled"
    reason = "; ".join(problems + [where])
    return dict(changed=False, healthy=not problems, reason=reason, worst_used_pct=worst, nodes=nodes,
                top_keys=top_keys, prefixes=prefixes, sampled=sampled, sampled_bytes=sampled_bytes,
                complete=all(n["complete"] for n in nodes) and not bad, unreadable=bad, errors=errors,
                seconds=round(time.monotonic() - t0, 3))
