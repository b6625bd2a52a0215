"""Every timeout is a total deadline, whatever the peer does (issue 14 §3), and process_env never breaks the
process manager (issue 14 §2).

Peers: a SIGSTOPped postmaster, an HTTP server that dribbles its body a byte every 0.5 s, a server that accepts
and never answers, a pathological regular expression on a long log line. Each module must come back failed with
one line naming the target and the cause. The subprocess timeout of each run is a hang guard (documented timeout
plus a generous margin for ansible-playbook itself), not a wall-clock assertion.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import threading
import time

import psycopg2
import pytest

from p3harness import INVENTORY, LAB_DIR, ROOT, lab_status, run_playbook

TIMEOUT = 2  # the documented timeout every module gets here
# Hang guards, not wall-clock assertions. Each task gets Ansible's own task timeout, TASK_GUARD: a module stuck past
# its deadline fails that task (the message then names no target and no "timed out", so the test fails naming the
# task), far below the old behaviour (minutes / hours per module) and far above a module bounded by a few seconds
# plus its start on a loaded machine (5-9 s measured with five integration passes on 2 cores; one official CI run
# got 4 of 13 tasks through in 108 s). The run's guard adds GUARD for ansible-playbook itself.
TASK_GUARD = 60
GUARD = 30
DRIBBLE_PORT = int(os.environ.get("P3LAB_BASE_PORT", "17000")) + 91
SILENT_PORT = int(os.environ.get("P3LAB_BASE_PORT", "17000")) + 92


def finished(run):
    assert run.status != "timeout", "hung past the guard (task, seconds: %s):\n%s" % (
        run.durations(), run.stdout[-3000:])
    return run


def guard(tasks):
    """The hang guard of one run of these tasks (each one is cut at TASK_GUARD by Ansible itself)."""
    return GUARD + len(tasks) * TASK_GUARD


def one_line_failure(run, task):
    res = run.result(task)
    assert "timedout" not in res, "%s was cut by the hang guard (%ss), its own deadline never ended it: %s" % (
        task, TASK_GUARD, run.durations())
    assert run.failed(task), res
    msg = res.get("msg", "")
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def lab_vars():
    import yaml
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


def admin_dsn():
    return lab_vars()["p3_database_url"]


def postmaster_pid():
    for path in glob.glob(os.path.join(LAB_DIR, "**", "postmaster.pid"), recursive=True):
        with open(path) as f:
            return int(f.readline().strip())
    raise AssertionError("no postmaster.pid under %s" % LAB_DIR)


def write_play(tmp_path, tasks, name="play.yml"):
    play = [dict(hosts="localhost", gather_facts=False, tasks=[dict(t, timeout=TASK_GUARD) for t in tasks])]
    path = tmp_path / name
    path.write_text(json.dumps(play))  # JSON is YAML
    return str(path)


# ------------------------------------------------------------------------------------------ misbehaving peers

class Server(object):
    """A TCP server in a thread: 'dribble' answers HTTP 200 then sends its body one byte every 0.5 s,
    'silent' accepts and never answers."""

    def __init__(self, port, mode):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.mode = mode
        self.stop = threading.Event()
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, dummy = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(conn)
            if self.mode == "dribble":
                threading.Thread(target=self.dribble, args=(conn,), daemon=True).start()

    def dribble(self, conn):
        try:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for dummy in range(1000):
                if self.stop.is_set():
                    break
                conn.sendall(b" ")
                time.sleep(0.5)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


@pytest.fixture
def peers():
    servers = [Server(DRIBBLE_PORT, "dribble"), Server(SILENT_PORT, "silent")]
    yield
    for s in servers:
        s.close()


def test_dribbling_and_silent_peers_cost_one_timeout(lab_up, peers, tmp_path):
    dribble = "http://127.0.0.1:%d" % DRIBBLE_PORT
    silent = "http://127.0.0.1:%d" % SILENT_PORT
    tasks = [
        dict(name="app dribble", ignore_errors=True, **{"p3.recovery.app_probe": dict(
            url=dribble, timeout=TIMEOUT, fail_on_unhealthy=True)}),
        dict(name="rpc dribble", ignore_errors=True, **{"p3.recovery.chain_probe": dict(
            rpc_url=dribble, rpc_timeout=TIMEOUT, fail_on_unhealthy=True)}),
        dict(name="app silent", ignore_errors=True, **{"p3.recovery.app_probe": dict(
            url=silent, timeout=TIMEOUT, fail_on_unhealthy=True)}),
        dict(name="rpc silent", ignore_errors=True, **{"p3.recovery.chain_probe": dict(
            rpc_url=silent, rpc_timeout=TIMEOUT, fail_on_unhealthy=True)}),
        dict(name="pg silent", ignore_errors=True, **{"p3.recovery.postgres_probe": dict(
            db_host="127.0.0.1", db_port=SILENT_PORT, db_user="x", db_name="x", connect_timeout=TIMEOUT,
            fail_on_unhealthy=True)}),
        dict(name="redis silent", ignore_errors=True, **{"p3.recovery.redis_probe": dict(
            redis_url="redis://127.0.0.1:%d" % SILENT_PORT, redis_socket_timeout=TIMEOUT,
            redis_connect_timeout=TIMEOUT, fail_on_unhealthy=True)}),
    ]
    # six tasks, each bounded by its timeout (app_probe's two paths: two); "timed out" in each message below proves
    # each deadline fired (a task cut by the hang guard fails one_line_failure).
    run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
    for task in ("app dribble", "rpc dribble", "app silent", "rpc silent", "pg silent", "redis silent"):
        msg = one_line_failure(run, task)
        assert "timed out" in msg, (task, msg)
        assert str(DRIBBLE_PORT if "dribble" in task else SILENT_PORT) in msg, (task, msg)


def test_frozen_postmaster_query_and_connect(lab_up, tmp_path):
    """The probe's backend waits on a lock; then the postmaster is frozen: the query timeout must not wait for
    psycopg2's cancel() (which needs the postmaster). A new connection to the frozen postmaster is bounded too."""
    dsn = admin_dsn()
    locker = psycopg2.connect(dsn)
    pid = postmaster_pid()
    stopped = False
    try:
        cur = locker.cursor()
        cur.execute("LOCK TABLE anchor_outbox IN ACCESS EXCLUSIVE MODE")
        tasks = [dict(name="outbox", ignore_errors=True, **{"p3.recovery.outbox_probe": dict(
            dsn=dsn, connect_timeout=TIMEOUT, fail_on_unhealthy=True)})]

        def freeze_when_waiting():
            nonlocal stopped
            waiting = False
            for dummy in range(150):  # the probe connected and waits on our lock
                watch = psycopg2.connect(dsn)
                try:
                    c = watch.cursor()
                    c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'p3-recovery' "
                              "AND wait_event_type = 'Lock'")
                    waiting = c.fetchone()[0] > 0
                finally:
                    watch.close()
                if waiting:
                    break
                time.sleep(0.1)
            assert waiting, "the probe never reached the lock"
            os.kill(pid, signal.SIGSTOP)
            stopped = True

        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks), on_start=freeze_when_waiting))
        msg = one_line_failure(run, "outbox")
        assert "timed out" in msg, msg

        # a new connection to the frozen postmaster
        tasks = [dict(name="probe", ignore_errors=True, **{"p3.recovery.postgres_probe": dict(
            dsn=dsn, connect_timeout=TIMEOUT, fail_on_unhealthy=True)})]
        run = finished(run_playbook(write_play(tmp_path, tasks, "probe.yml"), timeout=guard(tasks)))
        msg = one_line_failure(run, "probe")
        assert "timed out" in msg and "p3admin-lab-secret" not in run.stdout, msg
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        locker.rollback()
        locker.close()
    # the server is fine afterwards
    check = psycopg2.connect(dsn, connect_timeout=5)
    check.close()


