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
options:
  host: {type: str, default: 127.0.0.1, description: Address to listen on.}
  port: {type: int, default: 5001, description: Port to listen on.}
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


async def main(queue, args):
    """ansible-rulebook entry point: serve until cancelled."""
    from aiohttp import web

    token = resolve_token(args)
    if token is None and not args.get("allow_unauthenticated"):
        raise ValueError("p3.recovery.alertmanager: no token (set token, token_file or P3_EDA_TOKEN; "
                         "allow_unauthenticated: true only in a lab)")
    app = build_app(queue, token, str(args.get("path") or "/alerts"), int(args.get("max_body_bytes") or 1048576))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = str(args.get("host") or "127.0.0.1"), int(args.get("port") or 5001)
    site = web.TCPSite(runner, host, port)
    await site.start()
    LOG.info("p3.recovery.alertmanager: listening on %s:%d%s (token %s)", host, port, args.get("path") or "/alerts",
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
