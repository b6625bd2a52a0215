"""The small TLS lab (`p3lab tls-up | tls-down`): a private CA, a server certificate for 127.0.0.1, a Redis Cluster
that speaks TLS only (3 masters + 3 replicas: `port 0`, `tls-port`, `tls-cluster yes`, `tls-replication yes`) and a
PostgreSQL that accepts SSL connections only (`ssl = on`, `hostssl` in pg_hba.conf), and the default lab's app
behind HTTPS (HAProxy TLS termination on P3LAB_BASE_PORT + 620, certificate signed by the private CA).

Its own state dir ($P3LAB_TLS_DIR; default <repo>/.state/lab-tls, or $P3LAB_DIR-tls when P3LAB_DIR is set) and ports (P3LAB_BASE_PORT + 600: Redis +601..+606,
PostgreSQL +610), so it runs beside the default lab. A second CA that signed nothing (other-ca.crt) serves the
wrong-CA checks. Certificates are made with the openssl command line tool; nothing else beyond the default lab's
binaries is needed.
"""
import os
import signal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import pg, rediscluster
from .common import (REDIS_PASSWORD, REPO, Lab, LabError, kill, live_pid, log, pid_alive, port_listening, run,
                     wait_until, write_json)

PORT_OFFSET = 600
HTTPS_OFFSET = 20  # the app over HTTPS, from the TLS lab's base
NODE_TIMEOUT_MS = 5000
DEFAULT_DIR = os.path.join(REPO, ".state", "lab-tls")

HBA = """# p3lab tls: SSL connections only
local all postgres trust
hostssl all all 127.0.0.1/32 scram-sha-256
hostnossl all all 0.0.0.0/0 reject
"""

SSL_CONF = """
# p3lab tls
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
"""


class TlsLab(object):
    """Paths and ports of the TLS lab; `lab` is a Lab on the TLS lab's dir and base port (PostgreSQL reuses pg.py)."""

    def __init__(self, base=None, directory=None):
        main = Lab()
        if base is None:
            base = main.base + PORT_OFFSET
        default_dir = DEFAULT_DIR if main.is_default_dir else main.dir.rstrip("/") + "-tls"
        self.dir = os.path.abspath(directory or os.environ.get("P3LAB_TLS_DIR") or default_dir)
        saved = dict((k, os.environ.get(k)) for k in ("P3LAB_BASE_PORT", "P3LAB_DIR"))
        os.environ["P3LAB_BASE_PORT"], os.environ["P3LAB_DIR"] = str(base), self.dir
        try:
            self.lab = Lab()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.base = base
        self.redis_ports = self.lab.redis_ports
        self.pg_port = self.lab.pg_port
        self.cert_dir = os.path.join(self.dir, "certs")
        self.ca_cert = os.path.join(self.cert_dir, "ca.crt")
        self.ca_key = os.path.join(self.cert_dir, "ca.key")
        self.other_ca_cert = os.path.join(self.cert_dir, "other-ca.crt")
        self.server_cert = os.path.join(self.cert_dir, "server.crt")
        self.server_key = os.path.join(self.cert_dir, "server.key")
        self.client_cert = os.path.join(self.cert_dir, "client.crt")
        self.client_key = os.path.join(self.cert_dir, "client.key")
        self.redis_nodes = ["127.0.0.1:%d" % p for p in self.redis_ports]
        self.admin_db_url = self.lab.admin_db_url
        self.info_json = os.path.join(self.dir, "tls-lab.json")
        self.https_port = base + HTTPS_OFFSET
        self.app_https_url = "https://127.0.0.1:%d" % self.https_port
        self.app_backend_port = main.app_port
        self.haproxy_cfg = os.path.join(self.dir, "haproxy-https.cfg")
        self.haproxy_pid = os.path.join(self.dir, "haproxy-https.pid")

    def info(self):
        """What a test or an inventory needs (the Redis password and the DSN are the lab's well-known secrets)."""
        return {
            "redis_nodes": self.redis_nodes, "redis_password": REDIS_PASSWORD, "pg_port": self.pg_port,
            "database_url": self.admin_db_url, "ca_cert": self.ca_cert, "other_ca_cert": self.other_ca_cert,
            "client_cert": self.client_cert, "client_key": self.client_key, "dir": self.dir,
            "redis_pidfiles": dict((n, self.lab.redis_pidfile(i + 1)) for i, n in enumerate(self.redis_nodes)),
            "app_https_url": self.app_https_url,
        }