def test_pathological_regex_on_long_line(lab_up, tmp_path):
    log = tmp_path / "app.log"
    log.write_text("ok line\n" + "a" * 64 + "b\n")
    tasks = [dict(name="scan", ignore_errors=True, **{"p3.recovery.app_log_scan": dict(
        paths=[str(log)], pattern="(a|aa)+$", timeout=TIMEOUT)})]
    run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
    msg = one_line_failure(run, "scan")
    assert "timed out" in msg and "line 2" in msg, msg


# ------------------------------------------------------------------------------------------ process_env

def supervisor_env(conf, program="p3app"):
    """The environment of the program as supervisor's own parser reads the file."""
    from supervisor.options import ServerOptions
    opts = ServerOptions()
    opts.configfile = conf
    opts.here = os.path.dirname(conf)
    section = opts.read_config(conf)
    for group in section.process_group_configs:
        for pconf in group.process_configs:
            if pconf.name == program:
                return pconf.environment
    raise AssertionError("no program %s" % program)


def test_process_env_percent_and_newline(lab_up, tmp_path):
    st = lab_status()
    conf = os.path.join(LAB_DIR, "supervisor", "supervisord.conf")
    ctl = os.path.join(ROOT, ".venv", "bin", "supervisorctl")
    with open(conf) as f:
        original = f.read()
    mode = os.stat(conf).st_mode & 0o7777
    db_password = "p3app-lab-pw"
    assert db_password in original  # DATABASE_URL with its password is in the same environment= line
    base = dict(supervisor_conf=conf, program="p3app", supervisorctl=ctl, backup=False)
    tasks = [
        dict(name="percent", ignore_errors=True, **{"p3.recovery.process_env": dict(
            base, name="P3_TEST_PCT", value="50%")}),
        dict(name="newline", ignore_errors=True, **{"p3.recovery.process_env": dict(
            base, name="P3_TEST_NL", value="a\nb")}),
        dict(name="percent again", ignore_errors=True, **{"p3.recovery.process_env": dict(
            base, name="P3_TEST_PCT", value="50%")}),
    ]
    incidents = tmp_path / "incidents"
    try:
        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks),
                                    env={"P3_INCIDENT_DIR": str(incidents)}))
        pct = run.result("percent")
        assert not run.failed("percent") and pct["changed"] is True and pct["checked"] is True, pct
        # supervisor itself reads the value back as written, and reread accepts the file
        assert supervisor_env(conf)["P3_TEST_PCT"] == "50%"
        assert run.result("percent again")["changed"] is False
        msg = one_line_failure(run, "newline")
        assert "P3_TEST_NL" in msg and "newline" in msg, msg
        assert "P3_TEST_NL" not in supervisor_env(conf)
        reread = subprocess.run([ctl, "-c", conf, "reread"], capture_output=True, text=True, timeout=30)
        assert reread.returncode == 0 and "rror" not in reread.stdout + reread.stderr, reread
        written = run.stdout
        for path in glob.glob(str(incidents / "**" / "*"), recursive=True):
            if os.path.isfile(path):
                with open(path, errors="replace") as f:
                    written += f.read()
        assert db_password not in written
        leftovers = [p for p in os.listdir(os.path.dirname(conf)) if p.endswith(".p3tmp")]
        assert not leftovers
        assert os.stat(conf).st_mode & 0o7777 == mode
    finally:
        with open(conf, "w") as f:
            f.write(original)
        subprocess.run([ctl, "-c", conf, "reread"], capture_output=True, timeout=30)
    assert st["app"]["healthy"]


