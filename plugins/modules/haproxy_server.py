#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: haproxy_server
short_description: Drain or re-enable one server of an HAProxy backend through the runtime API, and wait for it
version_added: 0.1.0
description:
  - Talks to HAProxy's runtime API on its admin socket (C(stats socket ... level admin)) - it reads
    C(show servers state) and C(show stat), sends C(set server <backend>/<server> state drain|ready).
  - O(state=drain) first re-reads the backend and refuses (fails with one line, sends nothing) when draining the
    server would leave fewer than O(min_serving) other servers up and ready - the last healthy instance is never
    taken out. Then it drains the server (no new requests; requests in flight finish) and, with O(wait=true), waits
    until its current sessions (C(scur)) reach 0.
  - O(state=ready) sets the server ready again and, with O(wait=true), waits until HAProxy's own health checks
    report it up, so traffic only returns to an instance that serves.
  - A server already in the requested state is left alone (C(changed=false)); the waits still run.
  - Every wait is bounded by O(timeout), a total deadline for the whole call (socket calls included).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reads the backend and reports what would be set (and refuses exactly as the real run would); sends
      nothing and does not wait.
  diff_mode:
    support: none
options:
  socket:
    description:
      - The runtime API address - a unix socket path, or C(host:port) of a TCP stats socket with C(level admin).
    type: str
    required: true
  backend:
    description: Backend (proxy) name.
    type: str
    required: true
  server:
    description: Server name inside O(backend).
    type: str
    required: true
  state:
    description: V(drain) to stop new traffic to the server, V(ready) to put it back in rotation.
    type: str
    required: true
    choices: [drain, ready]
  min_serving:
    description: With O(state=drain), the fewest other servers that must stay up and ready; below it the module refuses.
    type: int
    default: 1
  wait:
    description: With O(state=drain) wait until the server has no current session; with O(state=ready) wait until
      HAProxy's health checks report it up.
    type: bool
    default: true
  timeout:
    description: Total deadline in seconds for the call, waits included.
    type: float
    default: 30
  poll_interval:
    description: Seconds between reads while waiting.
    type: float
    default: 0.2
seealso:
  - module: p3.recovery.app_probe
    description: The health gate the role p3.recovery.app_restart runs between the drain and the re-enable.
"""

EXAMPLES = r"""
- name: Take app2 out of rotation and wait for its requests in flight
  p3.recovery.haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: p3_app
    server: app2
    state: drain
    timeout: 30

- name: Back in rotation once HAProxy's checks see it up
  p3.recovery.haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: p3_app
    server: app2
    state: ready
"""

RETURN = r"""
previous:
  description: The server before the call (C(admin) ready|drain|maint, C(op) running|stopped|starting|stopping,
    C(status) as C(show stat) says, C(scur) current sessions, C(up), C(healthy)).
  returned: success
  type: dict
server_state:
  description: The server at the end of the call (same fields as RV(previous)).
  returned: success
  type: dict
serving:
  description: Servers of the backend taking new traffic at the end (up and ready).
  returned: always
  type: list
  elements: str
waited:
  description: Seconds spent waiting (for C(scur=0) or for the checks to report the server up).
  returned: success
  type: float
timeline:
  description: What was sent and when (C(ts), C(action), C(target), C(detail)).
  returned: always
  type: list
  elements: dict
reason:
  description: One line saying what was (or would be) done.
  returned: always
  type: str
  sample: "drained p3_app/app2 (3 other servers serving); 0 sessions after 0.4 s"