# ---------------------------------------------------------------- certificates


def _openssl(args, what):
    run(["openssl"] + args, timeout=30, what="openssl %s (%s)" % (args[0], what))


def _ca(key, cert, name):
    _openssl(["req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=%s" % name], name)


def _signed(t, key, cert, name, ext):
    csr = cert + ".csr"
    _openssl(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", key,
              "-out", csr, "-subj", "/CN=%s" % name], name)
    extfile = cert + ".ext"
    with open(extfile, "w") as fh:
        fh.write(ext)
    _openssl(["x509", "-req", "-in", csr, "-CA", t.ca_cert, "-CAkey", t.ca_key, "-CAcreateserial", "-out", cert,
              "-days", "30", "-extfile", extfile], name)
    os.unlink(csr)
    os.unlink(extfile)


def make_certs(t):
    """A private CA, a server certificate for 127.0.0.1/localhost, a client certificate and an unrelated CA (once)."""
    if all(os.path.exists(p) for p in (t.ca_cert, t.server_cert, t.client_cert, t.other_ca_cert)):
        return False
    os.makedirs(t.cert_dir, exist_ok=True)
    _ca(t.ca_key, t.ca_cert, "p3lab-tls-ca")
    _ca(os.path.join(t.cert_dir, "other-ca.key"), t.other_ca_cert, "p3lab-other-ca")
    _signed(t, t.server_key, t.server_cert, "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    _signed(t, t.client_key, t.client_cert, "p3-recovery", "extendedKeyUsage=clientAuth\n")
    for p in os.listdir(t.cert_dir):
        # libpq refuses a client key that others can read
        os.chmod(os.path.join(t.cert_dir, p), 0o600 if p.endswith(".key") else 0o644)
    return True


# ---------------------------------------------------------------- Redis over TLS


def client(t, port, timeout=1.0):
    return redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True, retry=Retry(NoBackoff(), 0),
                       ssl=True, ssl_ca_certs=t.ca_cert, ssl_cert_reqs="required")


def _ping(t, port):
    try:
        return bool(client(t, port, 0.5).ping())
    except Exception:  # noqa: BLE001 - not yet
        return False


def node_conf(t, i):
    d = t.lab.redis_node_dir(i)
    return "\n".join([
        "port 0",
        "tls-port %d" % t.redis_ports[i - 1],
        "tls-cert-file %s" % t.server_cert,
        "tls-key-file %s" % t.server_key,
        "tls-ca-cert-file %s" % t.ca_cert,
        # clients may present a certificate (verified against the CA) but need not
        "tls-auth-clients optional",
        "tls-cluster yes",
        "tls-replication yes",
        "bind 127.0.0.1",
        "protected-mode no",
        "daemonize yes",
        "pidfile %s" % t.lab.redis_pidfile(i),
        "logfile %s" % os.path.join(d, "redis.log"),
        "dir %s" % d,
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout %d" % NODE_TIMEOUT_MS,
        # a dead master is failed over by the recovery under test, not by its replica on its own
        "cluster-replica-no-failover yes",
        "requirepass %s" % REDIS_PASSWORD,
        "masterauth %s" % REDIS_PASSWORD,
        'save ""',
        "appendonly no",
        "repl-diskless-sync-delay 0",
        "",
    ])


def start_redis(t):
    for i in range(1, 7):
        port = t.redis_ports[i - 1]
        if live_pid(t.lab.redis_pidfile(i)) and _ping(t, port):
            continue
        for p in (port, port + 10000):
            if port_listening(p):
                raise LabError("port %d is in use by another process (needed by the TLS lab's redis%d)" % (p, i))
        d = t.lab.redis_node_dir(i)
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "redis.conf")
        with open(conf, "w") as fh:
            fh.write(node_conf(t, i))
        run([rediscluster.server_binary(), conf], timeout=10, env=t.lab.child_env(), what="TLS redis%d" % i)
    for port in t.redis_ports:
        wait_until(lambda: _ping(t, port), 10, 0.05, what="TLS redis on port %d" % port)
    info = client(t, t.redis_ports[0]).cluster("info")
    if int(info.get("cluster_known_nodes", 1)) <= 1 and int(info.get("cluster_slots_assigned", 0)) == 0:
        run([rediscluster.cli_binary(), "--tls", "--cacert", t.ca_cert, "--cluster", "create"] + t.redis_nodes
            + ["--cluster-replicas", "1", "--cluster-yes", "-a", REDIS_PASSWORD, "--no-auth-warning"],
            timeout=30, what="redis-cli --tls --cluster create")
    wait_until(lambda: cluster_healthy(t), 30, 0.1, what="the TLS Redis Cluster to be ok with 3 replicas in sync")


