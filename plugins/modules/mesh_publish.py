#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: mesh_publish
short_description: Publish a control message (the relay's reconnect) and report who received it
version_added: 0.1.0
description:
  - The runbook's C(redis-cli PUBLISH mesh:control '{"action":"reconnect"}'), with the receivers counted over the
    whole cluster.
  - Counts the subscribers of O(channel) on every node first (C(PUBSUB NUMSUB)), then C(PUBLISH)es once on one
    master; a cluster forwards the message to every node over its bus, so every subscriber of the channel on any
    node receives it. C(PUBLISH) itself only counts the receivers on the node it was sent to (RV(receivers_local)).
  - Publishing is not idempotent by nature - every run publishes and reports C(changed=true). Playbooks gate it on
    a diagnosis (the role C(p3.recovery.mesh_relay) publishes only while the mesh is unhealthy).
  - In check mode nothing is published; RV(subscribers) says who would receive it.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  channel:
    description: The control channel.
    type: str
    default: "mesh:control"
  payload:
    description: The message; a dict or list is sent as compact JSON (sorted keys).
    type: raw
    default: {"action": "reconnect"}
  min_subscribers:
    description: Fail without publishing when fewer subscribers listen on O(channel) over the cluster (nobody
      would act on the message).
    type: int
    default: 1
  subscriber_wait:
    description: Seconds to keep counting (every half second) while fewer than O(min_subscribers) listen, before
      failing - a subscriber that is reconnecting (after a Redis repair, a killed or timed-out connection) is back
      within seconds, and the census is a snapshot. V(0) counts once.
    type: float
    default: 10
seealso:
  - module: p3.recovery.mesh_pubsub_probe
"""

EXAMPLES = r"""
- name: Force every client to reconnect
  p3.recovery.mesh_publish:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
  register: reconnect
"""

RETURN = r"""
changed:
  description: True when the message was published (in check mode, would be).
  returned: always
  type: bool
published:
  description: Whether the message was sent (false in check mode).
  returned: always
  type: bool
channel:
  description: The channel.
  returned: always
  type: str
payload:
  description: The message as sent.
  returned: always
  type: str
subscribers:
  description: Subscribers of the channel over every node, counted just before publishing - who received it.
  returned: always
  type: int
subscribers_by_node:
  description: Node -> subscribers of the channel (nodes with none are left out).
  returned: always
  type: dict
waited:
  description: Seconds spent counting again while fewer than O(min_subscribers) listened (0 when enough listened at
    the first count).
  returned: always
  type: float
node:
  description: The node the message was published on (null in check mode).
  returned: always
  type: str
receivers_local:
  description: C(PUBLISH)'s own reply - receivers on RV(node) only (null in check mode).
  returned: always
  type: int
timeline:
  description: What was done - C(ts), C(action), C(target), C(detail).
  returned: always
  type: list
  elements: dict
"""

import json
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean, num_text, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.mesh import publish, pubsub_census
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec

WAIT_STEP = 0.5


def main():
    argument_spec = redis_argument_spec(
        channel=dict(type="str", default="mesh:control"),
        payload=dict(type="raw", default={"action": "reconnect"}),
        min_subscribers=dict(type="int", default=1),
        subscriber_wait=dict(type="float", default=10.0),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["channel"]:
        module.fail_json(msg="channel must not be empty")
    message = p["payload"]
    if isinstance(message, (dict, list)):
        message = json.dumps(message, separators=(",", ":"), sort_keys=True)
    elif message is None or str(message) == "":
        module.fail_json(msg="payload must not be empty")
    message = str(message)
    if p["subscriber_wait"] < 0:
        module.fail_json(msg="subscriber_wait must be >= 0")
    target = RedisTarget(module)
    try:
        t0 = time.monotonic()
        waited = 0.0
        while True:
            census = pubsub_census(target.settings, p["channel"], [p["channel"]])
            subscribers = census["channels"].get(p["channel"], 0)
            if waited or subscribers < p["min_subscribers"]:
                # how long it has counted: up to the end of this census (a slow census past the wait counts too)
                waited = round(time.monotonic() - t0, 3)
            left = t0 + p["subscriber_wait"] - time.monotonic()
            if subscribers >= p["min_subscribers"] or left <= 0:
                break
            time.sleep(min(WAIT_STEP, left))
        by_node = dict((n["address"], n["channels"].get(p["channel"], 0)) for n in census["nodes"]
                       if n["channels"].get(p["channel"]))
        result = dict(channel=p["channel"], payload=message, subscribers=subscribers, subscribers_by_node=by_node,
                      published=False, node=None, receivers_local=None, waited=waited)
        if subscribers < p["min_subscribers"]:
            counted = ", counted for %ss" % num_text(round(waited, 1)) if waited else ""
            unasked = census["unreachable_nodes"]
            module.fail_json(msg="not publishing on %s: %d subscribers over %d nodes < %d (nobody listens%s)%s" % (
                p["channel"], subscribers, len(census["nodes"]), p["min_subscribers"], counted,
                "; nodes not asked: %s" % ", ".join(unasked) if unasked else ""), **result)
        if not module.check_mode:
            result["node"], result["receivers_local"] = publish(target.settings, p["channel"], message)
            result["published"] = True
    except P3Error as e:
        fail_clean(module, e)
    detail = "%s %s on %s: %d subscriber%s over the cluster%s" % (
        "published" if result["published"] else "would publish", message, p["channel"], subscribers,
        "" if subscribers == 1 else "s", (" (via %s, %s local)" % (result["node"], result["receivers_local"]))
        if result["published"] else "")
    result["timeline"] = [timeline_entry("mesh_publish", p["channel"], detail)]
    module.exit_json(changed=True, msg=detail, **result)


if __name__ == "__main__":
    main()