def test_process_env_rolls_back_when_reread_fails(lab_up, tmp_path):
    """supervisorctl reread fails (no supervisord behind this file): the previous file is put back, the run
    fails with changed=false, and the message quotes no other variable."""
    conf = tmp_path / "p3.conf"
    original = ('[supervisorctl]\nserverurl=unix://%s/nothing.sock\n\n[program:app]\ncommand=/bin/true\n'
                'environment=DATABASE_URL="postgresql://u:rollback-secret-1@h/db",A="1"\n' % tmp_path)
    conf.write_text(original)
    ctl = os.path.join(ROOT, ".venv", "bin", "supervisorctl")
    tasks = [dict(name="set", ignore_errors=True, **{"p3.recovery.process_env": dict(
        supervisor_conf=str(conf), program="app", supervisorctl=ctl, name="LIMIT", value="7", backup=False)})]
    run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
    msg = one_line_failure(run, "set")
    res = run.result("set")
    assert res["restored"] is True and res["changed"] is False, res
    assert conf.read_text() == original
    assert "rollback-secret-1" not in run.stdout and "reread" in msg
    assert not [p for p in os.listdir(str(tmp_path)) if p.endswith(".p3tmp")]


# ------------------------------------------------------------------------------------------ Redis: total deadline

REDIS_DEADLINE = 3  # redis_deadline of every Redis module below; each operation's own timeouts are 1 s


