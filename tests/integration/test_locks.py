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

from p3harness import INVENTORY, ROOT, run_playbook

TASK = "Lock"
PW = "p3redis-lab-secret"


def lab_vars():
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


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


def lock(tmp_path, store, resource, check=False, **args):
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
    assert run.rc == 0, run.stdout[-3000:]
    return run.result(TASK)


def holder_in_store(store, resource):
    if store == "redis":
        c = rc()
        return c.get("{p3recovery}:lock:" + resource), c.pttl("{p3recovery}:lock:" + resource)
    return pg_row(resource)


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_one_run_holds_the_other_is_told_who_and_since(lab_up, tmp_path, store):
    res_name = "p3test-%s-%d" % (store, time.monotonic_ns())
    # check mode takes nothing
    res = lock(tmp_path, store, res_name, check=True, run_id="run-a")
    assert res["locked_out"] is False and res["acquired"] is False
    assert not (holder_in_store(store, res_name) or [None])[0]

    a = lock(tmp_path, store, res_name, run_id="run-a", purpose="recover_redis", ttl=60)
    assert a["acquired"] is True and a["changed"] is True and a["locked_out"] is False
    assert "AWX job 4242" in a["owner"] and "(recover_redis)" in a["owner"]
    stored = holder_in_store(store, res_name)
    assert stored[0] and "run-a" in str(stored[0])
    if store == "redis":
        assert 0 < stored[1] <= 60000

    # a second run (and its check mode): locked out, told who and since; the lock is unchanged
    for check in (False, True):
        b = lock(tmp_path, store, res_name, check=check, run_id="run-b", wait=1.5 if not check else 0)
        assert b["locked_out"] is True and b["acquired"] is False and b["changed"] is False
        assert b["reason"].startswith("%s is already being recovered by %s since %s" % (
            res_name, a["owner"], a["holder"]["since"])), b["reason"]
        assert "run-a" in str(holder_in_store(store, res_name)[0])

    # the holder renews (same run id), the other cannot release it, the holder can
    again = lock(tmp_path, store, res_name, run_id="run-a", ttl=60)
    assert again["acquired"] is True and again["renewed"] is True and again["changed"] is False
    assert again["holder"]["since"] == a["holder"]["since"]
    b = lock(tmp_path, store, res_name, state="released", run_id="run-b")
    assert b["released"] is False and "run-a" in str(holder_in_store(store, res_name)[0])
    rel = lock(tmp_path, store, res_name, state="released", run_id="run-a")
    assert rel["released"] is True and rel["changed"] is True
    assert not (holder_in_store(store, res_name) or [None])[0]
    b = lock(tmp_path, store, res_name, run_id="run-b", ttl=60)
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


# ---------------------------------------------------------------- recover_redis.yml with the lock

def failover_calls(addrs):
    """CLUSTER FAILOVER commands every live node has executed (INFO commandstats)."""
    from p3harness import alive, client
    total = 0
    for a in addrs:
        if alive(a):
            stats = client(a).info("commandstats")
            total += stats.get("cmdstat_cluster|failover", {}).get("calls", 0)
    return total


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
    from p3harness import client, lab_nodes, missing_keys, views, write_acked
    from p3harness import base_env, lab_fault
    nodes = lab_nodes()
    keys = write_acked(nodes, 300, "concurrent")
    # Both runs wait for the cluster's verdict on the dead master; Redis would then promote the replica by itself
    # about a second later and neither run would need to act. With cluster-replica-no-failover only a run's own
    # FORCE promotes it, which is the race the lock must settle.
    for addr in nodes:
        client(addr).config_set("cluster-replica-no-failover", "yes")
    try:
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
    finally:
        for addr in nodes:
            try:
                client(addr).config_set("cluster-replica-no-failover", "no")
            except Exception:  # the killed master
                pass
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
