"""`p3lab status`: every number read straight from the services, each read bounded and null when it fails."""
import json
from concurrent.futures import ThreadPoolExecutor

from . import anvil, pg, rediscluster, supervisor
from .common import (ANCHOR_WALLET, BULL_PREFIX, BULL_QUEUE, LEAK_APP_NAME, ONE_ETH, http, live_pid, listener_pids,
                     read_json, tcp_open)

SESSION_FIELDS = ("sessionId", "deviceId", "createdAt", "expiresAt")
BACKLOG_PROBLEM = 50  # waiting anchor jobs from which status calls the queue backlogged


def session_ok(raw, ttl):
    """A session is valid when it is a JSON object with the four required fields and it expires (has a TTL)."""
    if raw is None or isinstance(raw, Exception):
        return False
    if not isinstance(ttl, int) or ttl < 0:
        return False
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and all(k in obj for k in SESSION_FIELDS)


def scan_sessions(port, on_page, count=1000):
    """SCAN session:* on one node; on_page(keys, values, ttls) per page (values raw bytes or Exception)."""
    c = rediscluster.client(port, decode=False, timeout=2)
    cursor = 0
    while True:
        cursor, keys = c.scan(cursor=cursor, match=b"session:*", count=count)
        if keys:
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.get(k)
                pipe.ttl(k)
            res = pipe.execute(raise_on_error=False)
            on_page(keys, res[0::2], res[1::2])
        if cursor == 0:
            break


def masters_of(nodes):
    return sorted([n for n in nodes if n["role"] == "master" and n["slots"] and not n["failing"]],
                  key=lambda n: n["port"])


def sessions(lab, nodes, down=()):
    """{'valid': n, 'corrupt': n} over every master, or nulls when a master cannot be read."""
    counts = {"valid": 0, "corrupt": 0}
    masters = masters_of(nodes or [])
    if not masters:
        return {"valid": None, "corrupt": None, "unreadable": []}

    def page(keys, values, ttls):
        for v, t in zip(values, ttls):
            if v is None:  # gone between SCAN and GET
                continue
            if isinstance(v, Exception) and "WRONGTYPE" not in str(v):
                raise v
            counts["valid" if session_ok(v, t) else "corrupt"] += 1

    unreadable = []
    for m in masters:
        if m["port"] in down:
            unreadable.append(m["address"])
            continue
        try:
            scan_sessions(m["port"], page)
        except Exception:  # noqa: BLE001 - a dead master, or CLUSTERDOWN
            unreadable.append(m["address"])
    if len(unreadable) == len(masters):
        return {"valid": None, "corrupt": None, "unreadable": unreadable}
    counts["unreadable"] = unreadable
    return counts


