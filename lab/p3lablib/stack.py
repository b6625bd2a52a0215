"""`up` and `down`: start/stop the whole stack, write lab.json and the Ansible inventory."""
import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from . import anvil, notify, pg, rediscluster, supervisor, upstream
from .common import (ANCHOR_KEY, ANCHOR_SINK, ANCHOR_WALLET, BULL_PREFIX, BULL_QUEUE, CHAIN_ID, FAUCET, FAUCET_KEY,
                     ONE_ETH, PG_ADMIN_PASSWORD, PG_ADMIN_USER, PG_APP_PASSWORD, PG_APP_USER, PG_DB, REDIS_PASSWORD,
                     REPO, VENV_PY, LabError, cmdline, http, kill, listener_pids, listening_ports, log, owned_pids,
                     pid_alive, read_json, wait_until, write_json, live_pid)


# Every wait of `p3lab up` (lab app) shares this budget: about 10 s on an idle machine, but at load 11-13 (a local CI:
# seven labs on 2 cores) the third app instance was still "DOWN 1/2" in HAProxy when a 57 s budget ran out.
UP_BUDGET = 150
# How long app instances restarted by `up` or `heal` may take until HAProxy's own checks (inter 1s, rise 2) see each
# one UP: seconds idle; at load 11-12 heal's former 30 s ran out with two of three instances still DOWN.
INSTANCES_WAIT = 90


class Deadline(object):
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, cap=None):
        left = max(1.0, self.end - time.monotonic())
        return min(left, cap) if cap else left


def check_binaries(lab=None):
    rediscluster.check_binaries()
    pg.check_binaries()
    anvil.binary()
    if lab is not None and lab.upstream:
        upstream.node_binary()


def preflight_ports(lab):
    """Fail before starting anything when a port the lab needs is held by a process that is not ours."""
    busy = listening_ports()
    mine = set(owned_pids(lab))
    need = []
    for i, port in enumerate(lab.redis_ports, 1):
        if not rediscluster.node_running(lab, i):
            need += [("redis%d" % i, port), ("redis%d bus" % i, port + 10000)]
    if not pg.postmaster_pid(lab):
        need.append(("postgres", lab.pg_port))
    if not live_pid(lab.anvil_pidfile):
        need.append(("anvil", lab.anvil_port))
    if not supervisor.running(lab):
        need.append(("app", lab.app_port))
    for i, port in enumerate(lab.app_ports[1:], 2):
        if not supervisor.pid_of(lab, "p3app%d" % i):
            need.append(("p3app%d" % i, port))
    if lab.lb_url and not supervisor.pid_of(lab, "haproxy"):
        need.append(("haproxy", lab.lb_port))
    if lab.upstream and not live_pid(upstream.redis_pidfile(lab)):
        need.append(("p3redis", lab.p3redis_port))
    taken = [(name, port) for name, port in need if port in busy]
    if taken:
        owners = listener_pids([p for _, p in taken])
        foreign = [(n, p) for n, p in taken if owners.get(p) not in mine]
        if foreign:
            raise LabError("port%s in use by another process: %s" % (
                "s" if len(foreign) > 1 else "", ", ".join(
                    "%d (needed by %s; held by %s)" % (p, n, ("pid %d %s" % (owners[p], cmdline(owners[p])[:40]))
                                                       if owners.get(p) else "?") for n, p in foreign)))


