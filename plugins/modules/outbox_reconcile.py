#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: outbox_reconcile
short_description: Reconcile P3's anchor outbox - stale processing rows back to pending, dead letters retried (gated)
version_added: 0.1.0
description:
  - Does what P3's own C(reconcileOrphaned()) does (server/anchor/outbox.ts) - rows C(processing) whose heartbeat is
    older than O(stale_seconds) go back to C(pending) with the heartbeat cleared, so P3's outbox loop enqueues them
    again. Rows C(processing) without a heartbeat are left alone, as P3 does.
  - With O(retry_dead_letters) it also does what P3's C(retryDeadLetter()) does - C(dead_letter) rows go back to
    C(pending) with C(retry_count=0) and C(last_error) cleared.
  - At most O(max_rows) rows of each kind per run, oldest first, rows locked by others skipped. The ids changed are
    returned (the rows themselves stay; nothing is deleted).
  - In check mode it only selects the rows it would change.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.postgres
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  table:
    description: The outbox table.
    type: str
    default: anchor_outbox
  stale_seconds:
    description: A processing row is stale when its heartbeat is older than this (P3 - 120 s).
    type: float
    default: 120
  retry_dead_letters:
    description: Also reset dead letters to pending.
    type: bool
    default: false
  max_rows:
    description: Change at most this many rows of each kind.
    type: int
    default: 1000
"""

EXAMPLES = r"""
- name: Reset stale processing rows; retry dead letters too
  p3.recovery.outbox_reconcile:
    dsn: "{{ p3_database_url }}"
    retry_dead_letters: true
    max_rows: 500
"""

RETURN = r"""
stale_reset:
  description: Ids of stale processing rows reset to pending (would be, in check mode).
  returned: always
  type: list
  elements: str
dead_letters_retried:
  description: Ids of dead letters reset to pending (would be, in check mode).
  returned: always
  type: list
  elements: str
timeline:
  description: One entry C({ts, action, target, detail}) per kind of change.
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.outbox import check_table, reconcile
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import PostgresTarget, postgres_argument_spec


def main():
    argument_spec = postgres_argument_spec(
        table=dict(type="str", default="anchor_outbox"),
        stale_seconds=dict(type="float", default=120),
        retry_dead_letters=dict(type="bool", default=False),
        max_rows=dict(type="int", default=1000),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        table = check_table(p["table"], "table")
        if p["stale_seconds"] <= 0 or p["max_rows"] < 1:
            raise P3Error("stale_seconds must be > 0 and max_rows >= 1")
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = PostgresTarget(module)
    client = target.client()
    try:
        res = reconcile(client, table, p["stale_seconds"], p["retry_dead_letters"], p["max_rows"], module.check_mode)
    except P3Error as e:
        fail_clean(module, e, changed=False)
    finally:
        client.close()
    verb = "would reset" if module.check_mode else "reset"
    timeline = []
    if res["stale_reset"]:
        timeline.append(timeline_entry("outbox_reconcile", "%s on %s" % (table, target.target),
                                       "%s %d stale processing row(s) to pending" % (verb, len(res["stale_reset"]))))
    if res["dead_letters_retried"]:
        timeline.append(timeline_entry("outbox_retry_dead_letters", "%s on %s" % (table, target.target),
                                       "%s %d dead letter(s) to pending (retry_count 0)" % (
                                           verb, len(res["dead_letters_retried"]))))
    module.exit_json(changed=bool(timeline), timeline=timeline, **res)


if __name__ == "__main__":
    main()
