# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""p3.recovery.alertmanager - an Alertmanager webhook receiver for ansible-rulebook (event source plugin).

DOCUMENTATION
short_description: Receive Alertmanager webhook notifications (v4 payload), one event per alert, token checked.
description:
  - Listens on host:port for Alertmanager's webhook POSTs (receiver C(webhook_configs), payload version 4) and puts
    one event on the rulebook's queue per alert of the notification - C(event.alert) with the alert's
    C(fingerprint), C(status), C(labels), C(annotations), C(startsAt), C(endsAt), C(generatorURL), and
    C(event.notification) with the group's C(receiver), C(status), C(groupKey), C(groupLabels), C(externalURL),
    C(truncatedAlerts).
  - Every request must carry the shared secret as C(Authorization: Bearer <token>) (Alertmanager
    C(http_config.authorization.credentials) or C(credentials_file)); a request without it, or with another
    one, gets 401, is logged (client address, path, no header value) and puts nothing on the queue. The token
    comes from C(token), else the file C(token_file), else the environment variable C(P3_EDA_TOKEN). Without any
    the source refuses to start unless C(allow_unauthenticated) is true (lab use only).
  - A body that is not a v4 Alertmanager notification (not JSON, no C(alerts) list, an alert without a
    fingerprint or status) gets 400 and nothing is queued. Bodies over C(max_body_bytes) get 413.
  - GET C(/healthz) answers 200 without a token (for a readiness check).
  - A malformed argument (a C(port) that is not an integer 1-65535, a C(host) with spaces, an unreadable
    C(token_file), an unknown argument...) or a port that cannot be bound stops ansible-rulebook with exit status 1
    and one line naming the argument and the cause (no frame list).
options:
  host: {type: str, default: 127.0.0.1, description: Address to listen on.}
  port: {type: int, default: 5001, description: Port to listen on (1-65535).}
  path: {type: str, default: /alerts, description: Path Alertmanager posts to.}
  token: {type: str, description: The shared secret. Never logged.}
  token_file: {type: path, description: A file holding the shared secret (surrounding whitespace ignored).}
  allow_unauthenticated: {type: bool, default: false, description: Start without a token (accept every request).}
  max_body_bytes: {type: int, default: 1048576, description: Largest accepted body.}
EXAMPLES
  sources:
    - p3.recovery.alertmanager:
        host: 0.0.0.0
        port: 5001
        token_file: /etc/p3/eda-token
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import asyncio
import hmac
import json
import logging
import os

LOG = logging.getLogger("p3.recovery.alertmanager")

ALERT_FIELDS = ("fingerprint", "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL")
NOTIFICATION_FIELDS = ("receiver", "status", "groupKey", "groupLabels", "commonLabels", "externalURL",
                       "truncatedAlerts", "version")


class PayloadError(ValueError):
    """The body is not an Alertmanager v4 webhook notification."""


def resolve_token(args, environ=None):
    """The shared secret from args token, else args token_file, else P3_EDA_TOKEN; None when none is set."""
    environ = os.environ if environ is None else environ
    token = args.get("token")
    if not token and args.get("token_file"):
        with open(os.path.expanduser(str(args["token_file"]))) as fh:
            token = fh.read().strip()
    if not token:
        token = environ.get("P3_EDA_TOKEN")
    token = str(token).strip() if token else None
    return token or None


def authorized(header, token):
    """True when the Authorization header carries the token (Bearer, constant-time compare); always True when
    token is None (allow_unauthenticated)."""
    if token is None:
        return True
    if not header:
        return False
    scheme, _sep, value = str(header).strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))


