#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: chain_probe
short_description: Probe the chain and the anchor wallet (RPC, chain id, latest block, balance, stuck nonces)
version_added: 0.1.0
description:
  - The runbook's C(curl $RPC_URL eth_blockNumber) and C(cast balance $ANCHOR_WALLET), read-only and judged.
  - Reports whether the RPC answers, the chain id (and whether it is the expected one), the latest block and its
    age, the wallet's balance against the low and critical thresholds (P3's wallet docs - low 0.1 ETH, critical
    0.05 ETH), and pending vs latest nonce (transactions sent but not mined).
  - With O(tx_hashes) it also checks that each transaction has a successful receipt (anchoring verified on chain).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.ethereum
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  expected_chain_id:
    description: Unhealthy when the RPC serves another chain (P3 - 8453 Base, 84532 Base Sepolia).
    type: int
  wallet:
    description:
      - Address of the anchor wallet. If not set, the environment variable E(ANCHOR_WALLET) is used.
      - Without it only the chain is probed.
    type: str
  low_threshold_wei:
    description: Balance below this is C(low) (unhealthy). Default 0.1 ETH.
    type: int
    default: 100000000000000000
  critical_threshold_wei:
    description: Balance below this is C(critical). Default 0.05 ETH.
    type: int
    default: 50000000000000000
  max_block_age_seconds:
    description: Unhealthy when the latest block is older (not checked when unset; dev chains mine on demand).
    type: float
  max_pending:
    description:
      - Unhealthy when the wallet has more pending (unmined) transactions than this, still after
        O(pending_confirm_seconds).
    type: int
    default: 0
  pending_confirm_seconds:
    description:
      - When more than O(max_pending) transactions are pending, read the latest nonce again this many seconds later;
        they are stuck only when those pending at the first read are still not all mined then. A wallet that is
        sending (the anchor worker under traffic) always has one in flight, which one read would call stuck.
      - C(0) judges the first read alone. At most 60. Only waited when the first read finds too many pending.
    type: float
    default: 2.0
  tx_hashes:
    description: Transactions that must have a receipt with status 1.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Chain and anchor wallet
  p3.recovery.chain_probe:
    rpc_url: "{{ p3_rpc_url }}"
    expected_chain_id: 31337
    wallet: "{{ p3_anchor_wallet }}"
  register: chain

- name: Every anchoring transaction is on chain
  p3.recovery.chain_probe:
    rpc_url: "{{ p3_rpc_url }}"
    tx_hashes: "{{ receipts | map(attribute='tx_hash') }}"
    fail_on_unhealthy: true
"""

RETURN = r"""
healthy:
  description: Reachable, expected chain id, fresh block (if asked), wallet at or above the low threshold, no stuck
    transactions, every receipt successful.
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "http://127.0.0.1:17020: wallet 0x7099...79C8 balance 0 ETH is critical (< 0.05 ETH)"
reachable:
  description: The RPC answered C(eth_chainId).
  returned: always
  type: bool
rpc:
  description: The RPC endpoint without path or credentials.
  returned: always
  type: str
chain_id:
  description: Chain id the RPC serves.
  returned: always
  type: int
chain_id_ok:
  description: Whether it equals O(expected_chain_id) (null when not given).
  returned: always
  type: bool
block_number:
  description: Latest block number.
  returned: always
  type: int
block_age_seconds:
  description: Seconds since the latest block's timestamp.
  returned: always
  type: float
wallet:
  description: The wallet probed.
  returned: always
  type: str
balance_wei:
  description: Its balance in wei.
  returned: always
  type: int
balance_eth:
  description: The same in ETH (exact decimal string).
  returned: always
  type: str
wallet_level:
  description: C(ok), C(low) or C(critical).
  returned: always
  type: str
nonce_latest:
  description: Transaction count at the latest block.
  returned: always
  type: int
nonce_pending:
  description: Transaction count including pending transactions.
  returned: always
  type: int
pending_transactions:
  description: RV(nonce_pending) - RV(nonce_latest).
  returned: always
  type: int
nonce_latest_confirmed:
  description:
    - The latest transaction count read again O(pending_confirm_seconds) after the first read; the transactions pending
      then are stuck when RV(nonce_pending) is still above it.
  returned: when more than O(max_pending) transactions were pending and O(pending_confirm_seconds) is above 0
  type: int
receipts:
  description: For O(tx_hashes) - C(tx_hash), C(found), C(status), C(block_number), C(sender).
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.chain import PENDING_CONFIRM_SECONDS, chain_facts, check_address
from ansible_collections.p3.recovery.plugins.module_utils.chain import check_thresholds, check_tx_hash
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, env, exit_probe, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.ethereum_client import EthereumTarget, ethereum_argument_spec


def main():
    argument_spec = ethereum_argument_spec(
        expected_chain_id=dict(type="int"),
        wallet=dict(type="str", fallback=env("ANCHOR_WALLET")),
        low_threshold_wei=dict(type="int", default=10 ** 17),
        critical_threshold_wei=dict(type="int", default=5 * 10 ** 16),
        max_block_age_seconds=dict(type="float"),
        max_pending=dict(type="int", default=0),
        pending_confirm_seconds=dict(type="float", default=PENDING_CONFIRM_SECONDS),
        tx_hashes=dict(type="list", elements="str", default=[], no_log=False),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    try:
        if p["wallet"]:
            check_address(p["wallet"], "wallet")
        check_thresholds(p["low_threshold_wei"], p["critical_threshold_wei"])
        hashes = [check_tx_hash(h) for h in p["tx_hashes"]]
        if not 0 <= p["pending_confirm_seconds"] <= 60:
            raise P3Error("pending_confirm_seconds must be between 0 and 60, got %s" % p["pending_confirm_seconds"])
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = EthereumTarget(module)
    facts = chain_facts(target.rpc, expected_chain_id=p["expected_chain_id"], wallet=p["wallet"],
                        low=p["low_threshold_wei"], critical=p["critical_threshold_wei"], tx_hashes=hashes,
                        max_block_age_seconds=p["max_block_age_seconds"], max_pending=p["max_pending"],
                        pending_confirm_seconds=p["pending_confirm_seconds"])
    healthy = facts.pop("healthy")
    reason = facts.pop("reason")
    exit_probe(module, probe_result(healthy, reason, **facts))


if __name__ == "__main__":
    main()
