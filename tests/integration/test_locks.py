"""recovery_lock against the lab's real Redis Cluster and PostgreSQL (issue 13 section 5).

The store semantics are asserted on the stores themselves (the key and its PTTL with redis-py, the lock row with
psycopg2): one run holds, a second is locked out with who and since, only the holder releases, a killed run's lock
expires by itself, check mode takes nothing.
"""
import os
import time

import psycopg2
import pytest
import yaml
from redis.cluster import ClusterNode, RedisCluster

from p3harness import INVENTORY, PW, ROOT, failover_calls, lab_vars, run_playbook

TASK = "Lock"


def rc():
    nodes = [n.rsplit(":", 1) for n in lab_vars()["p3_redis_nodes"]]
    return RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in nodes], password=PW,
                        decode_responses=True)


def pg():
    conn = psycopg2.connect(lab_vars()["p3_database_url"])
    conn.autocommit = True
    return conn


def pg_row(resource):
    with pg() as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('p3_recovery_locks') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT run_id, owner, expires_at > now() FROM p3_recovery_locks WHERE resource = %s",
                    (resource,))
        return cur.fetchone()


def lock(tmp_path, store, resource, check=False, rc=0, **args):
    v = lab_vars()
    task = dict(resource=resource, store=store)
    if store == "redis":
        task.update(redis_nodes=v["p3_redis_nodes"], redis_password=v["p3_redis_password"])
    else:
        task.update(dsn=v["p3_database_url"])
    task.update(args)
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python")},
             "tasks": [{"name": TASK, "p3.recovery.recovery_lock": task}]}]
    path = tmp_path / ("lock-%d.yml" % time.monotonic_ns())
    path.write_text(yaml.safe_dump(play))
    run = run_playbook(str(path), check=check, env={"AWX_JOB_ID": "4242"})
    assert (run.rc == 0) == (rc == 0), run.stdout[-3000:]
    return run.result(TASK)


def holder_in_store(store, resource):
    if store == "redis":
        c = rc()
        return c.get("{p3recovery}:lock:" + resource), c.pttl("{p3recovery}:lock:" + resource)
    return pg_row(resource)


# The TTL of the lock the first run holds while the others try: each try is an ansible-playbook run (10-20 s at load
# 14), so a 60 s TTL expired before the holder's renewal and it took the lock afresh (renewed false; local CI).
HOLD_TTL = 900