def lab_info(lab):
    return {
        "base_port": lab.base,
        "dir": lab.dir,
        "repo": REPO,
        "inventory": lab.inventory,
        "secrets_file": lab.secrets_file,
        "python": VENV_PY,
        "peers": lab.peers,
        "ports": {
            "redis": lab.redis_ports,
            "redis_bus": [p + 10000 for p in lab.redis_ports],
            "postgres": lab.pg_port,
            "anvil": lab.anvil_port,
            "app": lab.app_port,
        },
        "urls": {
            "app": lab.app_url,
            "health": lab.app_url + "/health",
            "pulse": lab.app_url + "/pulse/status",
            "metrics": lab.app_url + "/metrics",
            "rpc": lab.rpc_url,
            "database": lab.admin_db_url,
            "app_database": lab.app_db_url,
        },
        "redis": {"nodes": lab.redis_nodes, "password": REDIS_PASSWORD, "node_timeout_ms": 15000,
                  "dirs": [lab.redis_node_dir(i) for i in range(1, 7)],
                  "pidfiles": [lab.redis_pidfile(i) for i in range(1, 7)]},
        "postgres": {"port": lab.pg_port, "database": PG_DB, "data": lab.pg_data, "socket_dir": lab.pg_sock,
                     "log": lab.pg_log, "pidfile": os.path.join(lab.pg_data, "postmaster.pid"),
                     "app_user": PG_APP_USER, "app_password": PG_APP_PASSWORD,
                     "admin_user": PG_ADMIN_USER, "admin_password": PG_ADMIN_PASSWORD,
                     "max_connections": lab.pg_max_connections, "superuser_reserved_connections": 3},
        "anvil": {"port": lab.anvil_port, "rpc_url": lab.rpc_url, "chain_id": CHAIN_ID, "pidfile": lab.anvil_pidfile,
                  "log": lab.anvil_log, "faucet": FAUCET, "faucet_key": FAUCET_KEY,
                  "anchor_wallet": ANCHOR_WALLET, "anchor_key": ANCHOR_KEY, "anchor_sink": ANCHOR_SINK},
        "bullmq": {"prefix": BULL_PREFIX, "queue": BULL_QUEUE},
        "supervisor": {"conf": lab.sup_conf, "socket": lab.sup_sock, "pidfile": lab.sup_pidfile,
                       "log": lab.sup_log, "supervisorctl": lab.supervisorctl,
                       "programs": supervisor.programs(lab)},
        "app": {"url": lab.app_url, "port": lab.app_port, "log": lab.app_log,
                "env": upstream.env(lab) if lab.upstream else supervisor.app_env(lab)},
        "meshpeers": {"log": lab.mesh_log, "peers": lab.peers},
        "notify": {"url": notify.url(lab), "port": notify.port(lab), "records": notify.records_file(lab)},
        "holder": {"pidfile": lab.holder_pidfile, "state": lab.holder_state, "log": lab.holder_log},
        "faults": lab.faults_json,
        "app_mode": lab.app_mode,
        "upstream": upstream_info(lab) if lab.upstream else None,
        "app_instances": lab.app_instances,
        "haproxy": haproxy_info(lab),
    }


def haproxy_info(lab):
    """The load balancer of `up --app-instances N` (None with one instance)."""
    if not lab.lb_url:
        return None
    from . import haproxy

    return {"url": lab.lb_url, "port": lab.lb_port, "socket": lab.haproxy_sock, "config": lab.haproxy_cfg,
            "backend": haproxy.BACKEND, "log": os.path.join(lab.log_dir, "haproxy.log"),
            "servers": [{"server": haproxy.server_name(i), "program": haproxy.program_name(i), "port": port,
                         "url": "http://127.0.0.1:%d" % port} for i, port in enumerate(lab.app_ports, 1)]}


def upstream_info(lab):
    return {"program": upstream.PROGRAM, "bullmq": lab.bullmq, "src": upstream.src_dir(lab),
            "database": upstream.DB, "database_url": lab.admin_db_url, "app_database_url": lab.app_db_url,
            "redis_url": upstream.redis_url(lab), "redis_port": lab.p3redis_port,
            "redis_pidfile": upstream.redis_pidfile(lab), "queue": upstream.QUEUE, "bull_prefix": upstream.BULL_PREFIX,
            "jwt_secret": upstream.JWT_SECRET, "health_url": lab.app_url + "/api/system/health",
            "api_debug_log": upstream.src_dir(lab) + "/logs/api-debug.log", "cache": upstream.cache_root()}


def _q(v):
    return json.dumps(v)


