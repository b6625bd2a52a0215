"""Bench entry upstream_recovery: per fault on P3 Protocol's own server (the upstream lab, docs/lab.md "App mode
upstream"), the time from injection until P3 really works again, three ways in the same run:
  playbook  - the matching playbook with -e @profiles/p3-upstream.yml;
  runbook   - the runbook's own commands (../shared/seed/FAILURE_RECOVERY.md) as written, with its environment
              variables from the inventory; "restart application (adapt to your process manager)" is the lab's
              supervisorctl restart, as the runbook says. A command that cannot run is reported with its exit code;
  nothing   - no action, a bounded wait (BENCH_UPSTREAM_NOTHING_S, 90 s): does P3 heal itself, and when.
"Works" is functional, polled every 4 s by a watcher (each poll a new check): WORKS_PARALLEL (8) concurrent
GET /api/system/health all 200 with the database healthy (each runs SELECT 1 on P3's pool: one request alone may
still get an idle pooled connection while the server refuses new ones, P3 under users needs its pool to grow), and
a new anchor job through P3's SDK route (DB-backed: every /api/* request inserts telemetry first) reaches
`completed` within 5 s; for wallet-empty also one checkpoint anchored on chain. The runbook's `cast` is the lab's
(node_modules/.bin, put first on PATH); its `cast send` names no signer, so the environment carries one the way
an operator's would: ETH_KEYSTORE/ETH_PASSWORD, a keystore of the lab's funding account written for the round and
removed after it (without a signer `cast send` fails: "Error accessing local wallet").
Every round: heal, inject, act, watch until it works (bounded: BENCH_UPSTREAM_AFTER_S, 60 s, after the action),
heal. Faults: BENCH_UPSTREAM_FAULTS (comma list; default all six). Needs the upstream lab up (P3LAB_DIR and
P3LAB_BASE_PORT of it, e.g. make integration-upstream's .state/lab-upstream at base + 700). Not part of make test.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "lab"))

WORKS_PARALLEL = int(os.environ.get("BENCH_UPSTREAM_PARALLEL", "8"))
FAULTS = ["db-exhaustion", "redis-outage", "redis-master-down", "app-down", "anchor-backlog", "wallet-empty"]
FAUCET_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil account 0 (lab only)
PLAYBOOK = {
    "db-exhaustion": ("recover_database.yml", {"p3_db_min_age_seconds": 0}),
    "redis-outage": ("recover_all.yml", {}),
    "redis-master-down": ("recover_all.yml", {}),
    "app-down": ("restart_app.yml", {}),
    "anchor-backlog": ("recover_anchor.yml", {}),
    "wallet-empty": ("recover_anchor.yml", {"p3_anchor_funding_key": FAUCET_KEY}),
}
RESTART = "$SUPERVISORCTL -c $SUPERVISOR_CONF restart p3upstream  # runbook: npm run dev (adapt to your process manager)"
# The runbook's recovery commands for the scenario each fault shows up as (FAILURE_RECOVERY.md), as written.
RUNBOOK = {
    # 4. Database Connection Exhaustion
    "db-exhaustion": [
        "psql $DATABASE_URL -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE duration > interval "
        "'5 minutes';\"",
        RESTART,
    ],
    # Redis down: symptoms of 5. Redis Cluster Partition
    "redis-master-down": [
        "redis-cli -u $REDIS_URL CLUSTER NODES | grep fail",
        "redis-cli -u $REDIS_URL CLUSTER FAILOVER",
        "redis-cli -u $REDIS_URL CLUSTER FIX",
    ],
    # Redis back, P3's clients gave up: what shows is 3. Anchor Queue Backup (jobs not processed)
    "redis-outage": [
        "cast balance $ANCHOR_WALLET --rpc-url $RPC_URL",
        "redis-cli -u $REDIS_URL LRANGE \"bull:anchor:failed\" 0 -1 | xargs -I {} redis-cli RPUSH "
        "\"bull:anchor:waiting\" {}",
        RESTART,
    ],
    "app-down": [RESTART],
    "anchor-backlog": [
        "cast balance $ANCHOR_WALLET --rpc-url $RPC_URL",
        "redis-cli -u $REDIS_URL LRANGE \"bull:anchor:failed\" 0 -1 | xargs -I {} redis-cli RPUSH "
        "\"bull:anchor:waiting\" {}",
        "export ANCHOR_CONCURRENCY=128",
        RESTART,
    ],
    "wallet-empty": [
        "cast balance $ANCHOR_WALLET --rpc-url $RPC_URL",
        "cast send $ANCHOR_WALLET --value 0.1ether --rpc-url $RPC_URL",
        "redis-cli -u $REDIS_URL LRANGE \"bull:anchor:failed\" 0 -1 | xargs -I {} redis-cli RPUSH "
        "\"bull:anchor:waiting\" {}",
        RESTART,
    ],
}


def _run():
    """bench/run.py's helpers (it imports this file, so not at import time)."""
    main = sys.modules.get("__main__")
    if main is not None and hasattr(main, "lab_vars") and hasattr(main, "ENTRIES"):
        return main
    import run  # noqa: E402
    return run


