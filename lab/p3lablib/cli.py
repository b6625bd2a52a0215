"""Command line: p3lab up [--app-instances N] [--monitoring] | down [--purge] | status [--json] | fault NAME | heal |
load start|stop|report | tls-up | tls-down [--purge] | monitoring-up [...] | monitoring-down [--purge]."""
import argparse
import json
import os
import socket
import sys
import traceback

from .common import DirLock, Lab, LabError

USAGE_EPILOG = """environment: P3LAB_BASE_PORT (default 17000), P3LAB_DIR (default <repo>/.lab), P3LAB_PEERS (12),
P3LAB_BACKLOG (200), P3LAB_ANVIL (anvil binary), P3LAB_PG_BIN (PostgreSQL bin dir), P3LAB_REDIS_SERVER (Redis server
binary: redis-server or a valkey-server path), P3LAB_REDIS_CLI (its cli; default the one beside it), P3LAB_DEBUG=1
(tracebacks)."""


def parser():
    from .faults import FAULTS
    from .upstream_faults import FAULTS as UPSTREAM_FAULTS

    all_faults = FAULTS + [f for f in UPSTREAM_FAULTS if f not in FAULTS]

    p = argparse.ArgumentParser(prog="p3lab", description="Run the P3-shaped recovery lab (docs/lab.md).",
                                epilog=USAGE_EPILOG)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    u = sub.add_parser("up", help="start the lab (idempotent)")
    u.add_argument("--app", choices=("lab", "upstream"), default=None,
                   help="lab: the lab app (default); upstream: P3 Protocol's own server (docs/lab.md); remembered in "
                        "$P3LAB_DIR/mode.json")
    u.add_argument("--bullmq", choices=("working", "lockfile"), default=None,
                   help="app=upstream: working (bullmq@5.12.11, the default) or lockfile (5.65.0: no anchor worker)")
    u.add_argument("--app-instances", type=int, default=None, choices=range(1, 6), metavar="N",
                   help="run N lab app instances (1-5) behind HAProxy on base+40 (N >= 2; docs/lab.md); "
                        "remembered in $P3LAB_DIR/mode.json (default 1: one app, no load balancer)")
    u.add_argument("--monitoring", action="store_true",
                   help="also run Prometheus, Alertmanager, redis_exporter and postgres_exporter (base+50..58; "
                        "docs/monitoring.md), as `monitoring-up` does; remembered in $P3LAB_DIR/mode.json")
    m = sub.add_parser("monitoring-up", help="start (or update) the lab's Prometheus, Alertmanager and exporters and "
                                             "load the rules export_alerts.yml writes (docs/monitoring.md)")
    m.add_argument("--webhook-url", default=None,
                   help="where Alertmanager posts (default: remembered, else the lab's EDA source "
                        "http://127.0.0.1:<base+57>/alerts)")
    m.add_argument("--webhook-token-file", default=None,
                   help="file holding the webhook's bearer token (default: $P3LAB_DIR/monitoring/webhook.token, made "
                        "once, mode 0600)")
    m.add_argument("--rules", default=None, help="load this rules file (checked with promtool) instead of exporting")
    m.add_argument("--no-export", action="store_true", help="keep the rules already exported (if any)")
    md = sub.add_parser("monitoring-down", help="stop the monitoring programs")
    md.add_argument("--purge", action="store_true", help="also delete $P3LAB_DIR/monitoring")
    d = sub.add_parser("down", help="stop the lab (idempotent)")
    d.add_argument("--purge", action="store_true", help="also delete $P3LAB_DIR")
    s = sub.add_parser("status", help="read the lab's state straight from the services")
    s.add_argument("--json", action="store_true", help="one JSON object")
    f = sub.add_parser("fault", help="inject a fault and wait for its symptom")
    f.add_argument("name", choices=all_faults, metavar="NAME",
                   help="%s; app=upstream: %s" % (", ".join(FAULTS), ", ".join(UPSTREAM_FAULTS)))
    sub.add_parser("heal", help="undo every fault and wait until the lab is healthy")
    sub.add_parser("prepare-upstream", help="install P3's npm dependencies (both BullMQ variants) into the cache "
                                            "that `up --app upstream` uses (make setup-upstream)")
    sub.add_parser("tls-up", help="start the small TLS lab (private CA, TLS-only Redis Cluster, SSL-only PostgreSQL, "
                                  "the app over HTTPS on +620) "
                                  "in $P3LAB_TLS_DIR (default <repo>/.state/lab-tls), ports P3LAB_BASE_PORT+600")
    td = sub.add_parser("tls-down", help="stop the TLS lab")
    td.add_argument("--purge", action="store_true", help="also delete its dir (certificates included)")
    ld = sub.add_parser("load", help="client load with loss accounting (docs/lab.md: Client load)")
    ld.add_argument("action", choices=("start", "stop", "report"))
    ld.add_argument("--seconds", type=float, default=60.0, help="start: run at most this long (default 60, max 900)")
    ld.add_argument("--rate", type=float, default=20.0, help="start: operations per second per stream (default 20)")
    ld.add_argument("--max-ops", type=int, default=5000, help="start: at most this many operations per stream")
    ld.add_argument("--streams", default="redis,session,anchor,http",
                    help="start: comma list of redis, session, anchor, http (default all)")
    sub.add_parser("_load")  # the detached load generator (hidden)
    sub.add_parser("_hold")  # the detached db-exhaustion holder (no help: hidden)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    socket.setdefaulttimeout(10)
    try:
        lab = Lab()
        if args.cmd == "status":
            from .status import collect, human

            st = collect(lab)
            print(json.dumps(st, sort_keys=False) if args.json else human(st))
            return 0
        if args.cmd == "prepare-upstream":
            from .upstream import VARIANTS, prepare

            res = {}
            for v in VARIANTS[::-1]:  # lockfile first: working is a hard-linked copy of it
                path, secs = prepare(v)
                res[v] = {"node_modules": path, "seconds": secs}
            print(json.dumps(res))
            return 0
        if args.cmd in ("tls-up", "tls-down"):
            from . import tls

            print(json.dumps(tls.up() if args.cmd == "tls-up" else tls.down(purge=args.purge)))
            return 0
        if args.cmd in ("load", "_load"):
            from . import load

            try:
                if args.cmd == "_load":
                    return load.load_main(lab)
                if args.action == "start":
                    res = load.cli_start(lab, args.seconds, args.rate,
                                         [s.strip() for s in args.streams.split(",") if s.strip()], args.max_ops)
                elif args.action == "stop":
                    res = load.cli_stop(lab)
                else:
                    res = load.cli_report(lab)
            except load.LoadError as e:
                raise LabError(str(e))
            print(json.dumps(res))
            return 0
        if args.cmd == "_hold":
            from .faults import hold_main

            return hold_main(lab)
        if args.cmd == "down" and not os.path.isdir(lab.dir):
            print(json.dumps({"down": True, "seconds": 0.0, "purged": args.purge, "note": "no lab state"}))
            return 0
        with DirLock(lab):
            if args.cmd == "up":
                from .stack import up

                res = up(lab, app=args.app, bullmq=args.bullmq, app_instances=args.app_instances)
                mon = None
                if args.monitoring or lab.monitoring:
                    from . import monitoring

                    mon = monitoring.up(Lab(), export=args.monitoring)
                    res["seconds"] = round(res["seconds"] + mon["seconds"], 1)
                print("p3lab: lab up in %.1f s (base port %d): app %s%s, inventory %s"
                      % (res["seconds"], lab.base, res["app"] + (" (%d instances behind haproxy %s)" % (
                          lab.app_instances, lab.lb_url) if lab.lb_url else ""),
                         " (P3's own server, BullMQ %s)" % res["bullmq"] if res.get("app_mode") == "upstream" else "",
                         res["inventory"]) + ("; monitoring: prometheus %s, alertmanager %s" % (
                             mon["urls"]["prometheus"], mon["urls"]["alertmanager"]) if mon else ""))
                return 0
            if args.cmd in ("monitoring-up", "monitoring-down"):
                from . import monitoring

                if args.cmd == "monitoring-down":
                    print(json.dumps(monitoring.down(lab, purge=args.purge)))
                else:
                    res = monitoring.up(lab, webhook_url=args.webhook_url, token=args.webhook_token_file,
                                        rules=args.rules, export=not args.no_export)
                    res.pop("targets", None)
                    print(json.dumps(res))
                return 0
            if args.cmd == "down":
                from .stack import down

                res = down(lab, purge=args.purge)
                res["down"] = True
                print(json.dumps(res))
                return 0
            if args.cmd == "fault":
                from .faults import inject

                print(json.dumps(inject(lab, args.name)))
                return 0
            if args.cmd == "heal":
                from .heal import heal

                print(json.dumps(heal(lab)))
                return 0
    except LabError as e:
        sys.stderr.write("p3lab: error: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("p3lab: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line unless P3LAB_DEBUG
        if os.environ.get("P3LAB_DEBUG"):
            traceback.print_exc()
        sys.stderr.write("p3lab: error: %s: %s%s\n" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "",
                         "" if os.environ.get("P3LAB_DEBUG") else " (P3LAB_DEBUG=1 for a traceback)"))
        return 1
    return 2