def redis_tasks(seeds, backup_dir, backup_file):
    """One task per Redis module, every one against the same (frozen / silent) node."""
    conn = dict(redis_nodes=seeds, redis_socket_timeout=1, redis_connect_timeout=1, redis_deadline=REDIS_DEADLINE)
    mods = [
        ("redis_probe", dict(fail_on_unhealthy=True)),
        ("redis_cluster_topology", dict(fail_on_unhealthy=True)),
        ("redis_cluster_failover", dict()),
        ("redis_cluster_slots", dict()),
        ("redis_cluster_node", dict(state="replica")),
        ("session_census", dict(fail_on_unhealthy=True)),
        ("session_purge", dict(backup_dir=backup_dir)),
        ("session_restore", dict(path=backup_file, replace=True)),
        ("bullmq_probe", dict(queue="anchor", prefix="{bull}", fail_on_unhealthy=True)),
        ("bullmq_retry", dict(queue="anchor", prefix="{bull}")),
        ("mesh_publish", dict(subscriber_wait=0)),
        ("mesh_pubsub_probe", dict(fail_on_unhealthy=True)),
        ("recovery_lock", dict(store="redis", resource="p3test-deadline", state="acquired", run_id="t1")),
    ]
    return [dict(name=m, ignore_errors=True, **{"p3.recovery." + m: dict(conn, **args)}) for m, args in mods]


def assert_redis_failures(run, tasks, address):
    for task in tasks:
        name = task["name"]
        msg = one_line_failure(run, name)
        assert address in msg, (name, msg)
        assert "timed out" in msg or "deadline of %ss exceeded" % REDIS_DEADLINE in msg, (name, msg)


def test_frozen_redis_node_costs_at_most_the_deadline(tmp_path):
    """A SIGSTOPped redis-server (a one-node cluster holding corrupt sessions and a backup to restore): every Redis
    module fails in one line naming the node and the cause; its wall time is bounded by redis_deadline (the
    run's guard is the sum of the deadlines plus ansible-playbook's own time)."""
    from p3harness import throwaway_redis
    srv = throwaway_redis(cluster=True)
    stopped = False
    try:
        for i in range(50):
            srv.client.set("session:corrupt-%d" % i, "not json", ex=3600)
        backup_dir = str(tmp_path / "backups")
        seeds = ["127.0.0.1:%d" % srv.port]
        # a real backup file for session_restore, made while the node answers
        make = [dict(name="backup", **{"p3.recovery.session_purge": dict(
            redis_nodes=seeds, backup_dir=backup_dir, redis_deadline=30)})]
        run = finished(run_playbook(write_play(tmp_path, make, "backup.yml"), timeout=guard(make)))
        res = run.result("backup")
        assert not run.failed("backup") and res["removed"] == 50, res
        backup_file = res["backup"]["path"]
        for i in range(50):
            srv.client.set("session:corrupt-%d" % i, "not json", ex=3600)
        tasks = redis_tasks(seeds, backup_dir, backup_file)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        stopped = True
        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
        assert_redis_failures(run, tasks, "127.0.0.1:%d" % srv.port)
    finally:
        if stopped:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_silent_redis_peer_costs_at_most_the_deadline(tmp_path):
    """A socket that accepts and never answers, as every Redis module's only node."""
    server = Server(SILENT_PORT, "silent")
    try:
        backup = tmp_path / "backup.jsonl"
        backup.write_text("")
        tasks = redis_tasks(["127.0.0.1:%d" % SILENT_PORT], str(tmp_path / "backups"), str(backup))
        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
        assert_redis_failures(run, [t for t in tasks if t["name"] != "session_restore"], "127.0.0.1:%d" % SILENT_PORT)
    finally:
        server.close()