def _lab():
    from p3lablib.common import Lab

    lab = Lab()
    if lab.app_mode != "upstream":
        raise SystemExit("upstream_recovery needs the upstream lab: P3LAB_DIR/P3LAB_BASE_PORT of `p3lab up --app "
                         "upstream` (e.g. .state/lab-upstream at base + 700)")
    return lab


def works(lab, chain=False):
    """P3 really works: WORKS_PARALLEL concurrent DB-backed health checks, a new anchor job completed (and, with
    chain, an on-chain checkpoint). (ok, why)."""
    from p3lablib import upstream

    bad = upstream.concurrent_health(lab, WORKS_PARALLEL, timeout=5)
    if bad:
        return False, "%d/%d concurrent system health failed (%s)" % (len(bad), WORKS_PARALLEL, bad[0][0])
    # every /api/* request of P3 first inserts telemetry: the SDK route's 200 is DB-backed too
    code, body = upstream.submit_batch(lab, [{"appId": "bench-works", "event": "w"}], timeout=3)
    ids = (body or {}).get("jobIds") if isinstance(body, dict) else None
    if code != 200 or not ids:
        return False, "sdk anchor/batch %s" % code
    c = upstream.redis_client(lab, timeout=2)
    end = time.monotonic() + 5
    while c.zscore("bull:anchor-batch:us:completed", ids[0]) is None:
        if time.monotonic() > end:
            return False, "new job not completed in 5 s"
        time.sleep(0.2)
    if chain:
        code, body = upstream.anchor_checkpoint(lab, kind="bench", timeout=10)
        if code != 200 or not (isinstance(body, dict) and body.get("onChain") is True):
            return False, "checkpoint not on chain"
    return True, "works"


class Watcher(object):
    """Polls works() from t0 until it passes or stop(); .t = seconds from t0 to the first pass."""

    def __init__(self, lab, t0, chain):
        self.lab, self.t0, self.chain, self.t, self.last = lab, t0, chain, None, None
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)
        self._th.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                ok, self.last = works(self.lab, self.chain)
            except Exception as e:  # noqa: BLE001 - P3 or its Redis down
                ok, self.last = False, str(e).splitlines()[0][:80]
            if ok:
                self.t = time.perf_counter() - self.t0
                return
            self._stop.wait(4.0)

    def wait(self, seconds):
        self._th.join(max(0.0, seconds))
        return self.t

    def stop(self):
        self._stop.set()
        self._th.join(15)


def _playbook(lab, fault, report_dir):
    from p3lablib import upstream

    name, extra = PLAYBOOK[fault]
    with open(os.path.join(ROOT, "profiles", "p3-upstream.yml")) as f:
        values = yaml.safe_load(f)
    values.update({"p3_min_peers": 0, "p3_mesh_min_peers": 0, "p3_report_dir": report_dir,
                   "p3_anchor_canary_token": upstream.wallet_token()})
    values.update(extra)
    fd, path = tempfile.mkstemp(prefix="bench-upstream-", suffix=".yml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    try:
        r = _run()
        proc = subprocess.run([os.path.join(r.BIN, "ansible-playbook"), "-i", r.INVENTORY,
                               os.path.join("playbooks", name), "-e", "@" + path], capture_output=True, text=True,
                              env=r.env(), cwd=ROOT, timeout=900)
    finally:
        os.unlink(path)
    if proc.returncode == 0:
        return "%s rc=0" % name
    msgs = re.findall(r'"msg": "([^"]{1,160})', proc.stdout)
    return "%s rc=%d (%s)" % (name, proc.returncode, msgs[-1] if msgs else proc.stdout.strip()[-120:])


def _runbook(lab, fault):
    v = _run().lab_vars()
    with open(_run().INVENTORY) as f:
        host = yaml.safe_load(f)["all"]["children"]["p3_app"]["hosts"]["p3-lab-app"]
    from p3lablib.common import FAUCET_KEY, REDIS_PASSWORD

    e = _run().env()
    # the runbook's cast: the lab's foundry build (npm @foundry-rs/cast in node_modules/.bin)
    e["PATH"] = os.path.join(ROOT, "node_modules", ".bin") + os.pathsep + e["PATH"]
    e.update({"DATABASE_URL": v["p3_app_database_url"],
              "REDIS_URL": "redis://:%s@%s" % (REDIS_PASSWORD, v["p3_redis_nodes"][0]),
              "RPC_URL": v["p3_rpc_url"], "ANCHOR_WALLET": v["p3_anchor_wallet"],
              "SUPERVISORCTL": host["p3_supervisorctl"], "SUPERVISOR_CONF": host["p3_supervisor_conf"]})
    from eth_account import Account

    signer = tempfile.mkdtemp(prefix="bench-signer-")
    password = os.urandom(16).hex()
    with open(os.path.join(signer, "key.json"), "w") as f:
        json.dump(Account.encrypt(FAUCET_KEY, password, iterations=2), f)
    with open(os.path.join(signer, "password"), "w") as f:
        f.write(password)
    e.update({"ETH_KEYSTORE": os.path.join(signer, "key.json"), "ETH_PASSWORD": os.path.join(signer, "password")})
    try:
        return _runbook_commands(fault, e)
    finally:
        shutil.rmtree(signer, ignore_errors=True)


def _runbook_commands(fault, e):
    out = []
    for cmd in RUNBOOK[fault]:
        try:
            proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=e, cwd=ROOT, timeout=120)
            err = [line for line in proc.stderr.splitlines() if line.strip()]
            out.append(str(proc.returncode) if proc.returncode == 0 or not err
                       else "%d (%s)" % (proc.returncode, err[-1].strip()[:70]))
        except subprocess.TimeoutExpired:
            out.append("timeout")
    return "runbook commands rc %s" % ", ".join(out)


