# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""P3's durable anchor outbox (``anchor_outbox`` / ``anchor_receipts``): read it and reconcile it the way P3's own
``reconcileOrphaned`` / ``retryDeadLetter`` do (server/anchor/outbox.ts). SQL only; connections come from
postgres_client."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

STATUSES = ["pending", "enqueued", "processing", "completed", "failed", "dead_letter"]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def check_table(name, option):
    if not name or not _IDENT.match(name):
        raise P3Error("%s must be a plain (optionally schema-qualified) table name, got %r" % (option, name))
    return name


def read_outbox(client, table, receipts_table, stale_seconds, ids=(), sample=10):
    """Counts by status, stale processing rows, dead letters, oldest unfinished row, receipts for ids."""
    rows = client.query("SELECT status, count(*)::bigint AS n FROM %s GROUP BY status" % table)
    counts = dict((s, 0) for s in STATUSES)
    for r in rows:
        counts[r["status"]] = int(r["n"])
    stale = client.query(
        "SELECT id::text AS id, extract(epoch FROM now() - heartbeat_at)::float AS heartbeat_age_seconds "
        "FROM %s WHERE status = 'processing' AND heartbeat_at < now() - make_interval(secs => %%s) "
        "ORDER BY heartbeat_at LIMIT %%s" % table, (float(stale_seconds), int(sample)))
    stale_count = client.scalar(
        "SELECT count(*) FROM %s WHERE status = 'processing' AND heartbeat_at < now() - make_interval(secs => %%s)"
        % table, (float(stale_seconds),))
    dead = client.query(
        "SELECT id::text AS id, retry_count, left(last_error, 200) AS last_error FROM %s "
        "WHERE status = 'dead_letter' ORDER BY updated_at LIMIT %%s" % table, (int(sample),))
    oldest = client.scalar(
        "SELECT extract(epoch FROM now() - min(created_at))::float FROM %s "
        "WHERE status IN ('pending', 'enqueued', 'processing', 'failed')" % table)
    errors = client.query(
        "SELECT left(last_error, 200) AS error, count(*)::bigint AS n FROM %s WHERE status = 'failed' "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 5" % table)
    out = dict(counts=counts, stale_processing=int(stale_count or 0), stale_rows=stale, dead_letters=dead,
               oldest_unfinished_age_seconds=round(oldest, 1) if oldest is not None else None,
               failed_errors=[dict(error=e["error"], count=int(e["n"])) for e in errors], receipts=[])
    if ids:
        rec = client.query(
            "SELECT o.id::text AS id, o.status, r.tx_hash, r.block_number, r.status AS receipt_status, "
            "(SELECT count(*) FROM %s r2 WHERE r2.outbox_id = o.id)::int AS receipt_rows "
            "FROM %s o LEFT JOIN %s r ON r.idempotency_key = o.id::text "
            "WHERE o.id::text = ANY(%%s)" % (receipts_table, table, receipts_table), (list(ids),))
        found = dict((r["id"], r) for r in rec)
        out["receipts"] = [found.get(i, dict(id=i, status=None, tx_hash=None, block_number=None,
                                             receipt_status=None, receipt_rows=0)) for i in ids]
    return out


def outbox_verdict(facts, max_unfinished=None):
    c = facts["counts"]
    problems = []
    if facts["stale_processing"]:
        problems.append("%d processing row(s) with a stale heartbeat" % facts["stale_processing"])
    if c["dead_letter"]:
        problems.append("%d dead letter(s)" % c["dead_letter"])
    if c["failed"]:
        top = facts["failed_errors"][0]["error"] if facts["failed_errors"] else None
        problems.append("%d failed%s" % (c["failed"], (" (%s)" % top) if top else ""))
    unfinished = c["pending"] + c["enqueued"] + c["processing"]
    if max_unfinished is not None and unfinished > max_unfinished:
        problems.append("%d unfinished row(s) > %d" % (unfinished, max_unfinished))
    missing = [r["id"] for r in facts["receipts"] if not r.get("tx_hash")]
    dup = [r["id"] for r in facts["receipts"] if (r.get("receipt_rows") or 0) > 1]
    if missing:
        problems.append("%d of %d row(s) without a receipt" % (len(missing), len(facts["receipts"])))
    if dup:
        problems.append("%d row(s) with more than one receipt" % len(dup))
    if problems:
        return False, "; ".join(problems)
    return True, "%d completed, %d unfinished, no stale, failed or dead-letter rows" % (c["completed"], unfinished)


def reconcile(client, table, stale_seconds, retry_dead_letters=False, max_rows=1000, check_mode=False):
    """Stale processing rows -> pending (heartbeat cleared), as reconcileOrphaned; dead letters -> pending with
    retry_count 0 and last_error cleared, as retryDeadLetter (only when asked). Capped at max_rows each.
    Returns dict(stale_reset=[ids], dead_letters_retried=[ids])."""
    interval = float(stale_seconds)
    if check_mode:
        stale = client.query(
            "SELECT id::text AS id FROM %s WHERE status = 'processing' AND heartbeat_at < now() - "
            "make_interval(secs => %%s) ORDER BY heartbeat_at LIMIT %%s" % table, (interval, int(max_rows)))
        dead = client.query(
            "SELECT id::text AS id FROM %s WHERE status = 'dead_letter' ORDER BY updated_at LIMIT %%s" % table,
            (int(max_rows),)) if retry_dead_letters else []
    else:
        stale = client.query(
            "UPDATE %s SET status = 'pending', heartbeat_at = NULL, updated_at = now() WHERE id IN ("
            "SELECT id FROM %s WHERE status = 'processing' AND heartbeat_at < now() - make_interval(secs => %%s) "
            "ORDER BY heartbeat_at LIMIT %%s FOR UPDATE SKIP LOCKED) RETURNING id::text AS id" % (table, table),
            (interval, int(max_rows)))
        dead = client.query(
            "UPDATE %s SET status = 'pending', retry_count = 0, last_error = NULL, updated_at = now() WHERE id IN ("
            "SELECT id FROM %s WHERE status = 'dead_letter' ORDER BY updated_at LIMIT %%s FOR UPDATE SKIP LOCKED) "
            "RETURNING id::text AS id" % (table, table), (int(max_rows),)) if retry_dead_letters else []
    return dict(stale_reset=[r["id"] for r in stale], dead_letters_retried=[r["id"] for r in dead])