def _app_host(lab, name, program, url, health_path, lb_server=None):
    lines = [
        "        %s:" % name,
        "          ansible_connection: local",
        "          p3_restart_backend: supervisor",
        "          p3_supervisorctl: %s" % _q(lab.supervisorctl),
        "          p3_supervisor_conf: %s" % _q(lab.sup_conf),
        "          p3_supervisor_program: %s" % _q(program),
        "          p3_app_health_url: %s" % _q(url + health_path),
    ]
    if lb_server:
        from . import haproxy

        lines += ["          p3_haproxy_socket: %s" % _q(lab.haproxy_sock),
                  "          p3_haproxy_backend: %s" % _q(haproxy.BACKEND),
                  "          p3_haproxy_server: %s" % _q(lb_server)]
    return lines


def _children(lab, program, health_path, app_extra=()):
    """The inventory's groups: the controller, and the app host(s) restarted through the lab's supervisor (with
    --app-instances N: one host per instance, each with its HAProxy backend/server)."""
    hosts = _app_host(lab, "p3-lab-app", program, lab.app_url, health_path,
                      "app1" if lab.lb_url else None) + list(app_extra)
    if lab.lb_url:
        from . import haproxy

        for i, port in enumerate(lab.app_ports[1:], 2):
            hosts += _app_host(lab, "p3-lab-app%d" % i, haproxy.program_name(i), "http://127.0.0.1:%d" % port,
                               health_path, haproxy.server_name(i))
    return [
        "  children:",
        "    p3_controller:",
        "      hosts:",
        "        localhost:",
        "          ansible_connection: local",
        "    p3_app:",
        "      hosts:",
    ] + hosts + [""]


def inventory_text(lab):
    if lab.upstream:
        return upstream_inventory_text(lab)
    return "\n".join([
        "# generated by lab/p3lab up (base port %d, state in %s); do not edit" % (lab.base, lab.dir),
        "all:",
        "  vars:",
        "    ansible_python_interpreter: %s" % _q(VENV_PY),
        "    p3_app_url: %s" % _q(lab.app_url),
        "    p3_database_url: %s" % _q(lab.admin_db_url),
        "    p3_app_database_url: %s" % _q(lab.app_db_url),
        "    p3_redis_nodes: %s" % _q(lab.redis_nodes),
        "    p3_redis_password: %s" % _q(REDIS_PASSWORD),
        # the shape `redis-cli --cluster create --cluster-replicas 1` built (roles/redis_cluster reshapes to it)
        "    p3_redis_designed_masters: 3",
        "    p3_redis_designed_replicas: 1",
        "    p3_rpc_url: %s" % _q(lab.rpc_url),
        "    p3_chain_id: %d" % CHAIN_ID,
        "    p3_anchor_wallet: %s" % _q(ANCHOR_WALLET),
        "    p3_bullmq_prefix: %s" % _q(BULL_PREFIX),
        "    p3_bullmq_queue: %s" % _q(BULL_QUEUE),
        "    p3_report_dir: %s" % _q(os.path.join(REPO, "reports")),
        "    p3_db_app_pool_max: 5",
        # the EDA loop tells humans here: the lab's notification receiver (lab/p3lablib/notify.py)
        "    p3_alert_eda_notify_url: %s" % _q(notify.url(lab)),
    ] + (["    p3_lb_url: %s" % _q(lab.lb_url)] if lab.lb_url else [])
        + _children(lab, supervisor.APP, "/health"))


