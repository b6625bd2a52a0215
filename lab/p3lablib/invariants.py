"""Invariants of a recovery under load (issue 17 §4), checked on real state: the one place bench/chaos.py and
tests/integration/test_chaos.py take them from.

After a fault round and its recovery (`check(lab, ledger, run_id)`):

- ``redis``: every write acknowledged with WAIT 1 (a replica had it) is still there with its value, and readable;
- ``jobs``: every anchor job the app accepted (202) still exists in BullMQ, and once the queue drained (bounded wait)
  every one has exactly one confirmed receipt row (anchor_receipts.idempotency_key = outbox id; the app
  writes it 'submitted' with the transaction hash before sending) and its digest went on chain
  exactly once (transactions of the anchor wallet scanned from `from_block`): none lost, none anchored twice;
- ``sessions``: every session whose handshake was answered 201 still reads back (none removed by a purge);
- ``serving``: the app answers through the front (load balancer or app): /health 200, a handshake 201 and its read.

Each returns a list of breaches (one line each); ``check`` returns {"ok", "breaches", "evidence"}.
"""
import time

from . import load as loadmod
from .common import http, rpc


def chain_block(lab):
    """The chain's latest block number (None when anvil does not answer)."""
    try:
        return int(rpc(lab.rpc_url, "eth_blockNumber"), 16)
    except Exception:  # noqa: BLE001
        return None


