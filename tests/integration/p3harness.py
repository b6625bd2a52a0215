"""Integration harness (helpers; the fixtures are in conftest.py): the real lab and playbook runs through ansible-runner.

Tests import from here (`from p3harness import ...`), never from conftest, so the unit and integration trees can
run in one pytest session.

Tests drive playbooks against the lab's real services and assert on real state read straight from them
(`lab/p3lab status --json`, redis-py, psycopg2), not only on what the playbook printed.
"""
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import redis
import yaml
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PY = sys.executable
LAB = os.path.join(ROOT, "lab", "p3lab")
LAB_DIR = os.environ.get("P3LAB_DIR", os.path.join(ROOT, ".lab"))
INVENTORY = os.path.join(ROOT, "lab", "inventory.yml") if "P3LAB_DIR" not in os.environ else os.path.join(LAB_DIR, "inventory.yml")
BIN = os.path.dirname(PY)
LAB_SECRETS_HINT = ("p3admin-lab-secret", "p3redis-lab-secret", "p3app-lab-pw")
# seconds: a run that takes longer than this is a hang, not a slow probe. 300 cut a 3-instance rolling restart and
# a recover_anchor on P3 at load 12-14 (local CI, seven passes on 2 cores); a hang is still caught, later
HANG_GUARD = 600
# recover_all runs every stage with its own bounds, about 270 tasks: 160-420 s under load 7-20 on 2 cores
# (docs/bench.md), but its check mode on three faults passed 600 s at load 12-14 in a local CI of seven passes; so
# its hang guard is higher (bench/chaos.py RECOVER_TIMEOUT, the same 1200, for one round's); never a timing assertion
RECOVER_ALL_GUARD = 1200


