# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy runtime API over its admin socket (unix path or host:port): one command per connection, every call
bounded by a total deadline. Used by p3.recovery.haproxy_server (drain/ready one server of a backend)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import socket
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline, P3Error, describe_error, one_line

# `show servers state` srv_op_state / srv_admin_state bits (haproxy include/haproxy/server-t.h)
OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40   # FMAINT IMAINT CMAINT RMAINT HMAINT
ADMF_DRAIN = 0x08 | 0x10                        # FDRAIN IDRAIN


class HAProxyError(P3Error):
    """A runtime API call failed (one line naming the socket)."""


class RuntimeAPI(object):
    """The HAProxy runtime API on `address` (a unix socket path, or host:port for a TCP stats socket)."""

    def __init__(self, address, timeout=5.0, deadline=None):
        self.address = address
        self.timeout = float(timeout)
        self.deadline = deadline or Deadline(None)

    def _connect(self, timeout):
        if ":" in self.address and not self.address.startswith("/"):
            host, port = self.address.rsplit(":", 1)
            return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.address)
        return s

    def command(self, cmd):
        """Send one command, return its whole answer (the socket closes after it in non-interactive mode)."""
        self.deadline.check("haproxy %s" % self.address)
        timeout = self.deadline.bound(self.timeout)
        end = time.monotonic() + timeout
        sock = None
        try:
            sock = self._connect(timeout)
            sock.sendall(cmd.encode("utf-8") + b"\n")
            chunks = []
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (OSError, ValueError) as e:
            raise HAProxyError("haproxy %s: %s" % (self.address, describe_error(e, timeout=timeout)))
        finally:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        return b"".join(chunks).decode("utf-8", "replace")

    def show_stat(self):
        return parse_stat(self.command("show stat"))

    def servers_state(self, backend):
        text = self.command("show servers state %s" % backend)
        if "Can't find backend" in text or "No such backend" in text:
            raise HAProxyError("haproxy %s: no backend %s" % (self.address, backend))
        return parse_servers_state(text)

    def set_state(self, backend, server, state):
        """`set server <backend>/<server> state ready|drain|maint`; an answer other than empty is the error."""
        text = self.command("set server %s/%s state %s" % (backend, server, state)).strip()
        if text:
            raise HAProxyError("haproxy %s: set server %s/%s state %s: %s"
                               % (self.address, backend, server, state, one_line(text, 200)))

    def backend(self, backend):
        """{server name: view} of one backend (see server_view)."""
        states = self.servers_state(backend)
        stats = dict(((r.get("pxname"), r.get("svname")), r) for r in self.show_stat())
        out = {}
        for name, st in states.items():
            out[name] = server_view(st, stats.get((backend, name), {}))
        return out


def parse_stat(text):
    """`show stat` CSV -> list of dicts (header line starts with '# ')."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise HAProxyError("unexpected answer to show stat: %s" % one_line(text, 120))
    head = lines[0][2:].split(",")
    return [dict(zip(head, ln.split(","))) for ln in lines[1:]]


def parse_servers_state(text):
    """`show servers state <backend>` -> {srv_name: {field: value}}."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = None
    out = {}
    for ln in lines:
        if ln.startswith("# be_id"):
            head = ln[2:].split()
            continue
        if ln.startswith("#") or head is None or ln[:1].isalpha():
            continue
        fields = ln.split()
        if len(fields) < len(head[:10]):
            continue
        rec = dict(zip(head, fields))
        out[rec.get("srv_name")] = rec
    if head is None:
        raise HAProxyError("unexpected answer to show servers state: %s" % one_line(text, 120))
    return out


def server_view(state, stat):
    """What matters for a rolling restart: admin (ready|drain|maint), op (running|stopped|...), status (UP/DOWN/
    DRAIN/MAINT as `show stat` says), scur (sessions now), healthy (running, checks UP, admin not maint)."""
    adm = int(state.get("srv_admin_state", "0") or 0)
    op = OP_STATES.get(int(state.get("srv_op_state", "0") or 0), "unknown")
    admin = "maint" if adm & ADMF_MAINT else ("drain" if adm & ADMF_DRAIN else "ready")
    status = stat.get("status", "")
    try:
        scur = int(stat.get("scur") or 0)
    except ValueError:
        scur = 0
    return {"admin": admin, "op": op, "status": status, "scur": scur,
            "up": op == "running" and not status.startswith(("DOWN", "MAINT", "NOLB")),
            "healthy": op == "running" and admin != "maint" and not status.startswith(("DOWN", "MAINT", "NOLB"))}


def serving(view):
    """Servers that take new traffic now: up and ready (not drained, not in maintenance)."""
    return sorted(n for n, v in view.items() if v["up"] and v["admin"] == "ready")


def drain_refusal(view, server, min_serving=1):
    """Why draining `server` must not happen now (None when it may): it would leave fewer than min_serving
    servers taking traffic."""
    if server not in view:
        return "no server %s in the backend (servers: %s)" % (server, ", ".join(sorted(view)) or "none")
    others = [n for n in serving(view) if n != server]
    if len(others) < min_serving:
        return ("refusing to drain %s: it would leave %d server(s) taking traffic (%s), fewer than %d"
                % (server, len(others), ", ".join(others) or "none", min_serving))
    return None