def parse_notification(body):
    """The events of one Alertmanager notification (bytes or str of JSON): one {alert, notification} per alert,
    in order. Raises PayloadError with one line when the body is not a v4 notification."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as e:
        raise PayloadError("body is not JSON: %s" % e)
    if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
        raise PayloadError("body has no 'alerts' list (not an Alertmanager webhook notification)")
    version = str(data.get("version", "4"))
    if version != "4":
        raise PayloadError("webhook payload version %s, only version 4 is understood" % version)
    notification = dict((k, data[k]) for k in NOTIFICATION_FIELDS if k in data)
    events = []
    for i, alert in enumerate(data["alerts"]):
        if not isinstance(alert, dict):
            raise PayloadError("alerts[%d] is not an object" % i)
        if not alert.get("fingerprint") or alert.get("status") not in ("firing", "resolved"):
            raise PayloadError("alerts[%d] has no fingerprint or its status is not firing/resolved" % i)
        out = dict((k, alert.get(k)) for k in ALERT_FIELDS)
        out["labels"] = dict(out["labels"] or {})
        out["annotations"] = dict(out["annotations"] or {})
        events.append({"alert": out, "notification": notification})
    return events


def build_app(queue, token, path="/alerts", max_body_bytes=1048576):
    """The aiohttp application: POST path (token checked) -> events on queue; GET /healthz."""
    from aiohttp import web

    async def receive(request):
        peer = request.remote or "?"
        if not authorized(request.headers.get("Authorization"), token):
            LOG.warning("p3.recovery.alertmanager: rejected %s %s from %s: 401 missing or wrong token",
                        request.method, request.path, peer)
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="p3-eda"'})
        if request.content_length is not None and request.content_length > max_body_bytes:
            return web.json_response({"error": "body too large"}, status=413)
        body = await request.content.read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            events = parse_notification(body)
        except PayloadError as e:
            LOG.warning("p3.recovery.alertmanager: rejected %s from %s: 400 %s", request.path, peer, e)
            return web.json_response({"error": str(e)}, status=400)
        for event in events:
            await queue.put(event)
        LOG.info("p3.recovery.alertmanager: %d alert(s) from %s queued (%s)", len(events), peer,
                 ", ".join("%s %s %s" % (e["alert"]["labels"].get("alertname", "?"), e["alert"]["status"],
                                         e["alert"]["fingerprint"]) for e in events))
        return web.json_response({"queued": len(events)})

    async def healthz(_request):
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=max_body_bytes + 1024)
    app.router.add_post(path, receive)
    app.router.add_get("/healthz", healthz)
    return app


class ArgumentError(ValueError):
    """A malformed argument of the source (or one it cannot use): the message is one line naming it."""


def _text(value, limit=80):
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int_arg(args, name, default, low, high):
    value = args.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise ArgumentError("p3.recovery.alertmanager: %s must be an integer %d-%d, got %s" % (name, low, high, value))
    try:
        number = int(str(value).strip(), 10) if isinstance(value, str) else int(value)
        if not isinstance(value, (int, str)) and number != value:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ArgumentError("p3.recovery.alertmanager: %s must be an integer %d-%d, got %r" % (
            name, low, high, _text(value)))
    if not low <= number <= high:
        raise ArgumentError("p3.recovery.alertmanager: %s must be an integer %d-%d, got %d" % (name, low, high, number))
    return number


def _bool_arg(args, name):
    value = args.get(name, False)
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise ArgumentError("p3.recovery.alertmanager: %s must be true or false, got %r" % (name, _text(value)))


def check_args(args, environ=None):
    """The source's settings from its rulebook arguments - dict(host, port, path, token, max_body_bytes) - or
    ArgumentError with one line naming the argument and the cause (never the token's value)."""
    if not isinstance(args, dict):
        raise ArgumentError("p3.recovery.alertmanager: arguments must be a mapping, got %s" % type(args).__name__)
    known = ("host", "port", "path", "token", "token_file", "allow_unauthenticated", "max_body_bytes")
    unknown = sorted(k for k in args if k not in known and not str(k).startswith("eda_"))
    if unknown:
        raise ArgumentError("p3.recovery.alertmanager: unknown argument(s) %s (known: %s)" % (
            ", ".join(_text(k, 40) for k in unknown), ", ".join(known)))
    host = args.get("host")
    host = "127.0.0.1" if host is None or host == "" else host
    if not isinstance(host, str) or any(c.isspace() for c in host) or "/" in host:
        raise ArgumentError("p3.recovery.alertmanager: host must be an address or name to listen on, got %r"
                            % _text(host))
    port = _int_arg(args, "port", 5001, 1, 65535)
    path = args.get("path") or "/alerts"
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise ArgumentError("p3.recovery.alertmanager: path must start with / and hold no spaces, got %r" % _text(path))
    max_body = _int_arg(args, "max_body_bytes", 1048576, 1024, 64 * 1048576)
    for name in ("token", "token_file"):
        if args.get(name) not in (None, "") and not isinstance(args[name], str):
            raise ArgumentError("p3.recovery.alertmanager: %s must be a string, got a %s" % (
                name, type(args[name]).__name__))
    allow_unauthenticated = _bool_arg(args, "allow_unauthenticated")
    try:
        token = resolve_token(args, environ)
    except (OSError, UnicodeDecodeError) as e:
        raise ArgumentError("p3.recovery.alertmanager: token_file %s: %s" % (
            _text(args.get("token_file")), getattr(e, "strerror", None) or _text(e)))
    if token is None and not allow_unauthenticated:
        raise ArgumentError("p3.recovery.alertmanager: no token (set token, token_file or P3_EDA_TOKEN; "
                            "allow_unauthenticated: true only in a lab)")
    return dict(host=host, port=port, path=path, token=token, max_body_bytes=max_body)


def _refuse(error):
    """Stop ansible-rulebook with the one line of error: SystemExit leaves the event loop as it is (asyncio
    re-raises it), so the rulebook neither prints its frame list nor goes on without this source; exit status 1."""
    raise SystemExit(str(error))


async def main(queue, args):
    """ansible-rulebook entry point: serve until cancelled. A malformed argument, or a port that cannot be
    bound, stops the rulebook with one line naming it (exit status 1)."""
    from aiohttp import web

    try:
        cfg = check_args(args)
    except ArgumentError as e:
        _refuse(e)
    token = cfg["token"]
    app = build_app(queue, token, cfg["path"], cfg["max_body_bytes"])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = cfg["host"], cfg["port"]
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        _refuse(ArgumentError("p3.recovery.alertmanager: cannot listen on %s:%d (host, port): %s" % (
            host, port, e.strerror or _text(e))))
    LOG.info("p3.recovery.alertmanager: listening on %s:%d%s (token %s)", host, port, cfg["path"],
             "required" if token else "NOT required")
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    # Run the receiver alone and print the events: python alertmanager.py PORT (token from P3_EDA_TOKEN).
    import sys

    class _PrintQueue(object):
        async def put(self, event):
            print(json.dumps(event, sort_keys=True))
            sys.stdout.flush()

    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(_PrintQueue(), {"port": int(sys.argv[1]) if len(sys.argv) > 1 else 5001}))