def upstream_inventory_text(lab):
    """The inventory of app=upstream: P3's own server; run playbooks with -e @profiles/p3-upstream.yml."""
    return "\n".join([
        "# generated by lab/p3lab up --app upstream (base port %d, state in %s); do not edit" % (lab.base, lab.dir),
        "# P3 Protocol's own server (%s, BullMQ variant %s); use with -e @profiles/p3-upstream.yml"
        % (upstream.src_dir(lab), lab.bullmq),
        "all:",
        "  vars:",
        "    ansible_python_interpreter: %s" % _q(VENV_PY),
        "    p3_app_url: %s" % _q(lab.app_url),
        "    p3_database_url: %s" % _q(lab.admin_db_url),
        "    p3_app_database_url: %s" % _q(lab.app_db_url),
        "    # the Redis P3 really uses (REDIS_URL, FLAG_REDIS_CLUSTER=0): a standalone server",
        "    p3_redis_nodes: %s" % _q(["127.0.0.1:%d" % lab.p3redis_port]),
        "    p3_redis_password: %s" % _q(REDIS_PASSWORD),
        "    p3_rpc_url: %s" % _q(lab.rpc_url),
        "    p3_chain_id: %d" % CHAIN_ID,
        "    p3_anchor_wallet: %s" % _q(ANCHOR_WALLET),
        "    p3_bullmq_prefix: %s" % _q(upstream.BULL_PREFIX),
        "    p3_bullmq_queue: %s" % _q(upstream.QUEUE),
        "    p3_report_dir: %s" % _q(os.path.join(REPO, "reports")),
        "    # development: server/pg-storage.ts max 10 + server/db.ts max 10",
        "    p3_db_app_pool_max: 20",
        "    p3_upstream_src: %s" % _q(upstream.src_dir(lab)),
        "    p3_upstream_bullmq: %s" % _q(lab.bullmq),
        "    p3_upstream_jwt_secret: %s" % _q(upstream.JWT_SECRET),
    ] + _children(lab, upstream.PROGRAM, "/api/system/health",
                  ["          p3_session_log_paths: %s" % _q([upstream.src_dir(lab) + "/logs/api-debug.log"]),
                   "          # P3 in development sets up Vite's dev server before it listens (lab/p3lablib/upstream.py)",
                   "          p3_restart_timeout: %d" % upstream.START_TIMEOUT]))


SECRETS_TEXT = (
    "# generated by lab/p3lab up; lab only. What a vault (ansible-vault file, AWX credential) holds in production:\n"
    "# the funding key of anvil's well-known dev account 0. Pass it with -e @<this file> (make demo does).\n"
    "p3_anchor_funding_key: %s\n" % json.dumps(FAUCET_KEY))


def write_secrets(lab):
    """$P3LAB_DIR/lab-secrets.yml (mode 0600): the lab's funding key as a vars file, the way a vault provides it."""
    path = lab.secrets_file
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(SECRETS_TEXT)
    os.chmod(path + ".tmp", 0o600)
    os.replace(path + ".tmp", path)


def write_state(lab):
    os.makedirs(lab.dir, exist_ok=True)
    write_json(lab.lab_json, lab_info(lab))
    write_secrets(lab)
    text = inventory_text(lab)
    # the default lab's inventory is lab/inventory.yml; a copy always sits in $P3LAB_DIR too (so a P3LAB_DIR that
    # is set explicitly to the default path finds it there as well)
    for path in sorted({lab.inventory, os.path.join(lab.dir, "inventory.yml")}):
        old = None
        if os.path.exists(path):
            with open(path) as fh:
                old = fh.read()
        if old != text:
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)


def start_redis(lab, dl, wait_state=True):
    started = rediscluster.start_nodes(lab)
    created = rediscluster.ensure_cluster(lab)
    if not wait_state and not created:
        return {"started": started, "created": created, "state_ok": None}

    def state_ok():
        return all(rediscluster.cluster_info(p, timeout=0.7).get("cluster_state") == "ok" for p in lab.redis_ports)

    if created or started:
        # the app needs a serving cluster when it starts; replicas may still be syncing (waited for later)
        if not wait_until(state_ok, dl.left(30), 0.1):
            return {"started": started, "created": created, "state_ok": False}
    return {"started": started, "created": created, "state_ok": True}


def start_pg(lab):
    started = pg.start(lab)
    pg.setup(lab)
    return started


def start_anvil(lab):
    started = anvil.start(lab)
    if started:
        anvil.set_balance(lab, ONE_ETH)
    return started


