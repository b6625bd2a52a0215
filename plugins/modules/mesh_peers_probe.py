#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: mesh_peers_probe
short_description: The mesh peer count the app reports, from its pulse status and its metrics
version_added: 0.1.0
description:
  - The runbook's C(curl /pulse/status) and C(curl /metrics | grep websocket), read-only, fetched in parallel.
  - Healthy when the pulse answers 2xx JSON with the relay not down and at least O(min_peers) subscribers, and
    (unless O(peers_metric) is empty) the metric's value is at least O(min_peers) too.
  - The default O(min_peers) is the runbook's alert C(mesh_peer_count_low) (C(peer_count < 10)).
  - With O(relay_path) (P3 as coded, C(/api/mesh/global)) it also uses the relay as a peer does, which is what
    C(the mesh works) means there (peers live in the app's process memory, no Redis is involved) - it registers a
    throwaway node whose manifest a key made for this call signs (EIP-191), relays one message to it on the
    KEEPALIVE lane, reads it back from its queue and unregisters it. Healthy needs the message back.
  - The round trip leaves nothing behind (the node is unregistered, so it also runs in check mode); P3 counts one
    more relay and, like every C(/api/*) request, writes telemetry rows.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  pulse_path:
    description: Path of the pulse status (C(/api/pulse/status) on P3 as coded).
    type: str
    default: /pulse/status
  metrics_path:
    description: Path of the Prometheus metrics.
    type: str
    default: /metrics
  peers_metric:
    description:
      - Gauge holding the peer count (the runbook greps C(websocket)). An empty string skips the metrics check.
    type: str
    default: active_websocket_connections
  min_peers:
    description: Fewest connected peers that count as healthy.
    type: int
    default: 10
  relay_path:
    description:
      - Base path of the app's global mesh relay (C(register), C(relay), C(messages), C(unregister) below it;
        C(/api/mesh/global) on P3 as coded). Empty skips the round trip.
      - O(timeout) is the total deadline of the whole round trip.
    type: str
    default: ""
requirements:
  - eth-account (Python library, part of web3; only with O(relay_path))
seealso:
  - module: p3.recovery.app_probe
  - module: p3.recovery.mesh_pubsub_probe
"""

EXAMPLES = r"""
- name: Are the peers back?
  p3.recovery.mesh_peers_probe:
    url: "{{ p3_app_url }}"
    min_peers: 10
  register: peers
  until: peers.healthy
  retries: 15
  delay: 1
"""

RETURN = r"""
healthy:
  description: See the description.
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "GET http://127.0.0.1:24030/pulse/status -> 200: relay down, peers 0 < 10"
peers:
  description: Subscribers the pulse status reports (null when it did not answer).
  returned: always
  type: int
metric_peers:
  description: Value of O(peers_metric) (null when skipped, missing or unreadable).
  returned: always
  type: float
relay:
  description: Relay state from the pulse (C(up) / C(down)), when reported.
  returned: always
  type: str
pulse:
  description: The pulse verdict - C(status), C(latency_ms), C(peers), C(relay), C(active), C(url), C(reason).
  returned: always
  type: dict
metrics_error:
  description: Why the metric could not be read, or null.
  returned: always
  type: str
relay_roundtrip:
  description:
    - The relay round trip (O(relay_path) set) - C(healthy), C(reason), C(node_id), C(relayed), C(received),
      C(unregistered), C(peers) (other nodes registered), C(latency_ms); null when O(relay_path) is empty.
  returned: always
  type: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.app_health import pulse_verdict
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe, one_line, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HttpTarget, describe_response, http_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.mesh import relay_roundtrip
from ansible_collections.p3.recovery.plugins.module_utils.metrics import parse_metrics, sample_value
from ansible_collections.p3.recovery.plugins.module_utils.common import run_parallel


def main():
    argument_spec = http_argument_spec(
        pulse_path=dict(type="str", default="/pulse/status"),
        metrics_path=dict(type="str", default="/metrics"),
        peers_metric=dict(type="str", default="active_websocket_connections"),
        min_peers=dict(type="int", default=10),
        relay_path=dict(type="str", default=""),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["min_peers"] < 0:
        module.fail_json(msg="min_peers must be >= 0, got %d" % p["min_peers"])
    target = HttpTarget(module)
    paths = [p["pulse_path"] or "/pulse/status"]
    if p["peers_metric"]:
        paths.append(p["metrics_path"] or "/metrics")
    calls = {"get": lambda: target.get_many(paths)}
    if p["relay_path"]:
        calls["relay"] = lambda: relay_roundtrip(target, p["relay_path"])
    done, errors, dummy = run_parallel(calls, name="mesh")
    if errors:
        err = errors.get("relay") or errors.get("get")
        module.fail_json(msg=err.msg if isinstance(err, P3Error) else one_line(err))
    responses = done["get"]
    roundtrip = done.get("relay")
    pulse = pulse_verdict(responses[0], min_peers=p["min_peers"])
    metric_peers, metrics_error = None, None
    problems = [] if pulse["healthy"] else [pulse["reason"]]
    if p["peers_metric"]:
        resp = responses[1]
        if not resp["ok"]:
            metrics_error = describe_response(resp)
        else:
            try:
                metric_peers = sample_value(parse_metrics(resp["text"]), p["peers_metric"])
                if metric_peers is None:
                    metrics_error = "metric %s not exposed" % p["peers_metric"]
            except P3Error as e:
                metrics_error = e.msg
        if metrics_error:
            problems.append(metrics_error)
        elif metric_peers < p["min_peers"]:
            problems.append("%s %s < %d" % (p["peers_metric"], metric_peers, p["min_peers"]))
    if roundtrip is not None and not roundtrip["healthy"]:
        problems.append(roundtrip["reason"])
    if problems:
        reason = "; ".join(problems)
    else:
        reason = "%s peers (pulse)%s >= %d, relay %s" % (
            pulse["peers"], (", %s %s" % (p["peers_metric"], metric_peers)) if p["peers_metric"] else "",
            p["min_peers"], pulse["relay"] or "?")
        if roundtrip is not None:
            reason += "; " + roundtrip["reason"]
    exit_probe(module, probe_result(not problems, reason, peers=pulse["peers"], metric_peers=metric_peers,
                                    relay=pulse["relay"], pulse=pulse, metrics_error=metrics_error,
                                    relay_roundtrip=roundtrip))


if __name__ == "__main__":
    main()