def lab(*args, check=True, timeout=180):
    """Run the lab CLI; returns its stdout."""
    proc = subprocess.run([PY, LAB] + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("p3lab %s failed (%d):\n%s\n%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def lab_status():
    return json.loads(lab("status", "--json"))


def lab_fault(name):
    """Inject a fault; returns the JSON the lab printed about what it did."""
    out = lab("fault", name)
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def base_env(extra=None):
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    # the incident callback (enabled in ansible.cfg) writes here unless a test says otherwise: one directory per lab
    # (its base port), so that the passes `make test` runs at once (one lab each, the same host names) never join
    # one another's incidents (a run's incident record would list another lab's findings as its own). Outside the
    # lab's own directory, which a run may come before.
    env["P3_INCIDENT_DIR"] = os.path.join(ROOT, ".state", "incidents", os.environ.get("P3LAB_BASE_PORT", "17000"))
    env.pop("P3_INCIDENT_ID", None)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("REDIS_PASSWORD", None)
    if extra:
        env.update(extra)
    return env


class Run(object):
    """The outcome of one playbook run: rc, full stdout, per-task results, set_stats data."""

    def __init__(self, rc, stdout, events):
        self.rc = rc
        self.stdout = stdout
        self.events = events

    def results(self, task):
        """Every result (all hosts) of the task whose name is `task`."""
        out = []
        for ev in self.events:
            data = ev.get("event_data", {})
            if ev.get("event", "").startswith("runner_on_") and data.get("task") == task and "res" in data:
                out.append(data["res"])
        return out

    def result(self, task):
        res = self.results(task)
        assert res, "task %r did not run; output:\n%s" % (task, self.stdout[-3000:])
        return res[-1]

    def failed(self, task):
        """Whether the (last) result of the task is a failure (ignore_errors keeps the run going)."""
        evs = [ev for ev in self.events if ev.get("event", "").startswith("runner_on_")
               and ev.get("event_data", {}).get("task") == task and "res" in ev.get("event_data", {})]
        return bool(evs) and evs[-1]["event"] == "runner_on_failed"

    def durations(self):
        """[(task, seconds)] of every task result so far, in order (ansible-runner's own event timing): what a
        hang-guard failure prints, to tell one stuck task from a machine that was slow throughout."""
        return [(ev["event_data"].get("task"), ev["event_data"].get("duration"))
                for ev in self.events if ev.get("event", "").startswith("runner_on_")
                and "res" in ev.get("event_data", {})]

    def _stats_event(self):
        for ev in self.events:
            if ev.get("event") == "playbook_on_stats":
                return ev.get("event_data", {})
        return {}

    @property
    def stats(self):
        return self._stats_event().get("artifact_data", {})

    @property
    def changed(self):
        return self._stats_event().get("changed", {})

    def changed_tasks(self):
        """(host, task, reason or msg) of every result that reported changed: what an assertion on changed says."""
        out = []
        for ev in self.events:
            data = ev.get("event_data", {})
            res = data.get("res") or {}
            if ev.get("event", "").startswith("runner_on_") and isinstance(res, dict) and res.get("changed"):
                out.append((data.get("host"), data.get("task"), res.get("reason") or res.get("msg")))
        return out


def run_playbook(playbook, extravars=None, check=False, verbosity=0, inventory=None, env=None, limit=None,
                 timeout=HANG_GUARD, extravars_file=None, on_start=None):
    """timeout: hang guard (runner status 'timeout', rc 254). extravars_file: passed as -e @file, the way
    secrets should be. on_start(): called in this thread while the run goes on (the run is async then)."""
    import ansible_runner

    path = playbook if os.path.isabs(playbook) else os.path.join(ROOT, "playbooks", playbook)
    tmp = tempfile.mkdtemp(prefix="p3run-")
    cmdline = []
    if check:
        cmdline.append("--check")
    if extravars_file:
        cmdline += ["-e", "@" + extravars_file]
    try:
        start = ansible_runner.run_async if on_start else ansible_runner.run
        r = start(
            private_data_dir=tmp,
            playbook=path,
            inventory=inventory or INVENTORY,
            extravars=extravars or {},
            cmdline=" ".join(cmdline) or None,
            limit=limit,
            verbosity=verbosity or None,
            envvars=base_env(env),
            quiet=True,
            timeout=timeout,
            project_dir=ROOT,
        )
        if on_start:
            thread, r = r
            try:
                on_start()
            finally:
                thread.join()
        stdout = r.stdout.read()
        events = list(r.events)
        run = Run(r.rc, stdout, events)
        run.status = r.status
        if r.status == "timeout":
            # the test fails on this run; the ones after it must not be locked out by what it could not release
            sys.stderr.write("hang guard (%ss) killed %s; %s\n" % (timeout, playbook, release_lab_locks()))
        return run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def release_lab_locks():
    """Release every recovery lock of the lab (rows of its PostgreSQL lock table, Redis keys {p3recovery}:lock:*) -
    after the hang guard killed a run: killed, it cannot release what it held, and the lock would stay until its TTL
    (900 s), locking out the next tests' runs. Returns one line saying what it released; never raises."""
    ensure_collection_importable()
    from ansible_collections.p3.recovery.plugins.module_utils.common import one_line
    from ansible_collections.p3.recovery.plugins.module_utils.locks import DEFAULT_TABLE, KEY_PREFIX

    out = []
    try:
        import psycopg2

        conn = psycopg2.connect(lab_vars()["p3_database_url"], connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (DEFAULT_TABLE,))
                if cur.fetchone()[0]:
                    cur.execute("DELETE FROM %s RETURNING resource" % DEFAULT_TABLE)
                    out += ["postgres:%s" % row[0] for row in cur.fetchall()]
        finally:
            conn.close()
    except Exception as e:  # noqa: BLE001 - cleanup after a failed test: say it, go on
        out.append("postgres not cleaned (%s)" % one_line(e, 200))
    try:
        for c in lab_redis_clients():
            for key in c.scan_iter(match=KEY_PREFIX + "*"):
                try:
                    c.delete(key)
                    out.append("redis:%s" % key.decode())
                except redis.RedisError:
                    pass  # a replica (READONLY): its master deletes it
    except Exception as e:  # noqa: BLE001
        out.append("redis not cleaned (%s)" % one_line(e, 200))
    return "released recovery locks: %s" % (", ".join(out) or "none held")


def latest_report(report_dir, kind):
    """The newest report of that kind (file name prefix) written in report_dir, or None."""
    reports = sorted(glob.glob(os.path.join(report_dir, "%s-*.json" % kind)))
    if not reports:
        return None
    with open(reports[-1]) as f:
        return json.load(f)


def run_with_report(run, report_dir, kind):
    """(run, the newest report of that kind in report_dir or None): what a playbook helper returns."""
    return run, latest_report(report_dir, kind)


def ensure_collection_importable():
    """Make ansible_collections.p3.recovery importable in this process (a symlink <state>/unit-path/.../recovery ->
    the repository root, as the unit tests do), for tests that call module_utils directly."""
    base = os.path.join(ROOT, ".state", "unit-path")
    link = os.path.join(base, "ansible_collections", "p3", "recovery")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        try:
            os.symlink(ROOT, link)
        except FileExistsError:  # another test session (a concurrent pass of `make test`) made it meanwhile
            pass
    if base not in sys.path:
        sys.path.insert(0, base)


def throwaway_redis(prefix="p3test-redis-", decode_responses=False, **kw):
    """A standalone redis-server without persistence on a free loopback port in a temporary dir, for tests that
    need a Redis of their own (not the lab's cluster): bench/benchlib.StandaloneRedis (.port, .client, stop());
    kw: binary, cluster (see there)."""
    bench = os.path.join(ROOT, "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from benchlib import StandaloneRedis
    return StandaloneRedis(prefix=prefix, socket_timeout=30, decode_responses=decode_responses, **kw)


# ---------------------------------------------------------------- shared by several test modules

LAB_SECRETS = list(LAB_SECRETS_HINT)


def lab_info():
    with open(os.path.join(LAB_DIR, "lab.json")) as f:
        return json.load(f)


def lab_vars():
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


class _LabVars(object):
    """The lab inventory's vars, read on first use: the lab (and its inventory) is started by the session
    fixture, after pytest has collected this module."""

    _vars = None

    def __getitem__(self, key):
        if _LabVars._vars is None:
            _LabVars._vars = lab_vars()
        return _LabVars._vars[key]


V = _LabVars()


def lab_redis_clients():
    with open(INVENTORY) as f:
        lab_vars = yaml.safe_load(f)["all"]["vars"]
    out = []
    for addr in lab_vars["p3_redis_nodes"]:
        host, port = addr.rsplit(":", 1)
        out.append(redis.Redis(host=host, port=int(port), password=lab_vars.get("p3_redis_password"), socket_timeout=2))
    return out


# ---------------------------------------------------------------- the lab's Redis Cluster (recover_redis)

PW = "p3redis-lab-secret"
FAILOVER_TASK = "Act - promote the best replica of each failed master"


def lab_nodes():
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]["p3_redis_nodes"]


def client(addr, password=PW, timeout=2):
    host, port = addr.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


@contextlib.contextmanager
def no_replica_failover(addrs):
    """While inside: no replica promotes itself (cluster-replica-no-failover yes on every node), so a killed master
    stays the cluster's problem until a run acts, however long the machine takes to get there (Redis's own failover
    comes about 1 s after the cluster flags the master failed). Set back on every node that answers."""
    try:
        for addr in addrs:
            client(addr).config_set("cluster-replica-no-failover", "yes")
        yield
    finally:
        for addr in addrs:
            try:
                client(addr).config_set("cluster-replica-no-failover", "no")
            except redis.RedisError:
                pass  # the killed master


@contextlib.contextmanager
def cluster_node_timeout(addrs, ms):
    """While inside: cluster-node-timeout ms on every node of addrs that answers; after, the lab's own value
    (p3lablib.common.REDIS_NODE_TIMEOUT_MS) on every node that answers then (one killed inside is left alone)."""
    if os.path.join(ROOT, "lab") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "lab"))
    from p3lablib.common import REDIS_NODE_TIMEOUT_MS

    try:
        for addr in addrs:
            if alive(addr):
                client(addr).config_set("cluster-node-timeout", ms)
        yield
    finally:
        for addr in addrs:
            try:
                client(addr).config_set("cluster-node-timeout", REDIS_NODE_TIMEOUT_MS)
            except redis.RedisError:
                pass  # a node killed inside