def cluster_healthy(t):
    """Every node says cluster_state:ok and each replica's link to its master is up."""
    linked = 0
    for port in t.redis_ports:
        c = client(t, port)
        if c.cluster("info").get("cluster_state") != "ok":
            return False
        repl = c.info("replication")
        if repl.get("role") == "slave":
            if repl.get("master_link_status") != "up":
                return False
            linked += 1
    return linked == 3


def stop_redis(t):
    for i in range(1, 7):
        pid = live_pid(t.lab.redis_pidfile(i))
        if pid:
            kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 3, 0.05)


# ---------------------------------------------------------------- PostgreSQL with SSL


def start_pg(t):
    fresh = pg.init(t.lab)
    if fresh:
        uid, gid = pg._pg_user()
        for src, name, mode in ((t.server_cert, "server.crt", 0o644), (t.server_key, "server.key", 0o600),
                                (t.ca_cert, "ca.crt", 0o644)):
            dest = os.path.join(t.lab.pg_data, name)
            with open(src, "rb") as fin, open(dest, "wb") as fout:
                fout.write(fin.read())
            os.chown(dest, uid, gid)
            os.chmod(dest, mode)
        with open(os.path.join(t.lab.pg_data, "pg_hba.conf"), "w") as fh:
            fh.write(HBA)
        with open(os.path.join(t.lab.pg_data, "postgresql.conf"), "a") as fh:
            fh.write(SSL_CONF)
    pg.start(t.lab)
    pg.setup(t.lab)


# ---------------------------------------------------------------- the app over HTTPS


def start_https(t):
    """HAProxy (daemon) terminating TLS with the CA-signed server certificate in front of the default lab's app."""
    from . import haproxy

    pem = os.path.join(t.cert_dir, "server.pem")
    with open(t.server_cert) as c, open(t.server_key) as k, open(pem + ".tmp", "w") as out:
        out.write(c.read() + k.read())
    os.chmod(pem + ".tmp", 0o600)
    os.replace(pem + ".tmp", pem)
    with open(t.haproxy_cfg, "w") as fh:
        fh.write("""# p3lab tls: the app over HTTPS (generated)
global
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 15s
frontend p3_https
    bind 127.0.0.1:%d ssl crt %s
    default_backend p3_app_plain
backend p3_app_plain
    server app1 127.0.0.1:%d
""" % (t.https_port, pem, t.app_backend_port))
    if live_pid(t.haproxy_pid):
        return
    if port_listening(t.https_port):
        raise LabError("port %d is in use by another process (needed by the TLS lab's HTTPS front)" % t.https_port)
    run([haproxy.binary(), "-D", "-f", t.haproxy_cfg, "-p", t.haproxy_pid], timeout=10, what="haproxy (HTTPS front)")
    wait_until(lambda: port_listening(t.https_port), 10, 0.05, what="the HTTPS front on port %d" % t.https_port)


def stop_https(t):
    pid = live_pid(t.haproxy_pid)
    if pid:
        kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 3, 0.05)


# ---------------------------------------------------------------- up / down


def up(t=None):
    """Start the TLS lab (idempotent); returns its info (also written to tls-lab.json)."""
    t = t or TlsLab()
    rediscluster.check_binaries()
    pg.check_binaries()
    os.makedirs(t.dir, exist_ok=True)
    os.chmod(t.dir, 0o755)
    make_certs(t)
    start_redis(t)
    start_pg(t)
    start_https(t)
    info = t.info()
    write_json(t.info_json, info)
    log("TLS lab up (base port %d): redis %s, postgres 127.0.0.1:%d, app %s, CA %s"
        % (t.base, ",".join(t.redis_nodes), t.pg_port, t.app_https_url, t.ca_cert))
    return info


def down(t=None, purge=False):
    t = t or TlsLab()
    if not os.path.isdir(t.dir):
        return {"down": True, "note": "no TLS lab state"}
    stop_redis(t)
    stop_https(t)
    pg.stop(t.lab)
    if purge:
        import shutil

        shutil.rmtree(t.dir, ignore_errors=True)
    return {"down": True, "purged": purge}