class Traffic(object):
    """P3 with users: one batch through its SDK route every 3 s. P3's worker stops taking jobs once it has idled
    ~5 s (docs/runbook-deviations.md row 29), so an idle P3 never "works": every round starts from a busy one."""

    def __init__(self, lab):
        from p3lablib import upstream

        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                try:
                    upstream.submit_batch(lab, [{"appId": "bench-traffic", "event": "t"}], timeout=3)
                except Exception:  # noqa: BLE001 - P3 down or restarting
                    pass
                self._stop.wait(3.0)

        self._th = threading.Thread(target=loop, daemon=True)
        self._th.start()

    def stop(self):
        self._stop.set()
        self._th.join(10)


def _working_p3(lab):
    """Heal, restart P3 under traffic, and wait until it works (bounded)."""
    from p3lablib import supervisor, upstream
    from p3lablib.common import wait_until

    _run().lab("heal")
    supervisor.ctl(lab, "restart", upstream.PROGRAM, timeout=60)
    upstream.wait_ready(lab, 120)
    if not wait_until(lambda: works(lab)[0], 60, 1.0):
        raise SystemExit("P3 does not work after heal + restart under traffic: %s" % (works(lab),))


def _round(lab, fault, how, report_dir, after_s, nothing_s):
    """Traffic keeps P3's worker alive until the injection; from then on the watcher's polls are the traffic."""
    r = _run()
    traffic = Traffic(lab)
    try:
        _working_p3(lab)
    finally:
        traffic.stop()
    r.lab("fault", fault)
    t0 = time.perf_counter()
    w = Watcher(lab, t0, chain=fault == "wallet-empty")
    try:
        if how == "nothing":
            detail = "waited %d s" % nothing_s
            t = w.wait(nothing_s)
        else:
            detail = _playbook(lab, fault, report_dir) if how == "playbook" else _runbook(lab, fault)
            act = time.perf_counter() - t0
            t = w.wait(after_s)
            detail += ", action %.1f s" % act
    finally:
        last = w.last
        w.stop()
    return {"seconds": round(t, 1) if t is not None else None,
            "detail": detail + ("" if t is not None else "; does not recover (last check: %s)" % last)}


def bench_upstream_recovery():
    lab = _lab()
    faults = [f for f in os.environ.get("BENCH_UPSTREAM_FAULTS", ",".join(FAULTS)).split(",") if f]
    after_s = float(os.environ.get("BENCH_UPSTREAM_AFTER_S", "60"))
    nothing_s = float(os.environ.get("BENCH_UPSTREAM_NOTHING_S", "90"))
    report_dir = tempfile.mkdtemp(prefix="bench-reports-")
    rows = []
    try:
        for fault in faults:
            row = {"fault": fault}
            for how in ("playbook", "runbook", "nothing"):
                row[how] = _round(lab, fault, how, report_dir, after_s, nothing_s)
                print("upstream_recovery %s %s: %s" % (fault, how, row[how]), file=sys.stderr, flush=True)
            p, b = row["playbook"]["seconds"], row["runbook"]["seconds"]
            row["ratio_playbook_over_runbook"] = round(p / b, 2) if p and b else None
            rows.append(row)
    finally:
        _run().lab("heal")
    return {"entry": "upstream_recovery",
            "what": "P3's own server: injection -> really works again (DB-backed API + a new anchor job completes) "
                    "with the playbook, the runbook's commands as written, and doing nothing (%d s)" % nothing_s,
            "rows": rows, "after_action_wait_s": after_s}
