"""Lab configuration (paths, ports, credentials) and small process/network helpers."""
import datetime
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
VENV = os.path.join(REPO, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")

REDIS_PASSWORD = "p3redis-lab-secret"
PG_DB = "p3"
PG_APP_USER, PG_APP_PASSWORD = "p3app", "p3app-lab-pw"
PG_ADMIN_USER, PG_ADMIN_PASSWORD = "p3admin", "p3admin-lab-secret"
CHAIN_ID = 31337
FAUCET = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
FAUCET_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANCHOR_WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ANCHOR_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ANCHOR_SINK = "0x000000000000000000000000000000000000a11c"
ONE_ETH = 10 ** 18
BULL_PREFIX = "{bull}"
BULL_QUEUE = "anchor"
LEAK_APP_NAME = "p3-lab-leak"
REDIS_NODE_TIMEOUT_MS = 15000
# Every process the lab starts carries this variable (value: the lab dir), so leftovers can be found and killed.
OWNER_VAR = "P3LAB_OWNER"


class LabError(Exception):
    """An expected failure: printed as one line, exit code 1."""


def _int_env(name, default, lo, hi):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        val = int(raw)
    except ValueError:
        raise LabError("%s must be an integer, got %r" % (name, raw))
    if not lo <= val <= hi:
        raise LabError("%s must be between %d and %d, got %d" % (name, lo, hi, val))
    return val


class Lab(object):
    """Everything derived from the environment: ports, paths, URLs."""

    def __init__(self):
        self.base = _int_env("P3LAB_BASE_PORT", 17000, 1024, 65535 - 10010)
        default_dir = os.path.join(REPO, ".lab")
        raw_dir = os.environ.get("P3LAB_DIR") or default_dir
        self.dir = os.path.abspath(raw_dir)
        self.is_default_dir = os.path.realpath(self.dir) == os.path.realpath(default_dir)
        self.peers = _int_env("P3LAB_PEERS", 12, 0, 1000)
        self.backlog = _int_env("P3LAB_BACKLOG", 200, 1, 100000)

        self.redis_ports = [self.base + i for i in range(1, 7)]
        self.pg_port = self.base + 10
        self.anvil_port = self.base + 20
        self.app_port = self.base + 30

        self.redis_dir = os.path.join(self.dir, "redis")
        self.pg_dir = os.path.join(self.dir, "pg")
        self.pg_data = os.path.join(self.pg_dir, "data")
        self.pg_sock = os.path.join(self.pg_dir, "sock")
        self.pg_log = os.path.join(self.pg_dir, "log", "postgres.log")
        self.anvil_dir = os.path.join(self.dir, "anvil")
        self.anvil_pidfile = os.path.join(self.anvil_dir, "anvil.pid")
        self.anvil_log = os.path.join(self.anvil_dir, "anvil.log")
        self.sup_dir = os.path.join(self.dir, "supervisor")
        self.sup_conf = os.path.join(self.sup_dir, "supervisord.conf")
        self.sup_sock = os.path.join(self.sup_dir, "supervisor.sock")
        self.sup_pidfile = os.path.join(self.sup_dir, "supervisord.pid")
        self.sup_log = os.path.join(self.sup_dir, "supervisord.log")
        self.log_dir = os.path.join(self.dir, "logs")
        self.app_log = os.path.join(self.log_dir, "p3app.log")
        self.mesh_log = os.path.join(self.log_dir, "meshpeers.log")
        self.holder_dir = os.path.join(self.dir, "holder")
        self.holder_pidfile = os.path.join(self.holder_dir, "holder.pid")
        self.holder_state = os.path.join(self.holder_dir, "holder.json")
        self.holder_log = os.path.join(self.holder_dir, "holder.log")
        self.lab_json = os.path.join(self.dir, "lab.json")
        self.faults_json = os.path.join(self.dir, "faults.json")
        self.secrets_file = os.path.join(self.dir, "lab-secrets.yml")
        self.inventory = (os.path.join(REPO, "lab", "inventory.yml") if self.is_default_dir
                          else os.path.join(self.dir, "inventory.yml"))

        # app mode: "lab" (lab/app/p3app.py) or "upstream" (P3 Protocol's own server, lab/p3lablib/upstream.py);
        # chosen by `up --app`, remembered in $P3LAB_DIR/mode.json
        self.mode_json = os.path.join(self.dir, "mode.json")
        mode = read_json(self.mode_json, {}) or {}
        self.app_mode = mode.get("app") or "lab"
        self.bullmq = mode.get("bullmq") or "working"
        # `up --app-instances N` (lab app only): N app programs on app_port..app_port+N-1 behind HAProxy (lb_port)
        self.app_instances = int(mode.get("app_instances") or 1)
        # `up --monitoring` / `monitoring-up`: Prometheus, Alertmanager and exporters on base+50.. (monitoring.py)
        self.monitoring = bool(mode.get("monitoring"))
        self.app_ports = [self.app_port + i for i in range(self.app_instances)]
        self.lb_port = self.base + 40
        self.haproxy_dir = os.path.join(self.dir, "haproxy")
        self.haproxy_sock = os.path.join(self.haproxy_dir, "admin.sock")
        self.haproxy_cfg = os.path.join(self.haproxy_dir, "haproxy.cfg")
        self.lb_url = "http://127.0.0.1:%d" % self.lb_port if self.app_instances > 1 else None
        self.p3redis_port = self.base + 7
        self.upstream_dir = os.path.join(self.dir, "upstream")
        if self.upstream:
            self.app_log = os.path.join(self.log_dir, "p3upstream.log")

        self.app_url = "http://127.0.0.1:%d" % self.app_port
        self.rpc_url = "http://127.0.0.1:%d" % self.anvil_port
        self.redis_nodes = ["127.0.0.1:%d" % p for p in self.redis_ports]
        self.db_name = "p3upstream" if self.upstream else PG_DB
        self.app_db_url = "postgresql://%s:%s@127.0.0.1:%d/%s" % (PG_APP_USER, PG_APP_PASSWORD, self.pg_port,
                                                                   self.db_name)
        self.admin_db_url = "postgresql://%s:%s@127.0.0.1:%d/%s" % (PG_ADMIN_USER, PG_ADMIN_PASSWORD, self.pg_port,
                                                                     self.db_name)
        self.supervisorctl = os.path.join(VENV, "bin", "supervisorctl")
        self.supervisord = os.path.join(VENV, "bin", "supervisord")

    @property
    def upstream(self):
        return self.app_mode == "upstream"

    @property
    def pg_max_connections(self):
        """P3's own pools open up to 20 connections (server/pg-storage.ts 10 + server/db.ts 10 in development), which
        alone would fill the lab app's 20 (17 usable): the upstream lab's PostgreSQL has room for them, and is still
        small enough for db-exhaustion to fill quickly. A running server keeps its setting until `down`."""
        return 40 if self.upstream else 20

    def set_mode(self, app, bullmq, app_instances=None):
        """Record the app mode (`up --app/--bullmq/--app-instances`) and recompute what depends on it."""
        os.makedirs(self.dir, exist_ok=True)
        mode = read_json(self.mode_json, {}) or {}  # other keys (monitoring) stay
        mode.update(app=app, bullmq=bullmq, app_instances=app_instances or self.app_instances)
        write_json(self.mode_json, mode)
        self.__init__()

    def redis_node_dir(self, i):
        return os.path.join(self.redis_dir, "node%d" % i)

    def redis_pidfile(self, i):
        return os.path.join(self.redis_node_dir(i), "redis.pid")

    def all_ports(self):
        """Every TCP port a running lab listens on."""
        from .monitoring import program_ports

        return (self.redis_ports + [p + 10000 for p in self.redis_ports]
                + [self.pg_port, self.anvil_port] + self.app_ports + ([self.p3redis_port] if self.upstream else [])
                + ([self.lb_port] if self.lb_url else [])
                + (program_ports(self) if self.monitoring else []))

    def child_env(self, extra=None):
        env = dict(os.environ)
        env[OWNER_VAR] = self.dir
        if extra:
            env.update(extra)
        return env


# ---------------------------------------------------------------- output


def log(msg):
    sys.stderr.write("p3lab: %s\n" % msg)
    sys.stderr.flush()


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


class DirLock(object):
    """Serialise mutating commands (up/down/fault/heal) on one lab dir."""

    def __init__(self, lab):
        self.path = os.path.join(lab.dir, ".lock")
        self.fh = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another p3lab command on %s to finish" % os.path.dirname(self.path))
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
        finally:
            self.fh.close()


# ---------------------------------------------------------------- waiting


def wait_until(pred, timeout, interval=0.2, what=None):
    """Poll pred() until truthy; returns its value, or raises LabError(what) / returns None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            val = pred()
        except Exception:  # noqa: BLE001 - a probe failing means "not yet"
            val = None
        if val:
            return val
        if time.monotonic() >= deadline:
            if what:
                raise LabError("timed out after %.0f s waiting for %s" % (timeout, what))
            return None
        time.sleep(interval)


# ---------------------------------------------------------------- processes


def read_pid(path):
    try:
        with open(path) as fh:
            return int(fh.readline().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError):
        return True


def live_pid(path):
    pid = read_pid(path)
    return pid if pid_alive(pid) else None


def kill(pid, sig=signal.SIGKILL):
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(pid, sig=signal.SIGKILL):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        kill(pid, sig)


def stop_pid(pid, timeout=5.0, sig=signal.SIGTERM):
    """TERM, wait, then KILL. Returns True when the process is gone."""
    if not pid_alive(pid):
        return True
    kill(pid, sig)
    if wait_until(lambda: not pid_alive(pid), timeout, 0.05):
        return True
    kill(pid, signal.SIGKILL)
    return bool(wait_until(lambda: not pid_alive(pid), 3, 0.05))


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def owned_pids(lab):
    """Processes started by this lab (they carry P3LAB_OWNER=<lab dir>), except this one and its ancestors."""
    marker = ("%s=%s" % (OWNER_VAR, lab.dir)).encode()
    skip = set()
    p = os.getpid()
    while p > 1:
        skip.add(p)
        try:
            with open("/proc/%d/stat" % p) as fh:
                stat = fh.read()
            p = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in skip:
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in env and pid_alive(pid):
            out.append(pid)
    return out


def run(cmd, timeout=60, env=None, cwd=None, check=True, what=None):
    """Run a short command; returns (rc, combined output). Output goes through a file so that
    daemons started by the command never hold our pipe open."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, env=env, cwd=cwd)
            rc = proc.returncode
        except FileNotFoundError:
            raise LabError("missing binary: %s" % cmd[0])
        except subprocess.TimeoutExpired:
            raise LabError("%s timed out after %d s" % (what or cmd[0], timeout))
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if check and rc != 0:
        last = [line for line in text.strip().splitlines() if line.strip()]
        raise LabError("%s failed (rc %d): %s" % (what or " ".join(cmd[:2]), rc, last[-1] if last else "no output"))
    return rc, text


# ---------------------------------------------------------------- network


def _listen_inodes():
    """port -> set(socket inodes) of TCP sockets in LISTEN state (any address, v4 and v6)."""
    res = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":
                        continue
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    res.setdefault(port, set()).add(parts[9])
        except OSError:
            pass
    return res


def listening_ports():
    return set(_listen_inodes())


def port_listening(port):
    return port in _listen_inodes()


def listener_pids(ports):
    """port -> pid of the process listening there (for the given ports), from /proc."""
    inodes = _listen_inodes()
    want = {}
    for port in ports:
        for ino in inodes.get(port, ()):
            want["socket:[%s]" % ino] = port
    res = {}
    if not want:
        return res
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % name
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in want:
                res.setdefault(want[target], int(name))
    return res


def tcp_open(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def http(method, url, body=None, timeout=3.0, headers=None):
    """Returns (status, parsed JSON or text); status None when the request could not be made."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except Exception as e:  # noqa: BLE001 - refused, timeout, reset: all mean "no answer"
        return None, str(getattr(e, "reason", e))
    try:
        return status, json.loads(raw.decode("utf-8"))
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def rpc(url, method, params=None, timeout=3.0):
    """JSON-RPC call; returns result or raises LabError."""
    status, body = http("POST", url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
                        timeout=timeout)
    if status is None:
        raise LabError("%s: %s" % (method, body))
    if not isinstance(body, dict) or "result" not in body:
        raise LabError("%s: %s" % (method, body.get("error") if isinstance(body, dict) else body))
    return body["result"]