@pytest.mark.parametrize("store", [pytest.param("redis", marks=pytest.mark.extended), "postgres"])
def test_one_run_holds_the_other_is_told_who_and_since(lab_up, tmp_path, store):
    res_name = "p3test-%s-%d" % (store, time.monotonic_ns())
    # check mode takes nothing
    res = lock(tmp_path, store, res_name, check=True, run_id="run-a")
    assert res["locked_out"] is False and res["acquired"] is False
    assert not (holder_in_store(store, res_name) or [None])[0]

    a = lock(tmp_path, store, res_name, run_id="run-a", purpose="recover_redis", ttl=HOLD_TTL)
    assert a["acquired"] is True and a["changed"] is True and a["locked_out"] is False
    assert "AWX job 4242" in a["owner"] and "(recover_redis)" in a["owner"]
    stored = holder_in_store(store, res_name)
    assert stored[0] and "run-a" in str(stored[0])
    if store == "redis":
        assert 0 < stored[1] <= HOLD_TTL * 1000

    # a second run (and its check mode): locked out, told who and since; the lock is unchanged
    for check in (False, True):
        b = lock(tmp_path, store, res_name, check=check, run_id="run-b", wait=1.5 if not check else 0)
        assert b["locked_out"] is True and b["acquired"] is False and b["changed"] is False
        assert b["reason"].startswith("%s is already being recovered by %s since %s" % (
            res_name, a["owner"], a["holder"]["since"])), b["reason"]
        assert "run-a" in str(holder_in_store(store, res_name)[0])

    # the holder renews (same run id), the other cannot release it, the holder can
    again = lock(tmp_path, store, res_name, run_id="run-a", ttl=HOLD_TTL)
    assert again["acquired"] is True and again["renewed"] is True and again["changed"] is False
    assert again["holder"]["since"] == a["holder"]["since"]
    b = lock(tmp_path, store, res_name, state="released", run_id="run-b")
    assert b["released"] is False and "run-a" in str(holder_in_store(store, res_name)[0])
    rel = lock(tmp_path, store, res_name, state="released", run_id="run-a")
    assert rel["released"] is True and rel["changed"] is True
    assert not (holder_in_store(store, res_name) or [None])[0]
    b = lock(tmp_path, store, res_name, run_id="run-b", ttl=HOLD_TTL)
    assert b["acquired"] is True
    lock(tmp_path, store, res_name, state="released", force=True)
    assert not (holder_in_store(store, res_name) or [None])[0]


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_a_killed_runs_lock_expires_by_itself(lab_up, tmp_path, store):
    res_name = "p3test-ttl-%s-%d" % (store, time.monotonic_ns())
    a = lock(tmp_path, store, res_name, run_id="killed-run", ttl=1)
    assert a["acquired"] is True
    # the killed run never releases; once the TTL is over the next run takes it
    deadline = time.monotonic() + 30
    while True:
        b = lock(tmp_path, store, res_name, run_id="next-run", ttl=60)
        if b["acquired"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b["acquired"] is True and b["renewed"] is False
    assert "next-run" in str(holder_in_store(store, res_name)[0])
    lock(tmp_path, store, res_name, state="released", run_id="next-run")


def ttl_in_store(store, resource):
    """Seconds the stored lock has left (None when there is none)."""
    if store == "redis":
        pttl = rc().pttl("{p3recovery}:lock:" + resource)
        return pttl / 1000.0 if pttl >= 0 else None
    with pg() as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM expires_at - now()) FROM p3_recovery_locks"
                    " WHERE resource = %s AND expires_at > now()", (resource,))
        row = cur.fetchone()
        return float(row[0]) if row else None


@pytest.mark.parametrize("store", [pytest.param("redis", marks=pytest.mark.extended), "postgres"])
def test_renew_extends_only_while_the_token_matches(lab_up, tmp_path, store):
    res_name = "p3test-renew-%s-%d" % (store, time.monotonic_ns())
    assert lock(tmp_path, store, res_name, run_id="run-a", ttl=HOLD_TTL)["acquired"] is True
    # another run's token: the module fails in one line and the lock keeps its TTL and holder (a renewal would have
    # set 600; what is left of HOLD_TTL is more while the machine takes under 300 s for these runs)
    b = lock(tmp_path, store, res_name, rc=2, state="renewed", run_id="run-b", ttl=600)
    assert b["lost"] is True and b["renewed"] is False
    assert b["msg"].startswith("recovery lock of %s (store %s): lost the lock of %s: %s is already being recovered"
                               % (res_name, store, res_name, res_name)) and "\n" not in b["msg"], b["msg"]
    assert "run-a" in str(holder_in_store(store, res_name)[0])
    assert 600 < ttl_in_store(store, res_name) <= HOLD_TTL
    # the holder's token: extended, not a change
    a = lock(tmp_path, store, res_name, state="renewed", run_id="run-a", ttl=600)
    assert a["renewed"] is True and a["lost"] is False and a["changed"] is False
    assert 500 < ttl_in_store(store, res_name) <= 600
    # released (or expired): nothing to renew, the run stops; nothing is written back
    lock(tmp_path, store, res_name, state="released", run_id="run-a")
    gone = lock(tmp_path, store, res_name, rc=2, state="renewed", run_id="run-a", ttl=600)
    assert gone["lost"] is True and "expired or was released" in gone["msg"]
    assert ttl_in_store(store, res_name) is None


# ---------------------------------------------------------------- recover_redis.yml with the lock

