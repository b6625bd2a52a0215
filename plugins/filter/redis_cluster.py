# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decision of the redis_cluster role (p3.recovery.recover_redis): which of the repairs the topology asks for
(its next_actions) the role's switches allow, and one line that says so. Each filter is documented in its <name>.yml."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.module_utils.parsing.convert_bool import boolean

# next_actions of redis_cluster_topology -> the role switch that allows it (and the hint when it is off).
_SWITCHES = (
    ("failover", "failover", "failover"),
    ("slots", "repair_slots", "slots"),
    ("rejoin", "rejoin", "rejoin"),
    ("forget", "forget_failed", "forget: set p3_redis_forget_failed"),
    ("reshape", "reshape", "reshape: set p3_redis_reshape"),
)


def redis_decision(seen, settings):
    """{failover, slots, rejoin, forget, reshape, off, decided, why} from a redis_cluster_topology result.

    settings: failover, failover_master, repair_slots, rejoin, forget_failed, reshape (the role's p3_redis_*
    variables).
    """
    seen = seen or {}
    settings = settings or {}
    wanted = list(seen.get("next_actions") or [])
    on = dict((action, boolean(settings.get(switch, False), strict=False)) for action, switch, dummy in _SWITCHES)
    out = dict((action, on[action] and action in wanted) for action in on)
    # An explicit master to fail over (p3_redis_failover_master) is a failover even when the topology sees none.
    out["failover"] = on["failover"] and ("failover" in wanted or len(settings.get("failover_master") or "") > 0)
    off = [hint for action, dummy, hint in _SWITCHES if action in wanted and not on[action]]
    decided = ", ".join(wanted) or "nothing to do"
    if off:
        decided += " (off: %s)" % ", ".join(off)
    out.update(off=off, decided=decided, why="%s -> %s" % (seen.get("reason", ""), decided))
    return out


class FilterModule(object):
    def filters(self):
        return {"redis_decision": redis_decision}