def _db(lab, sql, args=()):
    import psycopg2

    conn = psycopg2.connect(lab.admin_db_url, connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 5000")
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _onchain_counts(lab, digests, from_block):
    """{digest hex (no 0x, lower): number of transactions carrying it as input} over blocks from_block..latest."""
    want = {d.lower().replace("0x", "") for d in digests}
    counts = dict((d, 0) for d in want)
    latest = int(rpc(lab.rpc_url, "eth_blockNumber"), 16)
    for b in range(max(0, int(from_block)), latest + 1):
        block = rpc(lab.rpc_url, "eth_getBlockByNumber", [hex(b), True]) or {}
        for tx in block.get("transactions") or ():
            data = (tx.get("input") or tx.get("data") or "0x")[2:].lower()
            if data in counts:
                counts[data] += 1
    return counts


def redis_breaches(res):
    r = res["redis"]
    out = []
    if r["lost"]:
        out.append("redis: %d of %d acknowledged writes lost (e.g. %s)" % (r["lost"], r["expected"],
                                                                           ", ".join(r["lost_sample"][:3])))
    if r["unreadable"]:
        out.append("redis: %d of %d acknowledged writes unreadable (slot unserved)" % (r["unreadable"], r["expected"]))
    return out


def session_breaches(res):
    s = res["sessions"]
    out = []
    if s["lost"]:
        out.append("sessions: %d of %d valid sessions removed (e.g. %s)" % (s["lost"], s["expected"],
                                                                            ", ".join(s["lost_sample"][:3])))
    if s["unreadable"]:
        out.append("sessions: %d of %d unreadable" % (s["unreadable"], s["expected"]))
    return out


def job_breaches(lab, res, job_ids, from_block, drain_timeout=60.0):
    """Lost jobs (BullMQ hash gone), then - after waiting (bounded) until every job has a receipt - jobs without a
    receipt and digests anchored other than exactly once."""
    j = res["jobs"]
    out = []
    if j["lost"] or j["unreadable"]:
        out.append("jobs: %d of %d accepted anchor jobs lost, %d unreadable" % (j["lost"], j["expected"],
                                                                               j["unreadable"]))
    if not job_ids:
        return out, {"receipts": 0}
    end = time.monotonic() + drain_timeout
    rows = []
    while True:
        try:
            rows = _db(lab, "SELECT o.id::text, o.digest, o.status, count(r.id) FILTER (WHERE r.status = 'confirmed') "
                       "FROM anchor_outbox o LEFT JOIN "
                       "anchor_receipts r ON r.idempotency_key = o.id::text WHERE o.id::text = ANY(%s) "
                       "GROUP BY 1, 2, 3", (list(job_ids),))
        except Exception as e:  # noqa: BLE001
            rows, err = [], e
        else:
            err = None
        if err is None and len(rows) == len(job_ids) and all(r[3] >= 1 for r in rows):
            break
        if time.monotonic() >= end:
            break
        time.sleep(0.5)
    ev = {"outbox_rows": len(rows), "receipts": sum(1 for r in rows if r[3] >= 1)}
    if err is not None:
        out.append("jobs: the database does not answer: %s" % str(err).splitlines()[0][:160])
        return out, ev
    if len(rows) != len(job_ids):
        out.append("jobs: %d of %d accepted jobs have no outbox row" % (len(job_ids) - len(rows), len(job_ids)))
    pending = [r[0] for r in rows if r[3] < 1]
    if pending:
        out.append("jobs: %d of %d accepted jobs not anchored within %ds of the recovery (e.g. %s, status %s)" % (
            len(pending), len(job_ids), drain_timeout, pending[0], next(r[2] for r in rows if r[0] == pending[0])))
    if from_block is not None and rows:
        counts = _onchain_counts(lab, [r[1] for r in rows], from_block)
        ev["onchain"] = sum(1 for c in counts.values() if c == 1)
        twice = [d for d, c in counts.items() if c > 1]
        missing = [r[0] for r in rows if r[3] >= 1 and counts.get(r[1].lower().replace("0x", ""), 0) == 0]
        if twice:
            out.append("jobs: %d digests anchored more than once on chain (e.g. 0x%s)" % (len(twice), twice[0]))
        if missing:
            out.append("jobs: %d receipts without their transaction on chain since block %d (e.g. %s)" % (
                len(missing), from_block, missing[0]))
    return out, ev


def serving_breaches(lab, timeout=5.0):
    """The app really serves through the front: /health 200, a handshake 201 whose session reads back."""
    url = loadmod.lab_front_url(lab)
    code, body = http("GET", url + "/health", timeout=timeout)
    if code != 200:
        return ["serving: %s/health answers %s" % (url, code if code is not None else body)]
    code, body = http("POST", url + "/api/protocol/session/handshake",
                      {"deviceId": "p3chaos-probe", "capabilities": {}}, timeout=timeout)
    sid = body.get("sessionId") if isinstance(body, dict) else None
    if code != 201 or not sid:
        return ["serving: a session handshake through %s answers %s" % (url, code if code is not None else body)]
    code, body = http("GET", url + "/api/protocol/session/%s" % sid, timeout=timeout)
    if code != 200:
        return ["serving: a fresh session does not read back through %s (%s)" % (url, code)]
    return []


def check(lab, ledger_path, run_id, from_block=None, drain_timeout=60.0):
    """Every invariant on real state. Returns {"ok", "breaches": [one line each], "evidence": {...}}."""
    res = loadmod.verify(lab, ledger_path, run_id=run_id)
    want = loadmod.expected([r for r in loadmod.read_ledger(ledger_path) if r.get("run") == run_id])
    breaches = serving_breaches(lab)
    breaches += redis_breaches(res) + session_breaches(res)
    jb, jev = job_breaches(lab, res, want["jobs"], from_block, drain_timeout)
    breaches += jb
    ev = {"redis_acked": res["redis"]["expected"], "redis_present": res["redis"]["present"],
          "sessions": res["sessions"]["expected"], "sessions_present": res["sessions"]["present"],
          "jobs": res["jobs"]["expected"], "jobs_present": res["jobs"]["present"]}
    ev.update(jev)
    ev["load"] = dict((s, {k: v for k, v in res["summary"][s].items() if k != "reasons"}) for s in loadmod.STREAMS)
    return {"ok": not breaches, "breaches": breaches, "evidence": ev}
