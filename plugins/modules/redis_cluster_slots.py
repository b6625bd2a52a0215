#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: redis_cluster_slots
short_description: Repair Redis Cluster slot coverage and open slots, losing no key unless explicitly allowed
version_added: 0.1.0
description:
  - What the runbook's C(CLUSTER FIX) (not a Redis command) means, done the way C(redis-cli --cluster fix) does it
    but without its lossy shortcuts.
  - Open slots (C(migrating)/C(importing)) are closed like C(redis-cli --cluster fix) - a migration both sides
    agree on is finished (keys moved with C(MIGRATE), then C(CLUSTER SETSLOT NODE) on both and every master), an
    import without a migration gets its keys moved back to the owner and C(SETSLOT STABLE), a migration without an
    import is made C(STABLE).
  - Slots no live master serves whose owner is down but has a live replica are repaired by promoting that replica
    (as M(p3.recovery.redis_cluster_failover)), when O(promote_replicas=true).
  - Other uncovered slots - counted with C(CLUSTER COUNTKEYSINSLOT) on every live master - go to the master that
    holds their keys; slots without keys go to the master of the nearest served slot, so ranges stay contiguous
    (C(redis-cli --cluster fix) scatters them at random). The new owner runs C(CLUSTER DELSLOTSRANGE) (for slots its
    view still gives a dead node), C(CLUSTER ADDSLOTSRANGE) and C(CLUSTER BUMPEPOCH) in one C(MULTI).
  - The slots of a busy master (it does not answer, but is not down by the cluster's own definition - see
    M(p3.recovery.redis_cluster_topology)) are never reassigned, whatever O(allow_data_loss) says; right before an
    C(ADDSLOTS) that takes the slots of an owner that does not serve them, that owner is checked again (C(PING),
    fresh views of every peer) and the repair stops if it is not down any more.
  - Lossy cases - the owner is down and none of its replicas can be promoted (the message says whether it has
    none, or names them and their state), keys of one slot on several masters, or an unassigned slot while a master
    is unreachable - are refused unless O(allow_data_loss=true); the refusal and the result name the slots, how many
    keys may be lost, and the unreachable owners whose keys cannot be counted.
  - Masters whose view maps a slot to another node than the one that claims it (while the majority agrees with the
    claim) learn the owner with C(CLUSTER SETSLOT <slot> NODE <owner>).
  - Every other reachable master is then told the new owners with C(CLUSTER SETSLOT <slot> NODE <owner>) (as
    C(redis-cli) does after moving a slot) instead of waiting for the owner's heartbeats; replicas cannot take
    C(SETSLOT) and learn by heartbeat, which reaches every node at least every C(cluster-node-timeout)/2.
  - Polls every 50 ms until every reachable node maps the repaired slots to their new owner and says
    C(cluster_state:ok), at most O(wait_timeout) seconds; the failure names each node still behind and why.
  - Nothing to repair reports C(changed=false); a repair that sent assignments reports C(changed=true) even when it
    then fails (for example, did not converge within O(wait_timeout)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.redis_cluster
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reads the topology and counts keys; returns the plan and sends nothing. A lossy plan fails the same way.
  diff_mode:
    support: none
options:
  allow_data_loss:
    description:
      - Assign slots whose keys may be lost (see the description). Without it such a plan fails and changes nothing.
    type: bool
    default: false
  promote_replicas:
    description: Repair the slots of a down master by promoting its best live replica first.
    type: bool
    default: true
  allow_takeover:
    description: Passed to the promotion (see M(p3.recovery.redis_cluster_failover)).
    type: bool
    default: false
  fix_open_slots:
    description: Close migrating/importing slots.
    type: bool
    default: true
  max_slots:
    description: Refuse (change nothing) when the plan would assign more slots than this.
    type: int
    default: 16384
  migrate_timeout_ms:
    description: C(MIGRATE) timeout per batch of 100 keys, in milliseconds.
    type: int
    default: 5000
  wait_timeout:
    description: Seconds to wait for every reachable node to agree after the repair (and for each promotion).
      Keep it well above C(cluster-node-timeout)/2 (replicas learn slot owners by heartbeat).
    type: float
    default: 30
seealso:
  - module: p3.recovery.redis_cluster_topology
  - module: p3.recovery.redis_cluster_failover
"""

EXAMPLES = r"""
- name: Repair slot coverage without losing keys
  p3.recovery.redis_cluster_slots:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
  register: repair

- name: Accept losing the keys of a master that is gone for good (after reading the refusal)
  p3.recovery.redis_cluster_slots:
    allow_data_loss: true
"""

RETURN = r"""
plan:
  description:
    - C(failover) (promotion steps), C(assign) (per new owner - C(node), C(slots) ranges, C(count), C(keys) already
      there, C(lossy) ranges, C(taken_from)), C(view_fixes), C(open_slots), C(lossy_slots) (ranges), C(keys_at_risk)
      (keys of other masters in lossy slots that are not moved), C(keys_unknown_on) (down owners whose keys are lost
      if they never return), C(refused).
  returned: always
  type: dict
failovers:
  description: Promotions done (see M(p3.recovery.redis_cluster_failover)).
  returned: always
  type: list
  elements: dict
timeline:
  description: What was sent and when (C(ts), C(action), C(target), C(detail)).
  returned: always
  type: list
  elements: dict
slots_uncovered_before:
  description: Ranges not served by a live master before the repair.
  returned: always
  type: list
  elements: str
reason:
  description: One line.
  returned: always
  type: str
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.redis_cluster import (
    REDIS_CLUSTER_ARGUMENT_SPEC, cluster_param_error, count_keys, plan_failover, plan_slot_repair, plan_view_fixes,
    range_slots, ranges_text, read_topology, repair_changed, run_failover, run_slot_repair)


def shown(plan, open_slots, failover):
    return dict(
        failover=failover,
        assign=[dict(node=a["node"], slots=ranges_text(a["slots"], 50), count=len(a["slots"]), keys=a["keys"],
                     lossy=ranges_text(a["lossy"], 50), taken_from=a["taken_from"]) for a in plan["assign"]],
        view_fixes=[dict(node=f["node"], owner=f["owner"], slots=ranges_text(f["slots"], 50))
                    for f in plan["view_fixes"]],
        open_slots=open_slots,
        lossy_slots=ranges_text(plan["lossy_slots"], 50),
        lossy_why=sorted(set(plan["lossy"].values()))[:10],
        keys_at_risk=plan["keys_at_risk"],
        keys_unknown_on=plan["keys_unknown_on"],
        refused=plan["refused"],
    )


def main():
    argument_spec = redis_argument_spec(**REDIS_CLUSTER_ARGUMENT_SPEC)
    argument_spec.update(
        allow_data_loss=dict(type="bool", default=False),
        promote_replicas=dict(type="bool", default=True),
        allow_takeover=dict(type="bool", default=False),
        fix_open_slots=dict(type="bool", default=True),
        max_slots=dict(type="int", default=16384),
        migrate_timeout_ms=dict(type="int", default=5000),
        wait_timeout=dict(type="float", default=30.0),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["wait_timeout"] <= 0 or p["max_slots"] < 0 or p["migrate_timeout_ms"] <= 0:
        module.fail_json(msg="wait_timeout and migrate_timeout_ms must be > 0, max_slots >= 0")
    if cluster_param_error(p):
        module.fail_json(msg=cluster_param_error(p))
    target = RedisTarget(module)
    empty = dict(plan={}, failovers=[], timeline=[], slots_uncovered_before=[])
    failovers, timeline = [], []
    try:
        topo = read_topology(target.settings, unanswered_ms=p["unanswered_ms"], confirm_timeout=p["confirm_timeout"])
        if topo.get("cluster_enabled") is None:
            raise P3Error(topo["reason"])
        if not topo["cluster_enabled"]:
            raise P3Error("%s is not a Redis Cluster (slot repair needs cluster mode)" %
                          ", ".join(target.settings.seed_addresses))
        before = topo["slots_uncovered"]
        steps = []
        if p["promote_replicas"]:
            uncovered_owners = set(c["master_id"] for c in topo["failover_candidates"] if c["replicas"])
            for c in topo["failover_candidates"]:
                if c["master_id"] in uncovered_owners:
                    steps += plan_failover(topo, master=c["master"], allow_takeover=p["allow_takeover"])
        if steps and not module.check_mode:
            failovers, timeline, dummy = run_failover(target.settings, topo, steps, wait_timeout=p["wait_timeout"],
                                                      allow_takeover=p["allow_takeover"])
            topo = read_topology(target.settings, unanswered_ms=p["unanswered_ms"])
        if not p["fix_open_slots"]:
            topo["open_slots"] = []
        live = [n["address"] for n in topo["nodes"] if n["role"] == "master" and n["reachable"]]
        todo = range_slots(topo["slots_uncovered"])
        counts = count_keys(target.settings, live, todo) if todo else {}
        plan = plan_slot_repair(topo, counts, allow_data_loss=p["allow_data_loss"],
                                promote_replicas=p["promote_replicas"] and module.check_mode)
        plan["view_fixes"] = plan_view_fixes(topo)
        result = dict(plan=shown(plan, topo["open_slots"], steps), failovers=failovers, timeline=timeline,
                      slots_uncovered_before=before)
        n_assign = sum(len(a["slots"]) for a in plan["assign"])
        if n_assign > p["max_slots"]:
            raise P3Error("the repair would assign %d slots, more than max_slots=%d; nothing assigned" % (
                n_assign, p["max_slots"]), **result)
        if plan["refused"]:
            raise P3Error("cannot repair slots %s: %s" % (", ".join(r["slots"] for r in plan["refused"]),
                                                          plan["refused"][0]["why"]), **result)
        if not plan["allowed"]:
            unknown = plan["keys_unknown_on"]
            raise P3Error(
                "refusing the lossy repair of %d slots (%s): %s; %d keys on other masters would not be moved%s; "
                "set allow_data_loss=true to assign them anyway" % (
                    len(plan["lossy_slots"]), ranges_text(plan["lossy_slots"]),
                    "; ".join(sorted(set(plan["lossy"].values()))[:3]), plan["keys_at_risk"],
                    ("; the keys of %s (unreachable) cannot be counted and are lost unless it returns" %
                     ", ".join(unknown)) if unknown else ""),
                **result)
        work = bool(plan["assign"] or plan["view_fixes"] or topo["open_slots"])
        if module.check_mode or not work:
            what = []
            if steps:
                what.append("%s %d promotion(s)" % ("would do" if module.check_mode else "did", len(steps)))
            if plan["assign"]:
                what.append("would assign %d slots (%s)" % (n_assign, "; ".join(
                    "%s to %s" % (ranges_text(a["slots"]), a["node"]) for a in plan["assign"])))
            if topo["open_slots"]:
                what.append("would close %d open slots" % len(topo["open_slots"]))
            if plan["view_fixes"]:
                what.append("would fix %d stale views" % len(plan["view_fixes"]))
            module.exit_json(changed=bool(steps) or work, reason="; ".join(what) or "every slot is served; nothing to repair",
                             **result)
        timeline += run_slot_repair(target.settings, topo, plan, wait_timeout=p["wait_timeout"],
                                    migrate_timeout_ms=p["migrate_timeout_ms"])
        result["timeline"] = timeline
    except P3Error as e:
        details = dict(empty)
        details.update(e.details)
        details.setdefault("timeline", timeline)
        details.setdefault("failovers", failovers)
        # slot assignments sent but not converged (or a promotion) changed the cluster: changed survives the failure
        details["changed"] = bool(details.get("changed")) or repair_changed(timeline + [
            e for e in details["timeline"] if e not in timeline])
        module.fail_json(msg=e.msg, **details)
    reason = []
    if failovers:
        ours = [f["replica"] for f in failovers if f.get("by") != "redis"]
        theirs = [f["replica"] for f in failovers if f.get("by") == "redis"]
        if ours:
            reason.append("promoted %s" % ", ".join(ours))
        if theirs:
            reason.append("Redis promoted %s by itself" % ", ".join(theirs))
    if plan["assign"]:
        reason.append("assigned %s" % "; ".join("%s to %s" % (ranges_text(a["slots"]), a["node"]) for a in plan["assign"]))
    if topo["open_slots"]:
        reason.append("closed %d open slots" % len(topo["open_slots"]))
    if plan["view_fixes"]:
        reason.append("fixed %d stale views" % len(plan["view_fixes"]))
    module.exit_json(changed=repair_changed(timeline), reason="; ".join(reason), **result)


if __name__ == "__main__":
    main()