def queue_counts(client, base):
    """waiting/active/failed/completed/delayed of the BullMQ queue whose keys start with base (prefix:queue)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(base + ":wait")
    pipe.llen(base + ":active")
    pipe.zcard(base + ":failed")
    pipe.zcard(base + ":completed")
    pipe.zcard(base + ":delayed")
    return dict(zip(("waiting", "active", "failed", "completed", "delayed"), pipe.execute()))


def anchor_counts(lab, nodes, down=()):
    keys = {s: "%s:%s:%s" % (BULL_PREFIX, BULL_QUEUE, s) for s in ("wait", "active", "failed", "completed", "delayed")}
    out = {"waiting": None, "active": None, "failed": None, "completed": None, "delayed": None}
    port = rediscluster.owner_port_for_key(lab, keys["wait"], nodes) if nodes else None
    if not port or port in down:
        return out
    try:
        out.update(queue_counts(rediscluster.client(port, timeout=1), "%s:%s" % (BULL_PREFIX, BULL_QUEUE)))
    except Exception:  # noqa: BLE001
        pass
    return out


def _redis(lab):
    services = {}
    for i, port in enumerate(lab.redis_ports, 1):
        up = rediscluster.ping(port)
        pid = live_pid(lab.redis_pidfile(i))
        services["redis%d" % i] = {"port": port, "pid": pid, "up": up}
    down = set(p for i, p in enumerate(lab.redis_ports, 1) if not services["redis%d" % i]["up"])
    red = {"cluster_state": None, "masters": None, "replicas": None, "slots_assigned": None, "nodes": []}
    port, nodes = rediscluster.view(lab, prefer=next((p for p in lab.redis_ports
                                                      if services["redis%d" % (p - lab.base)]["up"]), None))
    if nodes:
        try:
            inf = rediscluster.cluster_info(port, timeout=0.7)
            red["cluster_state"] = inf.get("cluster_state")
            red["slots_assigned"] = int(inf.get("cluster_slots_assigned", 0))
        except Exception:  # noqa: BLE001
            pass
        good = [n for n in nodes if not n["failing"]]
        red["masters"] = len([n for n in good if n["role"] == "master"])
        red["replicas"] = len([n for n in good if n["role"] == "replica"])
        red["nodes"] = [{"address": n["address"], "role": n["role"], "failing": n["failing"],
                         "flags": sorted(n["flags"] - {"myself"}),
                         "slots": sum(b - a + 1 for a, b in n["slots"])} for n in sorted(nodes, key=lambda n: n["port"] or 0)]
        red["seen_from"] = "127.0.0.1:%d" % port
        # replicas whose link to the master is down (INFO replication on each live replica)
        unlinked = []
        for n in good:
            if n["role"] == "replica" and n["port"] in down:
                unlinked.append(n["address"])
            elif n["role"] == "replica":
                try:
                    if rediscluster.replication(n["port"], timeout=0.5).get("master_link_status") != "up":
                        unlinked.append(n["address"])
                except Exception:  # noqa: BLE001
                    unlinked.append(n["address"])
        red["replicas_unlinked"] = unlinked
    sess = sessions(lab, nodes, down)
    anchor = anchor_counts(lab, nodes, down)
    return {"services": services, "redis": red, "sessions": sess, "anchor": anchor}


def _pg(lab):
    pid = pg.postmaster_pid(lab)
    db = {"connections": None, "max_connections": None, "leaked": None}
    up = False
    conn = None
    for connect in (pg.connect_admin, pg.connect_local):
        try:
            conn = connect(lab, timeout=2)
            break
        except Exception as e:  # noqa: BLE001
            conn = None
            if "timeout" in str(e):  # a hung server: the socket would hang the same way
                break
    if conn is not None:
        up = True
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = 2000")
                cur.execute("SELECT count(*), count(*) FILTER (WHERE application_name = %s), "
                            "current_setting('max_connections')::int FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend'", (LEAK_APP_NAME,))
                db["connections"], db["leaked"], db["max_connections"] = cur.fetchone()
        except Exception:  # noqa: BLE001
            pass
        finally:
            conn.close()
    return {"services": {"postgres": {"port": lab.pg_port, "pid": pid, "up": up}}, "db": db}


def _anvil(lab):
    up = anvil.answering(lab)
    bal = None
    if up:
        try:
            bal = anvil.balance(lab)
        except Exception:  # noqa: BLE001
            pass
    return {"services": {"anvil": {"port": lab.anvil_port, "pid": live_pid(lab.anvil_pidfile), "up": up}},
            "wallet": {"address": ANCHOR_WALLET, "balance_wei": bal}}


def _app(lab):
    code, body = http("GET", lab.app_url + "/health", timeout=2.5)
    app = {"healthy": code == 200, "status_code": code, "health": body if isinstance(body, dict) else None,
           "error": None if code else body}
    return {"app": app}


def _lb(lab):
    """HAProxy's view of the fleet (with --app-instances N): each server's check status and admin state."""
    if not lab.lb_url:
        return {}
    from . import haproxy

    return {"lb": {"url": lab.lb_url, "servers": haproxy.fleet(lab)}}


def _mesh(lab):
    mesh = {"peers": None, "relay": None, "active": None}
    pcode, pbody = http("GET", lab.app_url + "/pulse/status", timeout=2.5)
    if pcode == 200 and isinstance(pbody, dict):
        st = pbody.get("status") or {}
        mesh = {"peers": st.get("subscribers"), "relay": st.get("relay"), "active": st.get("active")}
    return {"mesh": mesh}


def _sup(lab):
    sup_pid = live_pid(lab.sup_pidfile)
    sup_up = supervisor.running(lab)
    services = {"supervisord": {"port": None, "pid": sup_pid, "up": sup_up}}
    app_pid = mesh_pid = None
    mesh_up = False
    if sup_up:
        app_pid = supervisor.pid_of(lab, supervisor.APP)
        mesh_inf = supervisor.info(lab, supervisor.MESH)
        if mesh_inf and mesh_inf.get("statename") == "RUNNING":
            mesh_pid, mesh_up = mesh_inf.get("pid"), True
    app_up = tcp_open(lab.app_port, 0.5)
    if app_up and not app_pid:
        app_pid = listener_pids([lab.app_port]).get(lab.app_port)
    services["app"] = {"port": lab.app_port, "pid": app_pid, "up": app_up}
    if lab.lb_url:  # --app-instances N: every instance, and HAProxy in front of them
        from . import haproxy

        for i, port in enumerate(lab.app_ports[1:], 2):
            pid = supervisor.pid_of(lab, haproxy.program_name(i)) if sup_up else None
            services["app%d" % i] = {"port": port, "pid": pid, "up": tcp_open(port, 0.5)}
        services["haproxy"] = {"port": lab.lb_port, "pid": supervisor.pid_of(lab, haproxy.PROGRAM) if sup_up else None,
                               "up": tcp_open(lab.lb_port, 0.5)}
    services["meshpeers"] = {"port": None, "pid": mesh_pid, "up": mesh_up}
    return {"services": services}


def collect(lab):
    if lab.upstream:  # P3 Protocol's own server (lab/p3lablib/upstream_status.py)
        from .upstream_status import collect as collect_upstream

        return collect_upstream(lab)
    fleet = ["app%d" % i for i in range(2, lab.app_instances + 1)] + (["haproxy"] if lab.lb_url else [])
    order = ["redis%d" % i for i in range(1, 7)] + ["postgres", "anvil", "app"] + fleet + ["meshpeers", "supervisord"]
    return gather(lab, {}, (_redis, _pg, _anvil, _app, _mesh, _sup, _lb), order, problems)


def gather(lab, lab_extra, probes, order, judge):
    """Run the probes concurrently, merge their parts (services in `order`), add the recorded faults and the
    verdict of judge(lab, status) - shared by both app modes."""
    out = {"lab": dict({"dir": lab.dir, "base_port": lab.base, "inventory": lab.inventory}, **lab_extra),
           "services": {}}
    if lab.monitoring:  # `up --monitoring`: prometheus, alertmanager, the exporters (monitoring.py)
        from . import monitoring

        probes = tuple(probes) + (lambda lab_: {"services": monitoring.status(lab_)},)
        order = list(order) + list(monitoring.PROGRAMS)
    with ThreadPoolExecutor(max_workers=len(probes)) as ex:
        futs = [ex.submit(f, lab) for f in probes]
        parts = [f.result() for f in futs]
    for part in parts:
        for k, v in part.items():
            if k == "services":
                out["services"].update(v)
            else:
                out[k] = v
    out["services"] = {k: out["services"][k] for k in order}
    faults = read_json(lab.faults_json, []) or []
    out["faults"] = [f.get("fault") for f in faults]
    out["problems"] = judge(lab, out)
    out["healthy"] = not out["problems"]
    return out


def base_problems(st, health_path, redis_label):
    """The problems both app modes judge alike: services down, the app's health endpoint, the cluster's shape."""
    p = []
    down = [k for k, v in st["services"].items() if not v["up"]]
    if down:
        p.append("down: " + ", ".join(down))
    if not st["app"]["healthy"]:
        p.append("app %s: %s" % (health_path, st["app"]["health"] or st["app"]["error"] or st["app"]["status_code"]))
    r = st["redis"]
    if r["cluster_state"] != "ok" or r["masters"] != 3 or r["replicas"] != 3 or r.get("replicas_unlinked"):
        p.append("%s: cluster_state=%s masters=%s replicas=%s unlinked=%s"
                 % (redis_label, r["cluster_state"], r["masters"], r["replicas"], r.get("replicas_unlinked")))
    return p


def problems(lab, st):
    """Why the lab is not healthy (empty when it is)."""
    p = base_problems(st, "/health", "redis")
    if st["sessions"]["corrupt"] != 0:
        p.append("sessions: corrupt=%s" % st["sessions"]["corrupt"])
    if st["mesh"]["peers"] != lab.peers:
        p.append("mesh: peers=%s (want %d)" % (st["mesh"]["peers"], lab.peers))
    if st["db"]["leaked"]:
        p.append("db: %d leaked connections" % st["db"]["leaked"])
    # as the anchor playbook judges the queue: any failed job is a problem, and so is a backlog (or an unreadable queue)
    a = st["anchor"]
    if a["waiting"] is None or a["failed"] is None or a["failed"] > 0 or a["waiting"] >= BACKLOG_PROBLEM:
        p.append("anchor: failed=%s waiting=%s" % (a["failed"], a["waiting"]))
    bal = st["wallet"]["balance_wei"]
    if bal is None or bal < ONE_ETH // 10:
        p.append("wallet: balance_wei=%s" % bal)
    if "lb" in st:
        servers = st["lb"]["servers"]
        bad = ["%s %s/%s" % (n, s["status"], s["admin"]) for n, s in sorted(servers.items())
               if s["status"] != "UP" or s["admin"] != "ready"]
        if len(servers) != lab.app_instances or bad:
            p.append("haproxy: %s" % (", ".join(bad) or "%d servers, want %d" % (len(servers), lab.app_instances)))
    return p


def _fmt(v):
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def human(st):
    if st.get("lab", {}).get("app") == "upstream":
        from .upstream_status import human as human_upstream

        return human_upstream(st)
    lines = ["%-12s %6s %8s  %s" % ("service", "port", "pid", "up")]
    for name, s in st["services"].items():
        lines.append("%-12s %6s %8s  %s" % (name, _fmt(s["port"]), _fmt(s["pid"]), _fmt(s["up"])))
    r, d, a, w = st["redis"], st["db"], st["anchor"], st["wallet"]
    bal = w["balance_wei"]
    lines += [
        "",
        "app healthy   %s" % _fmt(st["app"]["healthy"]),
        "db            %s/%s connections%s" % (_fmt(d["connections"]), _fmt(d["max_connections"]),
                                               (" (%d leaked)" % d["leaked"]) if d["leaked"] else ""),
        "redis         cluster_state=%s masters=%s replicas=%s" % (_fmt(r["cluster_state"]), _fmt(r["masters"]),
                                                                   _fmt(r["replicas"])),
        "sessions      valid=%s corrupt=%s" % (_fmt(st["sessions"]["valid"]), _fmt(st["sessions"]["corrupt"])),
        "mesh          peers=%s" % _fmt(st["mesh"]["peers"]),
        "anchor        waiting=%s failed=%s completed=%s" % (_fmt(a["waiting"]), _fmt(a["failed"]), _fmt(a["completed"])),
        "wallet        %s wei%s" % (_fmt(bal), (" (%.4f ETH)" % (bal / 1e18)) if bal is not None else ""),
    ] + ([
        "haproxy       %s  %s" % (st["lb"]["url"], " ".join("%s=%s/%s" % (n, _fmt(s["status"]), _fmt(s["admin"]))
                                                           for n, s in sorted(st["lb"]["servers"].items())) or "-"),
    ] if "lb" in st else []) + [
        "faults        %s" % (", ".join(st["faults"]) or "none"),
        "healthy       %s" % ("yes" if st["healthy"] else "no: " + "; ".join(st["problems"])),
    ]
    return "\n".join(lines)
