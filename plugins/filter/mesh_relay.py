# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decisions of the mesh_relay role (p3.recovery.recover_mesh): its input check, reconnect or not, and restart
or not. Each filter is documented in its <name>.yml."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.p3.recovery.plugins.plugin_utils.inputs import input_errors

RESTART_MODES = ["never", "auto", "always"]

# name, kind, low, low inclusive, high (plugin_utils.inputs)
NUMBER_RULES = [
    ("p3_mesh_min_peers", "integer", 0, True, None),
    ("p3_mesh_storm_threshold", "integer", 0, True, None),
    ("p3_mesh_app_port", "integer", 0, False, 65535),
    ("p3_mesh_settle_timeout", "number", 0, True, None),
    ("p3_mesh_verify_timeout", "number", 0, True, None),
    ("p3_mesh_subscriber_wait", "number", 0, True, None),
]
CHOICES = [
    ("p3_mesh_restart_app", RESTART_MODES),
    ("p3_mesh_store", ["redis", "memory"]),
]


def mesh_input_errors(values):
    """One line per bad variable of the mesh_relay role (values: name -> value); empty when all are fine."""
    errors = input_errors(values, NUMBER_RULES, CHOICES)
    if "p3_mesh_control_channel" in values and not str(values["p3_mesh_control_channel"] or ""):
        errors.append("p3_mesh_control_channel must not be empty")
    return errors


def _skipped(result):
    return not result or bool(result.get("skipped"))


def mesh_decision(probes, settings):
    """Reconnect or not, from the probes before the act.

    probes: peers (mesh_peers_probe result), pubsub (redis_pubsub_probe result, skipped with store memory), storm
    (the registered loop of connection_storm_probe, with its results). settings: store, reconnect, control_channel,
    control_message. Returns store, broken, storm, storms (reasons), control_subscribers, reconnect and why.
    """
    peers = probes.get("peers") or {}
    pubsub = probes.get("pubsub") or {}
    memory = settings.get("store") == "memory"
    pubsub_ok = True if memory else bool(pubsub.get("healthy"))
    healthy = bool(peers.get("healthy")) and pubsub_ok
    storms = [r for r in (probes.get("storm") or {}).get("results") or [] if "skipped" not in r and not r.get("healthy")]
    storm_reasons = [r.get("reason") for r in storms]
    channel = settings.get("control_channel")
    subscribers = int((pubsub.get("channels") or {}).get(channel) or 0)
    reconnect = boolean(settings.get("reconnect", False), strict=False)
    if healthy and not storms:
        why = "mesh healthy (%s): nothing to do" % peers.get("reason")
    elif not healthy:
        seen = [r.get("reason") for r in (peers, pubsub) if "skipped" not in r and not r.get("healthy")]
        if memory:
            then = "peers in process memory, no reconnect message exists: restart the app"
        elif reconnect and subscribers > 0:
            then = "publish %s on %s (%d subscribers)" % (json.dumps(settings.get("control_message")), channel,
                                                          subscribers)
        elif reconnect:
            then = "nobody listens on %s: restart the app" % channel
        else:
            then = "p3_mesh_reconnect=false: restart the app"
        why = "mesh unhealthy (%s): %s" % ("; ".join(str(r) for r in seen), then)
    else:
        why = "connection storm: %s" % "; ".join(str(r) for r in storm_reasons)
    return dict(
        store=settings.get("store"),
        broken=not healthy,
        storm=len(storms) > 0,
        storms=storm_reasons,
        control_subscribers=subscribers,
        reconnect=reconnect and not memory and not healthy and subscribers > 0,
        why=why,
    )


def mesh_restart(decision, settled, settings):
    """Restart the app or not, after the reconnect: wanted, why and settled (the peers right after the reconnect:
    true, false or null when they were not probed).

    decision: the mesh_decision; settled: the mesh_peers_probe result after the reconnect (skipped when not probed);
    settings: restart_app, restart_on_storm, settle_timeout, check_mode.
    """
    settled = settled or {}
    ok = None if _skipped(settled) else settled.get("healthy")
    mode = settings.get("restart_app")
    check_mode = boolean(settings.get("check_mode", False), strict=False)
    on_storm = boolean(settings.get("restart_on_storm", False), strict=False) and bool(decision.get("storm"))
    broken = bool(decision.get("broken"))
    wanted = (not check_mode and mode != "never"
              and ((mode == "always" and broken) or (mode == "auto" and broken and ok is not True) or on_storm))
    if mode == "never":
        why = "p3_mesh_restart_app=never"
    elif check_mode:
        why = "check mode"
    elif on_storm:
        why = "connection storm: %s" % "; ".join(str(r) for r in decision.get("storms") or [])
    elif not broken:
        why = "mesh was healthy"
    elif mode == "always":
        why = "p3_mesh_restart_app=always"
    elif ok is True:
        why = "peers came back after the reconnect"
    elif ok is False:
        why = "peers still low %s s after the reconnect: %s" % (settings.get("settle_timeout"), settled.get("reason", ""))
    else:
        why = "no reconnect was possible: %s" % decision.get("why")
    return dict(wanted=wanted, why=why, settled=ok)


class FilterModule(object):
    def filters(self):
        return {
            "mesh_decision": mesh_decision,
            "mesh_input_errors": mesh_input_errors,
            "mesh_restart": mesh_restart,
        }
