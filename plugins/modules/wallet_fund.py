#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: wallet_fund
short_description: Top up the anchor wallet from a funding key, only below the low threshold, never above the target
version_added: 0.1.0
description:
  - The runbook's C(cast send $ANCHOR_WALLET --value 0.1ether), guarded. Sends nothing while the wallet holds at
    least O(low_threshold_wei) (so a second run reports C(changed=false)); below it, sends exactly
    O(target_wei) minus the balance, never more than O(max_fund_wei), and waits for the receipt.
  - The balance is read in the C(pending) state (C(eth_getBalance(wallet, "pending"))), so transfers already in the
    node's pool count, whoever sent them.
  - A transfer from the funding account to the wallet that was sent but is not mined yet (the funder's pending nonce
    is above its latest one and the pool holds a transaction to the wallet) means C(nothing to do - transfer <tx>
    pending), C(changed=false), whatever the balance. The pool is read with C(txpool_content) (geth, anvil, reth,
    erigon), else the pending block. When the funder has transactions in flight that the node shows in neither (many
    hosted RPCs), nothing is sent and the module fails, naming them. Limits - a node only knows the pool it saw; a
    transfer sent through another node may not be visible yet.
  - Right before signing, the funder's pending nonce is read again; if it moved since the decision, nothing is sent.
    Two runs that decided on the same state sign the same nonce, so at most one of their transfers can be mined.
  - C(changed=true) and RV(tx_hash) as soon as a transaction was sent. When no receipt comes within
    O(receipt_timeout) the task fails (the wallet is not funded yet, later steps should not run on it) with
    C(changed=true), RV(tx_hash) and RV(receipt=pending); a later run sees the transfer pending and sends nothing.
  - Refuses to send when the RPC serves another chain than O(expected_chain_id), or when the funding account cannot
    pay the amount plus gas (a clean failure naming both accounts, never the key).
  - In check mode it reads the balances and the pool and reports what it would send; it signs and sends nothing.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.ethereum
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - eth-account (installed with web3)
options:
  wallet:
    description: Address to fund. If not set, the environment variable E(ANCHOR_WALLET) is used.
    type: str
  funding_key:
    description:
      - Private key (hex) of the account that pays. If not set, the environment variable E(P3_FUNDING_KEY) is used.
      - Never logged; it does not appear in any output, also at C(-vvv).
    type: str
    required: true
  expected_chain_id:
    description: Refuse to send on any other chain.
    type: int
    required: true
  low_threshold_wei:
    description: Fund only when the balance is below this. Default 0.1 ETH (P3's wallet docs).
    type: int
    default: 100000000000000000
  target_wei:
    description: Balance to reach. Default 0.5 ETH (P3's documented refill level).
    type: int
    default: 500000000000000000
  max_fund_wei:
    description: Never send more than this in one run. Default 1 ETH.
    type: int
    default: 1000000000000000000
  receipt_timeout:
    description: Seconds to wait for the receipt (a total deadline, RPC calls included).
    type: float
    default: 60
"""

EXAMPLES = r"""
- name: Top up the anchor wallet
  p3.recovery.wallet_fund:
    rpc_url: "{{ p3_rpc_url }}"
    wallet: "{{ p3_anchor_wallet }}"
    funding_key: "{{ vault_funding_key }}"
    expected_chain_id: 8453
    max_fund_wei: "{{ (0.5 * 10**18) | int }}"
"""

RETURN = r"""
changed:
  description: A transaction was sent (or would be, in check mode); true as soon as it was sent, also when the task
    then fails waiting for its receipt.
  returned: always
  type: bool
funded:
  description: Whether the transaction of this run was mined with status 1.
  returned: always
  type: bool
wallet:
  description: The funded wallet.
  returned: always
  type: str
funder:
  description: Address of the funding account (derived from the key).
  returned: always
  type: str
chain_id:
  description: Chain id of the RPC.
  returned: always
  type: int
balance_before_wei:
  description: Wallet balance before, in the pending state (transfers in the pool included).
  returned: always
  type: int
amount_wei:
  description: Sent (or, in check mode, would send); 0 when nothing is sent.
  returned: always
  type: int
capped:
  description: The amount was cut to O(max_fund_wei).
  returned: always
  type: bool
balance_after_wei:
  description: Wallet balance at the block of the funding transaction (null when nothing was mined).
  returned: always
  type: int
pending_tx:
  description: Hash of a transfer from the funder to the wallet that is still pending (then nothing was sent).
  returned: always
  type: str
receipt:
  description: C(pending) (sent, no receipt within O(receipt_timeout)), C(mined), C(reverted), or null when nothing
    was sent.
  returned: always
  type: str
tx_hash:
  description: Funding transaction sent by this run.
  returned: when a transaction was sent
  type: str
nonce:
  description: Nonce of that transaction.
  returned: when a transaction was sent
  type: int
block_number:
  description: Block it was mined in.
  returned: when mined
  type: int
fee_wei:
  description: Gas paid by the funder.
  returned: when mined
  type: int
reason:
  description: One line saying what was decided.
  returned: always
  type: str
timeline:
  description: One entry C({ts, action, target, detail}) when something was (or would be) sent.
  returned: always
  type: list
  elements: dict
"""

import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.chain import (
    check_address,
    check_thresholds,
    eth,
    fund_amount,
    load_account,
    pending_transfers,
    send_transfer,
    wait_receipt,
)
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, env, fail_clean, num_text, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.ethereum_client import EthereumTarget, ethereum_argument_spec

ETH_ACCOUNT_IMP_ERR = None
try:
    # the signer (module_utils.chain.load_account imports it when it signs); only this module needs it
    import eth_account  # noqa: F401  # pylint: disable=unused-import
    HAS_ETH_ACCOUNT = True
except ImportError:  # pragma: no cover - depends on the environment
    ETH_ACCOUNT_IMP_ERR = traceback.format_exc()
    HAS_ETH_ACCOUNT = False


def main():
    argument_spec = ethereum_argument_spec(
        wallet=dict(type="str", fallback=env("ANCHOR_WALLET")),
        funding_key=dict(type="str", required=True, no_log=True, fallback=env("P3_FUNDING_KEY")),
        expected_chain_id=dict(type="int", required=True),
        low_threshold_wei=dict(type="int", default=10 ** 17),
        target_wei=dict(type="int", default=5 * 10 ** 17),
        max_fund_wei=dict(type="int", default=10 ** 18),
        receipt_timeout=dict(type="float", default=60),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not HAS_ETH_ACCOUNT:
        module.fail_json(msg=missing_required_lib("eth-account (web3)"), exception=ETH_ACCOUNT_IMP_ERR)
    try:
        wallet = check_address(p["wallet"], "wallet")
        check_thresholds(p["low_threshold_wei"], target=p["target_wei"], cap=p["max_fund_wei"])
        if p["receipt_timeout"] <= 0:
            raise P3Error("receipt_timeout must be > 0")
        account = load_account(p["funding_key"])
    except P3Error as e:
        module.fail_json(msg=e.msg)
    target = EthereumTarget(module)
    rpc = target.rpc
    result = dict(changed=False, funded=False, wallet=wallet, funder=account.address, chain_id=None,
                  balance_before_wei=None, amount_wei=0, capped=False, balance_after_wei=None, pending_tx=None,
                  receipt=None, timeline=[])
    try:
        result["chain_id"] = rpc.chain_id()
        if result["chain_id"] != p["expected_chain_id"]:
            raise P3Error("%s serves chain %s, expected %s: refusing to send funds" % (
                rpc.display, result["chain_id"], p["expected_chain_id"]))
        if account.address.lower() == wallet.lower():
            raise P3Error("funding_key belongs to the wallet itself (%s)" % wallet)
        # A transfer of ours still in flight is the answer: never a second one on top of it.
        flight = pending_transfers(rpc, account.address, wallet)
        balance = rpc.balance(wallet, "pending")
        result["balance_before_wei"] = balance
        if flight["transfers"]:
            t = flight["transfers"][-1]
            result["pending_tx"] = t["tx_hash"]
            result["reason"] = "nothing to do: transfer %s pending (%s ETH from %s to %s, nonce %s; seen in %s); " \
                "wallet %s ETH once it is mined" % (t["tx_hash"], eth(t["value_wei"]), account.address, wallet,
                                                    t["nonce"], flight["source"], eth(balance))
            module.exit_json(**result)
        amount, capped = fund_amount(balance, p["low_threshold_wei"], p["target_wei"], p["max_fund_wei"])
        result.update(amount_wei=amount, capped=capped)
        if not amount:
            result["reason"] = "%s holds %s ETH (pending state) >= low threshold %s ETH: nothing to send" % (
                wallet, eth(balance), eth(p["low_threshold_wei"]))
            module.exit_json(**result)
        detail = "%s ETH from %s to %s (balance %s ETH -> %s ETH%s)" % (
            eth(amount), account.address, wallet, eth(balance), eth(balance + amount),
            ", capped by max_fund_wei" if capped else "")
        if module.check_mode:
            result.update(changed=True, reason="would send " + detail)
            result["timeline"].append(timeline_entry("wallet_fund (check mode: nothing sent)", wallet, "would send " + detail))
            module.exit_json(**result)
        # Re-checked right before signing: the funder's pending nonce must still be the one decided on.
        sent = send_transfer(rpc, account, wallet, amount, result["chain_id"], expect_nonce=flight["nonce_pending"])
    except P3Error as e:
        fail_clean(module, e, **result)
    # From here on a transaction is out: changed=true whatever happens next.
    result.update(changed=True, tx_hash=sent["tx_hash"], nonce=sent["nonce"], receipt="pending")
    result["timeline"].append(timeline_entry("wallet_fund", wallet, "sent %s in tx %s" % (detail, sent["tx_hash"])))
    try:
        mined = wait_receipt(rpc, sent["tx_hash"], timeout=p["receipt_timeout"])
    except P3Error as e:
        mined = None
        result["receipt_error"] = e.msg
    if mined is None:
        why = (" (%s)" % result["receipt_error"]) if result.get("receipt_error") else ""
        msg = "sent %s in tx %s, but no receipt within %ss%s: it is still pending; a later run sees it in flight " \
              "and sends nothing more" % (detail, sent["tx_hash"], num_text(p["receipt_timeout"]), why)
        fail_clean(module, P3Error(msg), **result)
    result.update(receipt="mined" if mined["status"] == 1 else "reverted", block_number=mined["block_number"],
                  fee_wei=mined["fee_wei"])
    if mined["status"] != 1:
        fail_clean(module, P3Error("funding transaction %s reverted (status %s) in block %s" % (
            sent["tx_hash"], mined["status"], mined["block_number"])), **result)
    result["funded"] = True
    try:
        result["balance_after_wei"] = rpc.balance(wallet, hex(mined["block_number"]))
    except P3Error as e:
        module.warn("balance after the transfer not read: %s" % e.msg)
    result["reason"] = "sent " + detail
    result["timeline"][-1]["detail"] += " (mined in block %s)" % mined["block_number"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
