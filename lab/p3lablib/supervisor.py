"""supervisord running the lab app (`p3app`) and the mesh peers (`meshpeers`)."""
import os
import xmlrpc.client

from .common import (ANCHOR_KEY, ANCHOR_SINK, BULL_PREFIX, BULL_QUEUE, CHAIN_ID, OWNER_VAR, REDIS_PASSWORD, REPO,
                     VENV_PY, LabError, live_pid, run, stop_pid, wait_until)

APP = "p3app"
MESH = "meshpeers"


def app_env(lab):
    """The environment of both programs (docs/lab.md: "The lab app")."""
    return {
        "PORT": str(lab.app_port),
        "DATABASE_URL": lab.app_db_url,
        "REDIS_CLUSTER_NODES": ",".join(lab.redis_nodes),
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "RPC_URL": lab.rpc_url,
        "CHAIN_ID": str(CHAIN_ID),
        "PRIVATE_KEY": ANCHOR_KEY,
        "ANCHOR_SINK": ANCHOR_SINK,
        "ANCHOR_QUEUE": BULL_QUEUE,
        "ANCHOR_PREFIX": BULL_PREFIX,
        "ANCHOR_CONCURRENCY": "4",
        "DB_POOL_MAX": "5",
        "HOST": "127.0.0.1",
        "P3_APP_URL": lab.app_url,
        "P3_MESH_URL": "ws://127.0.0.1:%d/mesh/ws" % lab.app_port,
        "P3LAB_PEERS": str(lab.peers),
        "PYTHONUNBUFFERED": "1",
        OWNER_VAR: lab.dir,
    }


def app_program(lab):
    """The supervisor program of the lab's app: `p3app`, or `p3upstream` (P3's own server) for app=upstream."""
    if lab.upstream:
        from .upstream import PROGRAM

        return PROGRAM
    return APP


def programs(lab):
    from . import monitoring

    mon = list(monitoring.PROGRAMS) if lab.monitoring else []
    if lab.upstream:
        return [app_program(lab)] + mon
    from . import haproxy

    from . import notify

    extra = [haproxy.program_name(i) for i in range(2, lab.app_instances + 1)]
    return [APP, MESH] + extra + ([haproxy.PROGRAM] if extra else []) + [notify.PROGRAM] + mon


def _env_line(env):
    return ",".join('%s="%s"' % (k, v.replace("%", "%%")) for k, v in sorted(env.items()))


def conf_text(lab):
    from . import monitoring

    if lab.upstream:
        from . import upstream

        return (_conf_head(lab) + upstream.supervisor_section(lab, _env_line(upstream.env(lab)))
                + monitoring.program_sections(lab))
    return _conf_head(lab) + _conf_programs(lab) + monitoring.program_sections(lab)


def _conf_head(lab):
    return """; p3lab: generated, do not edit (rewritten by `p3lab up`)
[unix_http_server]
file={sock}
chmod=0700

[supervisord]
logfile={log}
pidfile={pid}
childlogdir={logdir}
directory={repo}
logfile_maxbytes=10MB
logfile_backups=1
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}
""".format(sock=lab.sup_sock, log=lab.sup_log, pid=lab.sup_pidfile, logdir=lab.log_dir, repo=REPO)


def program_section(name, command, directory, env_line, log, stopwaitsecs=5, autorestart=False, startretries=2,
                    log_maxbytes="20MB"):
    """One [program:x] section of the lab's supervisord.conf (the lab app, the mesh peers, P3's own server)."""
    return """
[program:{name}]
command={command}
directory={directory}
environment={env}
autostart=true
autorestart={autorestart}
startsecs=1
startretries={startretries}
stopsignal=TERM
stopwaitsecs={stopwaitsecs}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={log}
stdout_logfile_maxbytes={log_maxbytes}
stdout_logfile_backups=1
""".format(name=name, command=command, directory=directory, env=env_line, autorestart=str(autorestart).lower(),
           startretries=startretries, stopwaitsecs=stopwaitsecs, log=log, log_maxbytes=log_maxbytes)


# The lab app's stop bound: HTTP requests in flight (3 s) + its anchor worker's active jobs (ANCHOR_CLOSE_TIMEOUT,
# 8 s) + closing, before supervisor's SIGKILL (which would cut a job between its transaction and its receipt).
APP_STOPWAITSECS = 15