def test_recover_redis_locked_by_another_run_does_nothing(healthy_lab, tmp_path, report_dir):
    from p3harness import FAILOVER_TASK, lab_nodes, missing_keys, views, write_acked
    from p3harness import recover_redis as recover
    from p3harness import lab_fault
    nodes = lab_nodes()
    keys = write_acked(nodes, 200, "locked")
    did = lab_fault("redis-master-down")
    live = [a for a in nodes if a != did["node"]]
    calls = failover_calls(live)
    other = lock(tmp_path, "postgres", "redis-cluster", run_id="alert-run-1", purpose="alert-triggered", ttl=300)
    assert other["acquired"] is True
    try:
        for check in (True, False):
            run, report = recover(report_dir, check=check)
            assert run.rc == 0, run.stdout[-3000:]
            assert report["locked_out"] is True and report["timeline"] == [] and report["changed"] is False
            assert report["reason"].startswith("redis-cluster is already being recovered by %s since %s" % (
                other["owner"], other["holder"]["since"])), report["reason"]
            assert run.results(FAILOVER_TASK) == []
            assert "already being recovered by" in run.stdout
        assert failover_calls(live) == calls  # nobody sent CLUSTER FAILOVER
        assert pg_row("redis-cluster")[0] == "alert-run-1"  # the other run's lock is untouched
    finally:
        lock(tmp_path, "postgres", "redis-cluster", state="released", run_id="alert-run-1")
    # the other run is gone: the next run goes on (it promotes the replica, unless the cluster's own failover after
    # cluster-node-timeout did it meanwhile), leaves the cluster serving and releases its own lock
    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert not report.get("locked_out") and report["healthy"] is True, report["reason"]
    assert run.result("Decide - what to do")
    assert failover_calls(live) - calls == len(run.results(FAILOVER_TASK)) <= 1
    assert pg_row("redis-cluster") is None
    assert missing_keys(nodes, keys) == []
    assert len(views(live)) == len(live)


def test_two_concurrent_recover_redis_one_acts(healthy_lab, tmp_path):
    import subprocess
    import json as _json
    import glob
    from p3harness import lab_nodes, missing_keys, no_replica_failover, views, write_acked
    from p3harness import base_env, lab_fault
    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "concurrent")
    # Both runs wait for the cluster's verdict on the dead master; Redis would then promote the replica by itself
    # about a second later and neither run would need to act. With cluster-replica-no-failover only a run's own
    # FORCE promotes it, which is the race the lock must settle.
    with no_replica_failover(nodes):
        did = lab_fault("redis-master-down")
        dead_id = did["node_id"]
        live = [a for a in nodes if a != did["node"]]
        calls = failover_calls(live)
        dirs = [str(tmp_path / "run-a"), str(tmp_path / "run-b")]
        procs = [subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", INVENTORY,
                                   os.path.join(ROOT, "playbooks", "recover_redis.yml"), "-e", "p3_report_dir=" + d],
                                  cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
                 for d in dirs]
        outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = []
    for d in dirs:
        files = glob.glob(os.path.join(d, "recover_redis-*.json"))
        assert len(files) == 1, (d, files)
        with open(files[0]) as f:
            reports.append(_json.load(f))
    acted = [r for r in reports if any(e["action"] == "cluster failover force" for e in r["timeline"])]
    assert len(acted) == 1, [r.get("reason") for r in reports]
    idle = [r for r in reports if r is not acted[0]][0]
    # the other run was locked out, or (started after the first released) found nothing to do
    assert idle.get("locked_out") is True or (idle["changed"] is False and idle["timeline"] == []), idle
    assert failover_calls(live) == calls + 1  # exactly one CLUSTER FAILOVER sent, by one run
    promoted = [n for n in views(live)[live[0]].values() if n["role"] == "master" and n["slots"] and
                n["id"] != dead_id]
    assert len(promoted) == 3
    assert missing_keys(nodes, keys) == []
    assert pg_row("redis-cluster") is None  # released by the run that took it