class SlowProxy(object):
    """A TCP proxy in front of a Redis that delays every reply by delay seconds (each reply still comes well within
    the socket timeout): the old per-operation timeouts never trip, so only a total deadline bounds the call."""

    def __init__(self, port, delay):
        self.port, self.delay = port, delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, dummy = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self.pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, self.delay), daemon=True).start()

    def pipe(self, src, dst, delay):
        try:
            while not self.stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


def test_slow_redis_peer_is_cut_at_the_deadline(tmp_path):
    """Every reply 0.4 s late (socket timeout 1 s): each operation succeeds, so only a total deadline bounds a call.
    Without one a census of 40 keys one key per page took 27.6 s, a purge of them 16.5 s, the others 3-4 s (ansible
    included). With redis_deadline=1 (9 for the purge, to get into its walk) every module fails in one line naming
    the node; the purge removed only keys whose backup line is durable, reports changed, and sent nothing new in its
    last connect + 2 x socket timeout, so no take was left unresolved (before that rule: 149 of 400 unresolved)."""
    from p3harness import throwaway_redis
    srv = throwaway_redis(decode_responses=True)
    proxy = SlowProxy(srv.port, 0.4)
    try:
        keys = ["session:corrupt-%d" % i for i in range(1000)]
        for k in keys:
            srv.client.set(k, "not json", ex=3600)
        restore_file = tmp_path / "restore.jsonl"
        purge_file = tmp_path / "purge.jsonl"
        # a real backup for session_restore, made straight to the server (a key that is not there now)
        srv.client.set("session:restore-me", "not json", ex=3600)
        make = [dict(name="backup", **{"p3.recovery.session_purge": dict(
            redis_url="redis://127.0.0.1:%d" % srv.port, pattern="session:restore-*", backup_path=str(restore_file))})]
        run = finished(run_playbook(write_play(tmp_path, make, "backup.yml"), timeout=guard(make)))
        assert run.result("backup")["removed"] == 1, run.result("backup")
        tasks = [t for t in redis_tasks([proxy.address], str(tmp_path / "backups"), str(restore_file))
                 if not t["name"].startswith("redis_cluster")]
        for t in tasks:
            args = t["p3.recovery." + t["name"]]
            args.update(redis_deadline=1)
            if t["name"] == "session_census":
                args.update(scan_count=1)
            if t["name"] == "session_purge":
                args.update(scan_count=50, redis_deadline=9)  # past discovery, into the walk: takes of 100 keys
            if t["name"] == "session_purge":
                args.update(backup_path=str(purge_file))
                args.pop("backup_dir")
            if t["name"] == "recovery_lock":
                # one SET NX PX on a standalone node (key_node_client) answers within 1 s even 0.4 s late: a
                # deadline shorter than one reply is what cuts it
                args.update(redis_deadline=0.3)
        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
        for t in tasks:
            msg = one_line_failure(run, t["name"])
            assert proxy.address in msg, (t["name"], msg)
            if t["name"] != "recovery_lock":  # (its cluster client wraps the cut as a timeout: still bounded)
                assert "deadline of %ss exceeded" % t["p3.recovery." + t["name"]]["redis_deadline"] in msg, (
                    t["name"], msg)
        res = run.result("session_purge")
        left = set(k for k in keys if srv.client.exists(k))
        gone = set(keys) - left
        assert res["removed"] + res["unresolved"] >= len(gone) >= res["removed"], res
        assert res["changed"] is (res["removed"] > 0), res
        assert res["removed"] > 0 and res["changed"] is True, res  # the deadline cut a walk that removed keys
        # the walk sent nothing new once only the time to resolve a take was left: every take in flight finished
        assert res["unresolved"] == 0 and len(gone) == res["removed"] and left, res
        from p3harness import ensure_collection_importable
        ensure_collection_importable()
        from ansible_collections.p3.recovery.plugins.module_utils.sessions import read_backup
        backed_up = set(e["key"].decode() if isinstance(e["key"], bytes) else e["key"]
                        for e in read_backup(str(purge_file))[1])
        assert gone <= backed_up, gone - backed_up  # nothing removed without its durable backup line
        assert not srv.client.exists("session:restore-me") or run.result("session_restore")["restored"] in (0, 1)
    finally:
        proxy.close()
        srv.stop()


