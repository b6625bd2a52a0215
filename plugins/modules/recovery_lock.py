#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: recovery_lock
short_description: Take, renew, release or read the run-level lock of one resource (Redis key or PostgreSQL row)
version_added: 0.1.0
description:
  - One lock per resource (the Redis cluster, the database, the anchor queue and wallet, ...) so two runs of the same
    recovery - two operators, or an alert-triggered run and an operator - never both act. The lock lives in a store
    every controller and AWX node sees, and expires by itself (O(ttl)) when the run that took it is killed.
  - O(store=redis) - the key C({p3recovery}:lock:<resource>) taken with C(SET NX PX) and released with
    compare-and-delete, in one Lua script each. On a cluster, all lock keys share one slot, whose master must serve;
    a cluster with a failed master or uncovered slots refuses every key command (C(CLUSTERDOWN)), so a lock that must
    hold while Redis is broken belongs in PostgreSQL.
  - O(store=postgres) - a row of O(table) (created when missing) taken with C(INSERT ... ON CONFLICT DO UPDATE) only
    when the row is this run's or expired, by the database's clock. Use a superuser DSN - it gets in through the
    reserved slots while the app holds every other connection.
  - O(state=acquired) takes the lock, or renews it (pushes the expiry O(ttl) seconds out) when this run (O(run_id))
    already holds it. When another run holds it, the module does not fail - it returns RV(locked_out=true) and
    RV(reason) C(<resource> is already being recovered by <who> since <when>), after waiting up to O(wait) seconds
    for it to be released.
  - O(state=renewed) pushes the expiry O(ttl) seconds out only while this run (O(run_id)) still holds the lock
    (compare-and-set, in one Lua script on Redis, one C(UPDATE ... WHERE run_id AND not expired) on PostgreSQL). A
    lock that expired, was released or is held by another run is not touched and the module fails with one line
    (RV(lost)) - the run must not go on to its next destructive step. Check mode renews nothing and never fails.
  - O(state=released) deletes the lock only while it is this run's (or any holder's with O(force)).
  - O(state=query) reads the holder.
  - In check mode nothing is taken or released; the holder is read and a lock held by another run is reported
    exactly as the real run would (RV(locked_out)).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.postgres
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - redis (for O(store=redis))
  - psycopg2 (for O(store=postgres))
options:
  resource:
    description: What the lock protects, e.g. C(redis-cluster), C(database), C(anchor-queue).
    type: str
    required: true
  state:
    description: C(acquired) (take or renew), C(renewed) (extend only while this run holds it), C(released), or
      C(query) (read only).
    type: str
    choices: [acquired, renewed, released, query]
    default: acquired
  store:
    description: Where the lock lives.
    type: str
    choices: [redis, postgres]
    required: true
  run_id:
    description:
      - Identifies the run that holds the lock (the roles create one random id per playbook run). Required for
        O(state=acquired), O(state=renewed) and O(state=released) (unless O(force)).
    type: str
  owner:
    description:
      - Who holds the lock, for the message a locked-out run prints. Default - C(user@host), the AWX job
        (E(AWX_JOB_ID), E(JOB_ID) or E(TOWER_JOB_ID)) when set, the pid of the calling process, then O(purpose).
    type: str
  purpose:
    description: Appended to the default O(owner), e.g. the playbook name.
    type: str
  ttl:
    description:
      - Seconds until the lock expires by itself when it is not released or renewed (a killed run). Keep it above
        the longest run of the recovery, or renew it between stages.
    type: int
    default: 900
  wait:
    description: Seconds to keep trying (every second) while another run holds the lock. 0 tries once.
    type: float
    default: 0
  force:
    description: With O(state=released), release whoever holds the lock (an operator breaking a stale lock).
    type: bool
    default: false
  table:
    description: Lock table for O(store=postgres) (optionally schema-qualified).
    type: str
    default: p3_recovery_locks
"""

EXAMPLES = r"""
- name: Take the lock of the Redis cluster recovery (kept in PostgreSQL, which works while Redis is CLUSTERDOWN)
  p3.recovery.recovery_lock:
    resource: redis-cluster
    store: postgres
    dsn: "{{ p3_database_url }}"
    run_id: "{{ p3_lock_run_id }}"
    purpose: recover_redis
  register: lock