def slow_failure_detection(addrs, ms=300000):
    """While inside: the peers of a node killed inside do not flag it failed (and no replica promotes itself) before
    the block ends, however slow the machine is - a test that must see the state "unanswered but not yet failed"
    gets it. After it, the lab's timeout: the peers then flag the dead node failed within that."""
    return cluster_node_timeout(addrs, ms)


def alive(addr, password=PW):
    try:
        return client(addr, password, timeout=0.5).ping()
    except redis.RedisError:
        return False


def parse_nodes(text):
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        slots = set()
        for tok in f[8:]:
            if tok.startswith("["):
                continue
            a, _, b = tok.partition("-")
            slots.update(range(int(a), int(b or a) + 1))
        flags = f[2].split(",")
        out[f[0]] = dict(id=f[0], addr=f[1].split("@")[0], flags=flags, myself="myself" in flags,
                         role="master" if "master" in flags else "replica", master=f[3], ping_sent=int(f[4]),
                         link=f[7], slots=slots)
    return out


def views(addrs, password=PW):
    """{addr: {id: line}} of the nodes that answer."""
    out = {}
    for a in addrs:
        if alive(a, password):
            out[a] = parse_nodes(client(a, password).execute_command("CLUSTER", "NODES"))
    return out


def owner_map(view):
    owners = {}
    for n in view.values():
        for s in n["slots"]:
            owners[s] = n["addr"]
    return owners