def test_frozen_lab_replica_ends_the_topology_wait_at_the_deadline(lab_up, tmp_path):
    """A frozen replica of the lab cluster: redis_cluster_topology waiting for a healthy cluster (wait_timeout 60)
    stops at redis_deadline and its verdict names the node and the deadline; the cluster is fine after SIGCONT."""
    import redis as redis_py
    v = lab_vars()
    replica, pid = None, None
    for name, svc in lab_status()["services"].items():
        if name.startswith("redis") and svc["up"]:
            c = redis_py.Redis(port=svc["port"], password=v["p3_redis_password"], socket_timeout=5)
            try:
                if c.info("replication")["role"] == "slave":
                    replica, pid = "127.0.0.1:%d" % svc["port"], svc["pid"]
                    break
            finally:
                c.close()
    assert replica, "no replica in the lab"
    tasks = [dict(name="topology", ignore_errors=True, **{"p3.recovery.redis_cluster_topology": dict(
        redis_nodes=v["p3_redis_nodes"], redis_password=v["p3_redis_password"], redis_socket_timeout=1,
        redis_connect_timeout=1, redis_deadline=4, wait_for="healthy", wait_timeout=60)})]
    os.kill(pid, signal.SIGSTOP)
    try:
        run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
    finally:
        os.kill(pid, signal.SIGCONT)
    res = run.result("topology")
    assert res["healthy"] is False and not run.failed("topology"), res
    assert replica in res["reason"] and "deadline of 4s exceeded" in res["reason"], res["reason"]
    assert "\n" not in res["reason"] and "p3redis-lab-secret" not in run.stdout


def test_postgres_host_names(lab_up, tmp_path):
    """A host name (localhost) still connects (resolved by the client, passed as hostaddr); an unresolvable one fails
    in one line naming the host."""
    import psycopg2.extensions
    parsed = psycopg2.extensions.parse_dsn(admin_dsn())
    conn = dict(db_port=int(parsed.get("port") or 5432), db_user=parsed["user"], db_password=parsed["password"],
                db_name=parsed["dbname"], connect_timeout=TIMEOUT)
    tasks = [
        dict(name="localhost", **{"p3.recovery.postgres_probe": dict(conn, db_host="localhost")}),
        dict(name="unknown", ignore_errors=True, **{"p3.recovery.postgres_probe": dict(
            conn, db_host="p3-no-such-host.invalid", fail_on_unhealthy=True)}),
    ]
    run = finished(run_playbook(write_play(tmp_path, tasks), timeout=guard(tasks)))
    assert run.result("localhost")["healthy"] is True, run.result("localhost")
    msg = one_line_failure(run, "unknown")
    assert "p3-no-such-host.invalid" in msg and "name resolution" in msg, msg
    assert parsed["password"] not in run.stdout
