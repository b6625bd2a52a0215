"""Helpers of the upstream integration tests: the lab's own code for P3's clients (lab/p3lablib/upstream.py), so the
tests talk to P3's real services (redis-py on P3's Redis, psycopg2 on P3's database, JSON-RPC on anvil, HTTP on P3)."""
import os
import sys
import time

from p3harness import ROOT

sys.path.insert(0, os.path.join(ROOT, "lab"))

from p3lablib import upstream  # noqa: E402
from p3lablib.common import Lab, rpc  # noqa: E402
from p3lablib.upstream_status import worker_client_name  # noqa: E402

__all__ = ["Lab", "rpc", "upstream", "worker_client_name", "lab_now", "wait_for", "p3_query", "job_state"]


def lab_now():
    """The Lab of this session (P3LAB_DIR / P3LAB_BASE_PORT of the environment, mode from its mode.json)."""
    return Lab()


def wait_for(pred, timeout, interval=0.25):
    """Poll pred() until it returns a truthy value (returned) or the timeout passes (returns the last value)."""
    end = time.monotonic() + timeout
    val = None
    while True:
        try:
            val = pred()
        except Exception:  # noqa: BLE001 - not ready yet
            val = None
        if val or time.monotonic() > end:
            return val
        time.sleep(interval)


def p3_query(lab, sql, args=()):
    """Rows of a query on P3's database (as the admin role)."""
    conn = upstream.connect(lab, timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def job_state(lab, job_id):
    """BullMQ state of a job of P3's anchor queue, read from P3's Redis: completed, failed, wait, active, ..."""
    c = upstream.redis_client(lab, timeout=2)
    base = "%s:%s" % (upstream.BULL_PREFIX, upstream.QUEUE)
    for state in ("completed", "failed", "delayed", "prioritized"):
        if c.zscore("%s:%s" % (base, state), job_id) is not None:
            return state
    for state in ("wait", "active", "paused"):
        if job_id in c.lrange("%s:%s" % (base, state), 0, -1):
            return state
    return None