def no_double_owner(view, seen_by=""):
    """Assert that no slot has two master owners in one node's view (seen_by names that node in the failure)."""
    seen = {}
    for n in view.values():
        if n["role"] == "master":
            for s in n["slots"]:
                assert s not in seen, "%sslot %d owned by %s and %s" % (
                    "%s sees " % seen_by if seen_by else "", s, seen[s], n["addr"])
                seen[s] = n["addr"]


def wait_or_fail(cond, timeout, what):
    """Poll cond() every 0.1 s until truthy; after timeout seconds fail the test with `what` (a text, or a callable
    giving it - evaluated only then, e.g. the views at that moment)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what() if callable(what) else what
        time.sleep(0.1)


def write_acked(addrs, n, prefix, password=PW, acks=1):
    """Write n keys on their slot's master, then WAIT until a replica acknowledged them; returns {key: value}."""
    live = [a for a in addrs if alive(a, password)]
    owners = owner_map(views(live[:1], password)[live[0]])
    by_master = {}
    data = {}
    for i in range(n):
        k = "p3test:%s:%d" % (prefix, i)
        data[k] = "v%d-%s" % (i, prefix)
        by_master.setdefault(owners[key_slot(k.encode())], []).append(k)
    for m, keys in by_master.items():
        c = client(m, password)
        pipe = c.pipeline(transaction=False)
        for k in keys:
            pipe.set(k, data[k])
        assert all(r is True for r in pipe.execute())
        if acks:
            acked = c.execute_command("WAIT", acks, 1500)
            assert acked >= acks, "no replica of %s acknowledged the writes" % m
    return data


def missing_keys(addrs, data, password=PW):
    """Keys not readable with their value from the master that serves their slot now."""
    live = [a for a in addrs if alive(a, password)]
    owners = owner_map(views(live[:1], password)[live[0]])
    by_master = {}
    for k in data:
        by_master.setdefault(owners.get(key_slot(k.encode())), []).append(k)
    bad = []
    for m, keys in by_master.items():
        if m is None:
            bad += keys
            continue
        pipe = client(m, password).pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        got = pipe.execute(raise_on_error=False)
        bad += [k for k, v in zip(keys, got) if v != data[k]]
    return bad


# the commands that change a cluster's topology (INFO commandstats names); Redis's own failover sends none of them
TOPOLOGY_COMMANDS = ("cluster|reset", "cluster|replicate", "cluster|setslot", "cluster|meet", "cluster|failover",
                     "migrate", "cluster|addslots", "cluster|addslotsrange", "cluster|delslots",
                     "cluster|delslotsrange")


