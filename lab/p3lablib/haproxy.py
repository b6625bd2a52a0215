"""HAProxy in front of the lab's app instances (`p3lab up --app-instances N`, N >= 2; docs/lab.md).

HAProxy (Debian's `haproxy`) runs as the supervisord program `haproxy` in the foreground (`-db`), listens on
127.0.0.1:<base+40>, balances round-robin over the programs p3app (base+30), p3app2 (base+31), ... with
`option httpchk` on GET /health, and serves its runtime API on the unix socket $P3LAB_DIR/haproxy/admin.sock
(level admin): `set server p3_app/app2 state drain|ready`, `show stat`, `show servers state`.
"""
import os
import shutil
import socket

from .common import LabError

BACKEND = "p3_app"
PROGRAM = "haproxy"


def server_name(i):
    """HAProxy server name of app instance i (1-based)."""
    return "app%d" % i


def program_name(i):
    """supervisord program of app instance i (1-based): p3app, p3app2, p3app3, ..."""
    return "p3app" if i == 1 else "p3app%d" % i


def binary():
    path = os.environ.get("P3LAB_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(path, os.X_OK):
        raise LabError("missing haproxy (apt-get install haproxy; see scripts/setup.sh) - needed by --app-instances")
    return path


def config_text(lab):
    servers = "\n".join("    server %s 127.0.0.1:%d check" % (server_name(i), port)
                        for i, port in enumerate(lab.app_ports, 1))
    return """# p3lab: generated, do not edit (rewritten by `p3lab up`)
global
    stats socket {sock} mode 600 level admin
    stats timeout 10s
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 15s
    timeout http-keep-alive 10s
    timeout check 2s

frontend p3_front
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
""".format(sock=lab.haproxy_sock, port=lab.lb_port, backend=BACKEND, servers=servers)


def write_config(lab):
    """Write haproxy.cfg; True when it changed."""
    os.makedirs(lab.haproxy_dir, exist_ok=True)
    text = config_text(lab)
    old = None
    if os.path.exists(lab.haproxy_cfg):
        with open(lab.haproxy_cfg) as fh:
            old = fh.read()
    if old != text:
        with open(lab.haproxy_cfg + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(lab.haproxy_cfg + ".tmp", lab.haproxy_cfg)
        return True
    return False


def command(lab, cmd, timeout=2.0):
    """One runtime API command on the admin socket; its answer (text)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(lab.haproxy_sock)
        s.sendall(cmd.encode() + b"\n")
        out = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            out.append(data)
        return b"".join(out).decode("utf-8", "replace")
    finally:
        s.close()


def servers(lab):
    """{server: {"status": ..., "scur": int}} from `show stat`; {} when HAProxy does not answer."""
    try:
        text = command(lab, "show stat")
    except OSError:
        return {}
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    head = lines[0][2:].split(",")
    out = {}
    for ln in lines[1:]:
        rec = dict(zip(head, ln.split(",")))
        if rec.get("pxname") == BACKEND and rec.get("svname") not in ("BACKEND", "FRONTEND", None):
            out[rec["svname"]] = {"status": rec.get("status"), "scur": int(rec.get("scur") or 0)}
    return out


ADMIN_STATES = {0: "ready", 8: "drain"}  # srv_admin_state bits: 0x01/0x02/0x04 maintenance, 0x08 drain


def admin_states(lab):
    """{server: "ready" | "drain" | "maint"} from `show servers state`; {} when HAProxy does not answer."""
    try:
        text = command(lab, "show servers state %s" % BACKEND)
    except OSError:
        return {}
    out = {}
    for ln in text.splitlines():
        f = ln.split()
        if len(f) > 6 and f[0].isdigit() and f[1] == BACKEND:
            bits = int(f[6])
            out[f[3]] = ADMIN_STATES.get(bits, "maint" if bits & 0x07 else "drain")
    return out


def fleet(lab):
    """Every server of the backend: {server: {"status" (checks: UP/DOWN/...), "admin" (ready/drain/maint), "scur"}}."""
    stat, admin = servers(lab), admin_states(lab)
    return dict((name, {"status": stat.get(name, {}).get("status"), "admin": admin.get(name),
                        "scur": stat.get(name, {}).get("scur")})
                for name in sorted(set(stat) | set(admin)))


def all_up(lab):
    srv = servers(lab)
    return len(srv) == len(lab.app_ports) and all(v["status"] == "UP" for v in srv.values())