@pytest.mark.parametrize("store,args", [
    ("postgres", {"dsn": "postgresql://p3admin:s3cret-lock-pw@127.0.0.1:1/p3", "connect_timeout": 2}),
    ("redis", {"redis_nodes": ["127.0.0.1:1"], "redis_password": "s3cret-lock-pw", "redis_connect_timeout": 1}),
])
def test_unreachable_store_fails_in_one_line(tmp_path, store, args):
    task = dict(resource="redis-cluster", store=store, run_id="r1")
    task.update(args)
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python")},
             "tasks": [{"name": TASK, "p3.recovery.recovery_lock": task}]}]
    path = tmp_path / "unreachable.yml"
    path.write_text(yaml.safe_dump(play))
    run = run_playbook(str(path), verbosity=3)
    assert run.rc != 0
    msg = run.result(TASK)["msg"]
    assert msg.startswith("recovery lock of redis-cluster (store %s): " % store), msg
    assert "127.0.0.1:1" in msg and "refused" in msg and "\n" not in msg, msg
    assert "s3cret-lock-pw" not in run.stdout and "Traceback" not in run.stdout


@pytest.mark.parametrize("resource", ["anchor-queue", "wallet"])
def test_recover_anchor_locked_funds_and_retries_nothing(healthy_lab, tmp_path, report_dir, resource):
    """Another run holds the queue (or the wallet): no funding transaction, no job moved."""
    from p3harness import FUNDER, PREFIX, balance
    from p3harness import anchor_redis as redis
    from p3harness import nonce as chain_nonce
    from p3harness import recover_anchor as recover
    from p3harness import lab_fault
    wallet = lab_vars()["p3_anchor_wallet"]
    name = resource if resource == "anchor-queue" else "wallet-" + wallet.lower()
    lab_fault("wallet-empty")
    r = redis()
    failed = r.zcard(PREFIX + "failed")
    funder_nonce = chain_nonce(FUNDER)
    other = lock(tmp_path, "postgres", name, run_id="operator-2", purpose="recover_anchor", ttl=300)
    try:
        run, report = recover(report_dir)
        assert run.rc == 0, run.stdout[-3000:]
        assert report["locked_out"] is True and report["reason"].startswith(
            "%s is already being recovered by %s" % (name, other["owner"])), report["reason"]
        assert chain_nonce(FUNDER) == funder_nonce and balance(wallet) == 0  # nothing sent
        assert r.zcard(PREFIX + "failed") == failed  # nothing retried
        assert pg_row(name)[0] == "operator-2"
    finally:
        lock(tmp_path, "postgres", name, state="released", run_id="operator-2")
    # the locked-out run released nothing of the other run's and left no lock of its own
    assert pg_row("anchor-queue") is None and pg_row("wallet-" + wallet.lower()) is None


# ---------------------------------------------------------------- the lock covers the restart and the verification

def _held_until_flag_playbook(tmp_path, reached, flag):
    """recover_database.yml with its restart play replaced by a pause: play 1 diagnoses and acts (the role, verify
    deferred), play 2 says it got there and waits for a flag file (an app restart that takes its time), play 3 is
    the role's verification."""
    interp = {"ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python")}
    # the connection settings, as the shipped playbooks pass them (role p3.recovery.connection)
    connection = {"group/p3.recovery.%s" % g: "{{ p3_%s_module_defaults }}" % g
                  for g in ("redis", "postgres", "http", "ethereum")}
    book = [
        {"name": "run A - diagnose, decide, act", "hosts": "localhost", "gather_facts": False, "vars": interp,
         "module_defaults": connection, "roles": [{"role": "p3.recovery.database", "vars": {"p3_db_defer_verify": True}}]},
        {"name": "run A - the restart play (a slow one)", "hosts": "localhost", "gather_facts": False, "vars": interp,
         "tasks": [{"name": "got here", "ansible.builtin.copy": {"dest": reached, "content": "x"}},
                   {"name": "restarting", "ansible.builtin.wait_for": {"path": flag, "timeout": 240}}]},
        {"name": "run A - verify and report", "hosts": "localhost", "gather_facts": False, "vars": interp,
         "module_defaults": connection, "tasks": [{"name": "verify", "ansible.builtin.import_role": {"name": "p3.recovery.database",
                                                                       "tasks_from": "verify"}}]},
    ]
    path = tmp_path / "run-a.yml"
    path.write_text(yaml.safe_dump(book))
    return str(path)