def topology_calls(addrs, password=PW):
    """{node: {command: calls}} of every topology-changing command, read from INFO commandstats of every live node:
    equal before and after a run means the run sent none (whatever Redis did by itself meanwhile)."""
    out = {}
    for a in addrs:
        if alive(a, password):
            stats = client(a, password).info("commandstats")
            out[a] = dict((c, stats.get("cmdstat_" + c, {}).get("calls", 0)) for c in TOPOLOGY_COMMANDS)
    return out


def failover_calls(addrs):
    """CLUSTER FAILOVER commands every live node has executed (INFO commandstats); Redis's own failover after a
    master's fail flag sends none."""
    total = 0
    for a in addrs:
        if alive(a):
            stats = client(a).info("commandstats")
            total += stats.get("cmdstat_cluster|failover", {}).get("calls", 0)
    return total


def recover_redis(report_dir, check=False, inventory=None, verbosity=0, **extra):
    extravars = {"p3_report_dir": report_dir}
    extravars.update(extra)
    before = set(glob.glob(os.path.join(report_dir, "recover_redis-*.json")))
    run = run_playbook("recover_redis.yml", extravars=extravars, check=check, inventory=inventory,
                       verbosity=verbosity)
    new = sorted(set(glob.glob(os.path.join(report_dir, "recover_redis-*.json"))) - before)
    assert new, "no report written; output:\n%s" % run.stdout[-3000:]
    with open(new[-1]) as f:
        return run, json.load(f)


# ---------------------------------------------------------------- the anchor path (chain, queue)

FUNDING_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil account 0 (lab only)
FUNDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
PREFIX = "{bull}:anchor:"


def rpc(method, params=None, url=None):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url or V["p3_rpc_url"], data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.loads(r.read())
    assert "error" not in answer, answer
    return answer["result"]


def balance(addr, block="latest", url=None):
    return int(rpc("eth_getBalance", [addr, block], url=url), 16)


def nonce(addr):
    return int(rpc("eth_getTransactionCount", [addr, "latest"]), 16)


def anchor_redis():
    nodes = [ClusterNode(*n.split(":")) for n in V["p3_redis_nodes"]]
    return RedisCluster(startup_nodes=nodes, password=V["p3_redis_password"], decode_responses=True,
                        socket_timeout=5)


def recover_anchor(report_dir, check=False, verbosity=0, **extra):
    extravars = {"p3_report_dir": report_dir, "p3_anchor_funding_key": FUNDING_KEY}
    extravars.update(extra)
    return run_with_report(run_playbook("recover_anchor.yml", extravars=extravars, check=check, verbosity=verbosity), report_dir, "recover_anchor")


# ---------------------------------------------------------------- sessions and mesh

def masters():
    info = lab_info()["redis"]
    out = []
    for address in info["nodes"]:
        host, port = address.split(":")
        c = redis.Redis(host=host, port=int(port), password=info["password"], socket_timeout=3)
        try:
            if c.info("replication")["role"] == "master":
                out.append(c)
        except redis.ConnectionError:
            pass
    return out


def snapshot():
    """{key: (raw value, pttl, dump)} of every session:* key on every master."""
    out = {}
    for c in masters():
        for key in c.scan_iter(match=b"session:*", count=1000):
            pipe = c.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            pipe.dump(key)
            raw, pttl, dump = pipe.execute()
            out[key] = (raw, pttl, dump)
    return out


def recover_sessions(report_dir, backup_dir, check=False, verbosity=0, env=None, **extra):
    extravars = {
        "p3_report_dir": report_dir,
        "p3_session_backup_dir": backup_dir,
        "p3_handshake_session_path": "/api/protocol/session/{id}",
        "p3_session_log_paths": [os.path.join(LAB_DIR, "logs", "*.log")],
        "p3_session_log_pattern": "session:",
    }
    extravars.update(extra)
    return run_with_report(run_playbook("recover_sessions.yml", extravars=extravars, check=check, verbosity=verbosity, env=env), report_dir, "recover_sessions")


def recover_mesh(report_dir, check=False, verbosity=0, **extra):
    extravars = {"p3_report_dir": report_dir}
    extravars.update(extra)
    return run_with_report(run_playbook("recover_mesh.yml", extravars=extravars, check=check, verbosity=verbosity), report_dir, "recover_mesh")