def start_infra(lab, dl, wait_state=True):
    """Redis cluster, PostgreSQL, anvil (in parallel; app=upstream: also P3's own Redis, then P3's schema), then
    supervisord and its programs."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        f_redis = ex.submit(start_redis, lab, dl, wait_state)
        f_pg = ex.submit(start_pg, lab)
        f_anvil = ex.submit(start_anvil, lab)
        jobs = [("redis", f_redis), ("postgres", f_pg), ("anvil", f_anvil)]
        if lab.upstream:
            jobs.append(("p3redis", ex.submit(upstream.start_redis, lab)))
        errors = []
        res = {}
        for name, f in jobs:
            try:
                res[name] = f.result()
            except LabError as e:
                errors.append(str(e))
        if errors:
            raise LabError("; ".join(errors))
    if lab.upstream:
        res["schema"] = upstream.schema(lab)
        res["registry"] = upstream.deploy_registry(lab)
    res["supervisord"] = supervisor.start(lab)
    for prog in supervisor.programs(lab):
        res[prog] = supervisor.ensure_program(lab, prog)
    return res


def _app_dead_reason(lab):
    inf = supervisor.info(lab, supervisor.APP)
    if inf and inf.get("statename") in ("EXITED", "FATAL", "BACKOFF", "STOPPED"):
        return "p3app is %s (%s); see %s" % (inf["statename"], inf.get("description", ""), lab.app_log)
    return None


def wait_app(lab, dl, peers=True):
    def healthy():
        reason = _app_dead_reason(lab)
        if reason:
            raise LabError(reason)
        code, _ = http("GET", lab.app_url + "/health", timeout=2)
        return code == 200

    end = time.monotonic() + dl.left(45)
    while True:
        try:
            if healthy():
                break
        except LabError:
            raise
        if time.monotonic() > end:
            code, body = http("GET", lab.app_url + "/health", timeout=2)
            raise LabError("the app is not healthy at %s/health: %s %s (see %s)" % (lab.app_url, code, body, lab.app_log))
        time.sleep(0.2)
    if not peers:
        return

    def npeers():
        code, body = http("GET", lab.app_url + "/pulse/status", timeout=2)
        if code == 200 and isinstance(body, dict):
            return (body.get("status") or {}).get("subscribers")
        return None

    if not wait_until(lambda: npeers() == lab.peers, dl.left(30), 0.2):
        raise LabError("mesh peers: /pulse/status reports %s subscribers, want %d (see %s)"
                       % (npeers(), lab.peers, lab.mesh_log))


def wait_instances(lab, dl):
    """--app-instances N: every instance answers /health 200 and HAProxy's checks report every server UP."""
    from . import haproxy

    def ready():
        return (all(http("GET", "http://127.0.0.1:%d/health" % p, timeout=2)[0] == 200 for p in lab.app_ports[1:])
                and haproxy.all_up(lab))

    if not wait_until(ready, dl.left(INSTANCES_WAIT), 0.2):
        raise LabError("app instances behind haproxy are not all up: %s (see %s)"
                       % (haproxy.servers(lab) or "haproxy does not answer on %s" % lab.haproxy_sock, lab.log_dir))