def test_a_second_run_is_refused_while_the_first_restarts_and_verifies(healthy_lab, tmp_path):
    import glob
    import json as _json
    import subprocess
    from p3harness import base_env
    reached, flag = str(tmp_path / "reached"), str(tmp_path / "flag")
    dirs = [str(tmp_path / "run-a"), str(tmp_path / "run-b")]
    first = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", INVENTORY,
                              _held_until_flag_playbook(tmp_path, reached, flag), "-e", "p3_report_dir=" + dirs[0]],
                             cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(reached) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.path.exists(reached), first.communicate(timeout=60)[0][-3000:]
        held = pg_row("database")
        assert held and held[2] is True, held  # still held by the first run while it restarts
        run = run_playbook("recover_database.yml", extravars={"p3_report_dir": dirs[1]})
        assert run.rc == 0, run.stdout[-3000:]
        files = glob.glob(os.path.join(dirs[1], "recover_database-*.json"))
        assert len(files) == 1, files
        with open(files[0]) as f:
            second = _json.load(f)
        assert second["locked_out"] is True and second["changed"] is False, second
        assert second["reason"].startswith("database is already being recovered by %s" % held[1]), second["reason"]
        assert pg_row("database")[0] == held[0]  # the second run left the first run's lock alone
    finally:
        open(flag, "w").close()
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]
    files = glob.glob(os.path.join(dirs[0], "recover_database-*.json"))
    assert len(files) == 1 and "PLAY [run A - verify and report]" in out, out[-3000:]
    assert pg_row("database") is None  # released after the verification


def test_a_lost_lock_stops_the_run_before_its_next_destructive_step(healthy_lab, tmp_path, report_dir):
    """The sessions lock is taken by another run while this one diagnoses (as after an expiry): the renew before
    the purge fails in one line, nothing is purged, the other run's lock stays."""
    import threading
    from p3harness import lab_fault, snapshot
    from p3harness import recover_sessions as recover
    corrupt = set(("session:" + i).encode() for i in lab_fault("sessions-corrupt")["ids"])
    assert corrupt <= set(snapshot())
    stolen = {}
    stop = threading.Event()

    def steal():
        while not stop.is_set():
            row = pg_row("sessions")
            if row and row[0] != "thief-run":
                with pg() as conn, conn.cursor() as cur:
                    cur.execute("UPDATE p3_recovery_locks SET run_id = 'thief-run', owner = 'thief@ctl', since = now(),"
                                " expires_at = now() + interval '300 seconds' WHERE resource = 'sessions'")
                stolen["from"] = row[0]
                return
            time.sleep(0.01)
    thief = threading.Thread(target=steal, daemon=True)
    thief.start()
    try:
        run, report = recover(report_dir, str(tmp_path / "backups"))
        stop.set()
        thief.join(5)
        assert stolen.get("from"), "the run never took the sessions lock"
        assert run.rc != 0, run.stdout[-3000:]
        assert "lost the lock of sessions: sessions is already being recovered by thief@ctl" in report["reason"], \
            report["reason"]
        assert run.results("Act - purge sessions (SCAN per master, bounded pages, backup of every removed key)") == []
        assert corrupt <= set(snapshot())  # nothing purged
        assert pg_row("sessions")[0] == "thief-run"  # the other run's lock is not released by this one
    finally:
        stop.set()
        lock(tmp_path, "postgres", "sessions", state="released", force=True)