- name: Another run recovers it - stop here cleanly
  ansible.builtin.meta: end_host
  when: lock.locked_out

- name: Before the next destructive step - still ours? (fails in one line when the lock was lost)
  p3.recovery.recovery_lock:
    resource: redis-cluster
    store: postgres
    state: renewed
    run_id: "{{ p3_lock_run_id }}"

- name: Break a stale lock by hand
  p3.recovery.recovery_lock:
    resource: redis-cluster
    store: postgres
    state: released
    force: true
"""

RETURN = r"""
changed:
  description: The lock was taken (not renewed) or released (in check mode - would be).
  returned: always
  type: bool
acquired:
  description: This run holds the lock now (taken or renewed). Always false in check mode.
  returned: always
  type: bool
renewed:
  description: This run already held the lock; its expiry was pushed out.
  returned: always
  type: bool
lost:
  description: With O(state=renewed), this run no longer holds the lock (another run holds it, or it expired or was
    released); nothing was written and the module failed.
  returned: always
  type: bool
locked_out:
  description: Another run holds the lock (this run must not act).
  returned: always
  type: bool
released:
  description: The lock was deleted by this call.
  returned: always
  type: bool
holder:
  description: The holder after the call (or the one released) - C(owner), C(run_id), C(since) (UTC),
    C(expires_in) (seconds); null when nobody holds it.
  returned: always
  type: dict
resource:
  description: The resource.
  returned: always
  type: str
store:
  description: C(redis) or C(postgres).
  returned: always
  type: str
where:
  description: The store's address (Redis seeds or PostgreSQL host:port), without credentials.
  returned: always
  type: str
run_id:
  description: The run id used.
  returned: always
  type: str
owner:
  description: The owner string this run writes.
  returned: always
  type: str
reason:
  description: One line - what happened, or C(<resource> is already being recovered by <who> since <when>).
  returned: always
  type: str
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, P3Module, close_quietly, fail_clean
from ansible_collections.p3.recovery.plugins.module_utils.locks import (
    DEFAULT_TABLE,
    PostgresLockStore,
    RedisLockStore,
    default_owner,
    lock_action,
)
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import POSTGRES_ARGUMENT_SPEC, PostgresTarget
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec


def main():
    argument_spec = redis_argument_spec(
        resource=dict(type="str", required=True),
        state=dict(type="str", choices=["acquired", "renewed", "released", "query"], default="acquired"),
        store=dict(type="str", choices=["redis", "postgres"], required=True),
        run_id=dict(type="str"),
        owner=dict(type="str"),
        purpose=dict(type="str"),
        ttl=dict(type="int", default=900),
        wait=dict(type="float", default=0),
        force=dict(type="bool", default=False),
        table=dict(type="str", default=DEFAULT_TABLE),
    )
    argument_spec.update(POSTGRES_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["ttl"] <= 0:
        module.fail_json(msg="ttl must be > 0 seconds, got %s" % p["ttl"])
    if p["wait"] < 0:
        module.fail_json(msg="wait must be >= 0 seconds, got %s" % p["wait"])
    if not p["run_id"] and (p["state"] in ("acquired", "renewed") or (p["state"] == "released" and not p["force"])):
        module.fail_json(msg="run_id is required to take, renew or release a lock (force=true releases any holder)")
    owner = p["owner"] or default_owner(purpose=p["purpose"])
    client = None
    try:
        if p["store"] == "postgres":
            client = PostgresTarget(module).client()
            store = PostgresLockStore(client, table=p["table"])
        else:
            store = client = RedisLockStore(RedisTarget(module).settings)
        result = lock_action(store, p["state"], p["resource"], p["run_id"] or "", owner, ttl=p["ttl"],
                             wait=p["wait"], force=p["force"], check_mode=module.check_mode)
    except P3Error as e:
        # one line naming the lock, the store and the cause; the run must not act without its lock
        fail_clean(module, P3Error("recovery lock of %s (store %s): %s" % (p["resource"], p["store"], e.msg)),
                   resource=p["resource"], store=p["store"])
    finally:
        close_quietly(client)
    if result["lost"]:
        # the run must not take its next destructive step without its lock
        module.fail_json(msg="recovery lock of %s (store %s): %s" % (p["resource"], p["store"], result["reason"]),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