def up(lab, app=None, bullmq=None, app_instances=None):
    t0 = time.monotonic()
    if (app and app != lab.app_mode) or (bullmq and bullmq != lab.bullmq) or (
            app_instances and app_instances != lab.app_instances):
        if app and app != lab.app_mode and supervisor.running(lab):
            raise LabError("the lab in %s runs app=%s: `p3lab down` it first (or use another P3LAB_DIR)"
                           % (lab.dir, lab.app_mode))
        if (app_instances or 1) > 1 and (app or lab.app_mode) == "upstream":
            raise LabError("--app-instances applies to the lab app only (not --app upstream)")
        lab.set_mode(app or lab.app_mode, bullmq or lab.bullmq, app_instances)
    if lab.lb_url:
        from . import haproxy

        haproxy.binary()
    check_binaries(lab)
    preflight_ports(lab)
    os.makedirs(lab.dir, exist_ok=True)
    write_state(lab)
    prep = None
    if lab.upstream:
        # npm (cold cache: minutes) and the source come before the deadline of the services
        nm, npm_s = upstream.prepare(lab.bullmq)
        prep = {"npm_seconds": npm_s, "unpacked": upstream.unpack(lab),
                "relinked": upstream.link_node_modules(lab, lab.bullmq)}
    dl = Deadline(upstream.START_TIMEOUT + 30 if lab.upstream else UP_BUDGET)
    faults = [f.get("fault") for f in (read_json(lab.faults_json, []) or [])]
    res = start_infra(lab, dl, wait_state=not faults)
    if prep and prep["relinked"] and not res.get(upstream.PROGRAM):
        # another BullMQ variant under a running server: restart it on the new node_modules
        supervisor.ctl(lab, "restart", upstream.PROGRAM)
    if faults:
        log("%d fault(s) still recorded (%s): not waiting for health; undo them with `p3lab heal`"
            % (len(faults), ", ".join(faults)))
    else:
        if not res["redis"]["state_ok"]:
            raise LabError("the redis cluster did not reach cluster_state ok (see %s)" % lab.redis_dir)
        with ThreadPoolExecutor(max_workers=2) as ex:
            f_red = ex.submit(rediscluster.wait_healthy, lab, dl.left(40))
            if lab.upstream:
                f_app = ex.submit(upstream.wait_ready, lab, dl.left(upstream.START_TIMEOUT))
            else:
                f_app = ex.submit(wait_app, lab, dl)
            f_app.result()
            if lab.lb_url:
                wait_instances(lab, dl)
            if not f_red.result():
                raise LabError("redis: replicas did not all link to their masters (see %s)" % lab.redis_dir)
    write_state(lab)
    started = [k for k, v in res.items() if isinstance(v, dict) and (v.get("started") or v.get("created"))]
    started += [k for k, v in res.items() if v is True]
    return {"seconds": round(time.monotonic() - t0, 1), "started": started, "app": lab.app_url,
            "inventory": lab.inventory, "lab_json": lab.lab_json, "faults": faults, "app_mode": lab.app_mode,
            "bullmq": lab.bullmq if lab.upstream else None, "upstream": prep}


def _is_lab_process(lab, pid):
    """Only processes that are recognisably this lab's (another lab on other ports must survive our down)."""
    if pid in owned_pids(lab):
        return True
    cmd = cmdline(pid)
    if "redis-server" in cmd or "valkey-server" in cmd:
        return any("127.0.0.1:%d" % p in cmd for p in lab.redis_ports)
    if "postgres" in cmd:
        return lab.pg_data in cmd
    if "anvil" in cmd:
        return "--port %d" % lab.anvil_port in cmd
    return False


def down(lab, purge=False):
    from .faults import holder_pids

    t0 = time.monotonic()
    supervisor.stop(lab)
    for pid in holder_pids(lab):
        kill(pid, signal.SIGKILL)
    anvil.stop(lab)
    pg.stop(lab)
    rediscluster.stop_nodes(lab)
    upstream.stop_redis(lab)
    # leftovers: anything that still carries our owner marker
    left = owned_pids(lab)
    for pid in left:
        kill(pid, signal.SIGKILL)
    wait_until(lambda: not [p for p in left if pid_alive(p)], 5, 0.05)
    ports = set(lab.all_ports())
    busy = sorted(ports & listening_ports())
    if busy:
        owners = listener_pids(busy)
        for pid in owners.values():
            if _is_lab_process(lab, pid):
                kill(pid, signal.SIGKILL)
        wait_until(lambda: not (ports & listening_ports()), 5, 0.05)
        busy = sorted(ports & listening_ports())
        if busy:
            owners = listener_pids(busy)
            raise LabError("still listening after down: " + ", ".join(
                "%d (pid %s: %s)" % (p, owners.get(p), cmdline(owners[p])[:60] if owners.get(p) else "?") for p in busy))
    # faults that survive a restart: only deleted slots (kept in nodes.conf)
    faults = read_json(lab.faults_json, None)
    if faults:
        keep = [f for f in faults if f.get("fault") == "redis-slots-uncovered"]
        write_json(lab.faults_json, keep)
    if purge:
        if os.path.isdir(lab.dir):
            shutil.rmtree(lab.dir)
        if lab.is_default_dir and os.path.exists(lab.inventory):
            os.unlink(lab.inventory)
    return {"seconds": round(time.monotonic() - t0, 1), "purged": purge}
