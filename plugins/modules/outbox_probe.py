#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: outbox_probe
short_description: Read P3's durable anchor outbox (statuses, stale processing rows, dead letters, receipts)
version_added: 0.1.0
description:
  - P3 writes every anchor event to C(anchor_outbox) before queueing it; that table, not the queue, is the durable
    truth. This probe counts rows per status (pending, enqueued, processing, completed, failed, dead_letter), finds
    processing rows whose heartbeat is older than O(stale_seconds) (P3's C(STALE_THRESHOLD), 120 s), lists dead
    letters and the most frequent errors, read-only.
  - With O(ids) it also reports, per outbox id, its status and its C(anchor_receipts) row (transaction hash,
    block) and how many receipt rows exist for it (more than one is a duplicate anchoring).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.postgres
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  table:
    description: The outbox table.
    type: str
    default: anchor_outbox
  receipts_table:
    description: The receipts table (C(idempotency_key) = outbox id).
    type: str
    default: anchor_receipts
  stale_seconds:
    description: A processing row is stale when its heartbeat is older than this.
    type: float
    default: 120
  max_unfinished:
    description: Unhealthy when more rows are pending, enqueued or processing (not checked when unset).
    type: int
  ids:
    description: Outbox ids whose receipts to report in RV(receipts).
    type: list
    elements: str
    default: []
  sample:
    description: How many stale rows and dead letters to list.
    type: int
    default: 10
"""

EXAMPLES = r"""
- name: Outbox state
  p3.recovery.outbox_probe:
    dsn: "{{ p3_database_url }}"
  register: outbox
"""

RETURN = r"""
healthy:
  description: No stale processing row, no failed row, no dead letter, every id in O(ids) with exactly one receipt.
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
reachable:
  description: The database answered.
  returned: always
  type: bool
counts:
  description: Rows per status.
  returned: when reachable
  type: dict
  sample: {"pending": 0, "enqueued": 200, "processing": 0, "completed": 10, "failed": 0, "dead_letter": 0}
stale_processing:
  description: Number of stale processing rows.
  returned: when reachable
  type: int
stale_rows:
  description: The oldest of them (C(id), C(heartbeat_age_seconds)).
  returned: when reachable
  type: list
  elements: dict
dead_letters:
  description: Dead letters (C(id), C(retry_count), C(last_error)), oldest first.
  returned: when reachable
  type: list
  elements: dict
failed_errors:
  description: Most frequent C(last_error) of failed rows with counts.
  returned: when reachable
  type: list
  elements: dict
oldest_unfinished_age_seconds:
  description: Age of the oldest pending / enqueued / processing / failed row.
  returned: when reachable
  type: float
receipts:
  description: For O(ids) - C(id), C(status), C(tx_hash), C(block_number), C(receipt_status), C(receipt_rows).
  returned: when reachable
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.outbox import check_table, outbox_verdict, read_outbox
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import PostgresTarget, postgres_argument_spec


def main():
    argument_spec = postgres_argument_spec(
        table=dict(type="str", default="anchor_outbox"),
        receipts_table=dict(type="str", default="anchor_receipts"),
        stale_seconds=dict(type="float", default=120),
        max_unfinished=dict(type="int"),
        ids=dict(type="list", elements="str", default=[]),
        sample=dict(type="int", default=10),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        table = check_table(p["table"], "table")
        receipts = check_table(p["receipts_table"], "receipts_table")
        if p["stale_seconds"] <= 0 or p["sample"] < 0:
            raise P3Error("stale_seconds must be > 0 and sample >= 0")
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = PostgresTarget(module)
    client = target.client()
    try:
        client.connect()
    except P3Error as e:
        exit_probe(module, probe_result(False, e.msg, reachable=False))
    try:
        facts = read_outbox(client, table, receipts, p["stale_seconds"], ids=p["ids"], sample=p["sample"])
    except P3Error as e:
        client.close()
        module.fail_json(msg=e.msg, reachable=True)
    client.close()
    healthy, reason = outbox_verdict(facts, p["max_unfinished"])
    exit_probe(module, probe_result(healthy, "%s on %s: %s" % (table, target.target, reason), reachable=True, **facts))


if __name__ == "__main__":
    main()