"""

import datetime
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline, P3Error, fail_clean
from ansible_collections.p3.recovery.plugins.module_utils.haproxy import HAProxyError, RuntimeAPI
from ansible_collections.p3.recovery.plugins.module_utils.haproxy import drain_refusal, serving


def _ts():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _wait(api, backend, server, done, deadline, interval, what):
    """Poll the backend until done(view of the server) or the deadline; returns (view, seconds)."""
    t0 = time.monotonic()
    while True:
        view = api.backend(backend)
        if server in view and done(view[server]):
            return view, round(time.monotonic() - t0, 2)
        left = deadline.remaining()
        if left is not None and left <= interval:
            srv = view.get(server, {})
            raise HAProxyError("haproxy %s: %s/%s %s within %ss (status %s, %s sessions)"
                               % (api.address, backend, server, what, deadline.seconds, srv.get("status"),
                                  srv.get("scur")))
        time.sleep(interval)


def run(module):
    p = module.params
    deadline = Deadline(p["timeout"], name="timeout")
    api = RuntimeAPI(p["socket"], timeout=min(5.0, p["timeout"]), deadline=deadline)
    be, srv, state = p["backend"], p["server"], p["state"]
    target = "%s/%s" % (be, srv)
    result = dict(changed=False, timeline=[], serving=[])
    view = api.backend(be)
    if srv not in view:
        raise HAProxyError("haproxy %s: no server %s in backend %s (servers: %s)"
                           % (p["socket"], srv, be, ", ".join(sorted(view)) or "none"))
    result["previous"] = view[srv]
    result["serving"] = serving(view)
    need = view[srv]["admin"] != state
    if state == "drain" and need:
        why = drain_refusal(view, srv, p["min_serving"])
        if why:
            raise HAProxyError("haproxy %s: %s" % (p["socket"], why), **result)
    if module.check_mode:
        result.update(changed=need, server_state=view[srv], waited=0.0,
                      reason=("would set %s %s" % (target, state)) if need else "%s already %s" % (target, state))
        return result
    if need:
        if state == "drain":
            # re-check right before acting: another run or a failing check may have changed the fleet
            view = api.backend(be)
            why = drain_refusal(view, srv, p["min_serving"])
            if why:
                raise HAProxyError("haproxy %s: %s" % (p["socket"], why), **result)
        api.set_state(be, srv, state)
        result["changed"] = True
        result["timeline"].append({"ts": _ts(), "action": "haproxy %s" % state, "target": target,
                                   "detail": "set server %s state %s" % (target, state)})
    waited = 0.0
    try:
        if p["wait"] and state == "drain":
            view, waited = _wait(api, be, srv, lambda v: v["scur"] == 0, deadline, p["poll_interval"],
                                 "still had sessions in flight")
        elif p["wait"] and state == "ready":
            view, waited = _wait(api, be, srv, lambda v: v["up"] and v["admin"] == "ready", deadline,
                                 p["poll_interval"], "was not reported up by HAProxy's checks")
        else:
            view = api.backend(be)
    except P3Error as e:
        e.details.update(result)
        raise
    result.update(server_state=view[srv], serving=serving(view), waited=waited)
    if result["timeline"]:
        result["timeline"][-1]["detail"] += "; %s after %ss" % (
            "0 sessions" if state == "drain" else "up", waited)
    result["reason"] = "%s %s%s (serving now: %s)" % (
        ("drained" if state == "drain" else "re-enabled") if result["changed"] else "left",
        target, "" if result["changed"] else " %s" % state, ", ".join(result["serving"]) or "none")
    return result


def main():
    module = P3Module(
        argument_spec=dict(
            socket=dict(type="str", required=True),
            backend=dict(type="str", required=True),
            server=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=["drain", "ready"]),
            min_serving=dict(type="int", default=1),
            wait=dict(type="bool", default=True),
            timeout=dict(type="float", default=30),
            poll_interval=dict(type="float", default=0.2),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["timeout"] <= 0 or p["poll_interval"] <= 0 or p["min_serving"] < 0:
        module.fail_json(msg="haproxy_server: timeout and poll_interval must be > 0 and min_serving >= 0")
    try:
        module.exit_json(**run(module))
    except P3Error as e:
        fail_clean(module, e, changed=bool(e.details.get("changed")), timeline=e.details.get("timeline", []),
                   serving=e.details.get("serving", []))


if __name__ == "__main__":
    main()