def _conf_programs(lab):
    env = _env_line(app_env(lab))
    app_dir = os.path.join(REPO, "lab", "app")
    text = (program_section(APP, "%s %s/p3app.py" % (VENV_PY, app_dir), REPO, env, lab.app_log,
                                    stopwaitsecs=APP_STOPWAITSECS)
            + program_section(MESH, "%s %s/meshpeers.py" % (VENV_PY, app_dir), REPO, env, lab.mesh_log,
                              autorestart=True, startretries=1000, log_maxbytes="10MB"))
    from . import notify  # the lab's notification receiver (EDA loop), lab/p3lablib/notify.py

    text += notify.supervisor_section(lab, program_section, _env_line({"PYTHONUNBUFFERED": "1"}), VENV_PY)
    if lab.app_instances > 1:
        # more instances of the same app on their own ports, behind HAProxy (lab/p3lablib/haproxy.py)
        from . import haproxy

        for i, port in enumerate(lab.app_ports[1:], 2):
            ienv = dict(app_env(lab), PORT=str(port))
            text += program_section(haproxy.program_name(i), "%s %s/p3app.py" % (VENV_PY, app_dir), REPO,
                                    _env_line(ienv), os.path.join(lab.log_dir, "%s.log" % haproxy.program_name(i)),
                                    stopwaitsecs=APP_STOPWAITSECS)
        text += program_section(haproxy.PROGRAM, "%s -db -f %s" % (haproxy.binary(), lab.haproxy_cfg), REPO, env,
                                os.path.join(lab.log_dir, "haproxy.log"), autorestart=True, log_maxbytes="10MB")
    return text


def proxy(lab):
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, "unix://" + lab.sup_sock)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running(lab):
    if not live_pid(lab.sup_pidfile) or not os.path.exists(lab.sup_sock):
        return False
    try:
        return proxy(lab).supervisor.getState()["statename"] == "RUNNING"
    except Exception:  # noqa: BLE001
        return False


def info(lab, name):
    """getProcessInfo or None."""
    try:
        return proxy(lab).supervisor.getProcessInfo(name)
    except Exception:  # noqa: BLE001
        return None


def pid_of(lab, name):
    inf = info(lab, name)
    if inf and inf.get("statename") in ("RUNNING", "STARTING", "STOPPING") and inf.get("pid"):
        return inf["pid"]
    return None


def ctl(lab, *args, timeout=30):
    return run([lab.supervisorctl, "-c", lab.sup_conf] + list(args), timeout=timeout, check=False)


def start(lab):
    """Write the config and start supervisord unless it runs. Returns True when started."""
    for p in ("supervisord", "supervisorctl"):
        if not os.access(os.path.join(os.path.dirname(VENV_PY), p), os.X_OK):
            raise LabError("missing %s in %s (pip install supervisor; see scripts/setup.sh)" % (p, os.path.dirname(VENV_PY)))
    for prog in ("p3app.py", "meshpeers.py"):
        path = os.path.join(REPO, "lab", "app", prog)
        if not os.path.exists(path):
            raise LabError("missing %s" % path)
    os.makedirs(lab.sup_dir, exist_ok=True)
    os.makedirs(lab.log_dir, exist_ok=True)
    lb_changed = False
    if lab.app_instances > 1 and not lab.upstream:
        from . import haproxy

        lb_changed = haproxy.write_config(lab)
    text = conf_text(lab)
    old = None
    if os.path.exists(lab.sup_conf):
        with open(lab.sup_conf) as fh:
            old = fh.read()
    if old != text:
        with open(lab.sup_conf, "w") as fh:
            fh.write(text)
    if running(lab):
        if old != text:
            ctl(lab, "update")  # restarts programs whose settings changed, removes programs no longer listed
        if lb_changed and pid_of(lab, "haproxy"):
            ctl(lab, "restart", "haproxy")  # a new server list
        return False
    pid = live_pid(lab.sup_pidfile)
    if pid:
        stop_pid(pid, 5)
    if os.path.exists(lab.sup_sock):
        os.unlink(lab.sup_sock)
    if len(lab.sup_sock) > 100:
        raise LabError("P3LAB_DIR is too deep: the supervisor socket path %s exceeds the unix socket limit" % lab.sup_sock)
    run([lab.supervisord, "-c", lab.sup_conf], timeout=15, env=lab.child_env(), cwd=REPO, what="supervisord")
    wait_until(lambda: running(lab), 10, 0.1, what="supervisord (see %s)" % lab.sup_log)
    return True


def ensure_program(lab, name):
    """Start the program when it is not running/starting. Returns True when started."""
    inf = info(lab, name)
    if inf is None:
        raise LabError("supervisord does not know program %s" % name)
    if inf["statename"] in ("RUNNING", "STARTING"):
        return False
    try:
        proxy(lab).supervisor.startProcess(name, True)
    except xmlrpc.client.Fault as e:
        if "ALREADY_STARTED" not in str(e):
            raise LabError("supervisor could not start %s: %s (see %s)" % (name, e.faultString, lab.app_log))
    return True


def stop(lab):
    pid = live_pid(lab.sup_pidfile)
    if not pid:
        return
    if running(lab):
        try:
            proxy(lab).supervisor.stopAllProcesses(True)
        except Exception:  # noqa: BLE001
            pass
        try:
            proxy(lab).supervisor.shutdown()
        except Exception:  # noqa: BLE001
            pass
        wait_until(lambda: not live_pid(lab.sup_pidfile), 10, 0.1)
    stop_pid(pid, 3)
