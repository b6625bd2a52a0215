# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chain health and the anchor wallet: verdicts (pure) and a guarded, capped top-up signed with eth_account.

Every JSON-RPC call goes through ethereum_client.EthereumRpc (one timeout per call, clean errors)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, num_text, one_line
from ansible_collections.p3.recovery.plugins.module_utils.ethereum_client import RpcError, WEI_PER_ETH, hex_to_int


_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def check_address(value, option):
    if not value or not _ADDRESS.match(str(value)):
        raise P3Error("%s must be a 0x-prefixed 20-byte hex address, got %r" % (option, one_line(value, 60)))
    return str(value)


def check_tx_hash(value):
    if not value or not _TX_HASH.match(str(value)):
        raise P3Error("not a 0x-prefixed 32-byte transaction hash: %r" % one_line(value, 80))
    return str(value)


def eth(wei):
    """wei -> ETH as a string without float rounding (e.g. '0.5')."""
    if wei is None:
        return None
    sign = "-" if wei < 0 else ""
    whole, frac = divmod(abs(int(wei)), WEI_PER_ETH)
    frac_s = ("%018d" % frac).rstrip("0")
    return "%s%d%s" % (sign, whole, ("." + frac_s) if frac_s else "")


def wallet_level(balance, low, critical):
    if balance is None:
        return None
    if balance < critical:
        return "critical"
    if balance < low:
        return "low"
    return "ok"


def fund_amount(balance, low, target, cap):
    """(amount to send, capped) - nothing unless balance < low; up to target, never more than cap (pure)."""
    if balance >= low:
        return 0, False
    want = target - balance
    if want <= 0:
        return 0, False
    if want > cap:
        return cap, True
    return want, False


def check_thresholds(low, critical=None, target=None, cap=None):
    if low is None or low < 0:
        raise P3Error("low threshold must be >= 0 wei")
    if critical is not None and (critical < 0 or critical > low):
        raise P3Error("critical threshold (%s wei) must be between 0 and the low threshold (%s wei)" % (critical, low))
    if target is not None and target < low:
        raise P3Error("target balance (%s wei) must be >= the low threshold (%s wei)" % (target, low))
    if cap is not None and cap <= 0:
        raise P3Error("max_fund_wei must be > 0")


# A pending transaction of a wallet is stuck when it is still pending this much later (a block or so): one read while
# a worker sends always finds one in flight. chain_probe's default and quick_diagnostics' wallet probe use it.
PENDING_CONFIRM_SECONDS = 2.0


def chain_facts(rpc, expected_chain_id=None, wallet=None, low=None, critical=None, tx_hashes=(),
                max_block_age_seconds=None, max_pending=0, clock=time.time, pending_confirm_seconds=0.0,
                sleep=time.sleep, deadline=None):
    """Read the chain (and wallet) and judge it. Returns a dict with healthy, reason and the evidence.

    pending_confirm_seconds: when more than max_pending transactions are pending, read the latest nonce again this
    many seconds later; they are stuck only when the transactions pending at the first read are still not all
    mined then (a wallet sending under traffic always has one in flight: that is not a stuck one). 0 judges the
    one read. deadline (common.Deadline): the caller's total deadline bounds that wait; with no time left the one
    read decides and the reason says it was not re-read. A failed second read is one more problem (the others
    stay in the verdict)."""
    out = dict(reachable=False, rpc=rpc.display, chain_id=None, chain_id_ok=None, block_number=None,
               block_age_seconds=None, wallet=wallet, balance_wei=None, balance_eth=None, wallet_level=None,
               nonce_latest=None, nonce_pending=None, pending_transactions=None, receipts=[])
    problems = []
    try:
        out["chain_id"] = rpc.chain_id()
        out["reachable"] = True
        block = rpc.block("latest")
        out["block_number"] = hex_to_int(block.get("number"))
        ts = hex_to_int(block.get("timestamp"))
        out["block_age_seconds"] = round(max(0.0, clock() - ts), 1) if ts is not None else None
        if wallet:
            out["balance_wei"] = rpc.balance(wallet)
            out["balance_eth"] = eth(out["balance_wei"])
            out["nonce_latest"] = rpc.nonce(wallet, "latest")
            out["nonce_pending"] = rpc.nonce(wallet, "pending")
            out["pending_transactions"] = out["nonce_pending"] - out["nonce_latest"]
        for h in tx_hashes or ():
            r = rpc.receipt(h)
            out["receipts"].append(dict(tx_hash=h, found=r is not None,
                                        status=hex_to_int(r.get("status")) if r else None,
                                        block_number=hex_to_int(r.get("blockNumber")) if r else None,
                                        sender=(r or {}).get("from")))
    except P3Error as e:
        out["healthy"] = False
        out["reason"] = e.msg
        return out
    if expected_chain_id is not None:
        out["chain_id_ok"] = out["chain_id"] == expected_chain_id
        if not out["chain_id_ok"]:
            problems.append("chain id %s, expected %s" % (out["chain_id"], expected_chain_id))
    if max_block_age_seconds is not None and out["block_age_seconds"] is not None \
            and out["block_age_seconds"] > max_block_age_seconds:
        problems.append("latest block %s is %ss old > %ss" % (
            out["block_number"], out["block_age_seconds"], max_block_age_seconds))
    if wallet:
        out["wallet_level"] = wallet_level(out["balance_wei"], low, critical)
        if out["wallet_level"] != "ok":
            problems.append("wallet %s balance %s ETH is %s (< %s ETH)" % (
                wallet, out["balance_eth"], out["wallet_level"],
                eth(critical if out["wallet_level"] == "critical" else low)))
        if out["pending_transactions"] > max_pending:
            _judge_pending(rpc, wallet, out, problems, pending_confirm_seconds, sleep, deadline)
    bad = [r["tx_hash"] for r in out["receipts"] if r["status"] != 1]
    if bad:
        problems.append("%d of %d transaction(s) without a successful receipt (%s)" % (
            len(bad), len(out["receipts"]), ", ".join(bad[:3])))
    out["healthy"] = not problems
    if problems:
        out["reason"] = "%s: %s" % (rpc.display, "; ".join(problems))
    else:
        out["reason"] = "%s: chain %s, block %s%s%s" % (
            rpc.display, out["chain_id"], out["block_number"],
            (", wallet %s ETH" % out["balance_eth"]) if wallet else "",
            (", %d receipts ok" % len(out["receipts"])) if out["receipts"] else "")
    return out


def _judge_pending(rpc, wallet, out, problems, confirm_seconds, sleep, deadline):
    """chain_facts' judgement of more pending transactions than allowed (see its docstring)."""
    seen = "nonce pending %s > latest %s" % (out["nonce_pending"], out["nonce_latest"])
    n = out["pending_transactions"]
    if not confirm_seconds or confirm_seconds <= 0:
        problems.append("%s pending transaction(s) stuck (%s)" % (n, seen))
        return
    wait = confirm_seconds if deadline is None else deadline.bound(confirm_seconds)
    if wait <= 0:
        problems.append("%s pending transaction(s) stuck (%s; not re-read: %s)" % (n, seen, deadline.message("wallet")))
        return
    sleep(wait)
    try:
        out["nonce_latest_confirmed"] = rpc.nonce(wallet, "latest")
    except P3Error as e:
        problems.append("%s pending transaction(s) not confirmed (%s; the second read failed: %s)" % (n, seen, e.msg))
        return
    if out["nonce_pending"] > out["nonce_latest_confirmed"]:
        problems.append("%s pending transaction(s) stuck (%s, latest %s after %ss)" % (
            n, seen, out["nonce_latest_confirmed"], num_text(wait)))


def load_account(key):
    """eth_account LocalAccount from a hex private key; the message never carries the key."""
    # Imported here, not at the top: eth_account pulls in py_ecc, whose BLS tables cost seconds of CPU at import,
    # and every probe imports this file (tests/unit/test_import_cost.py). Only wallet_fund signs.
    try:
        from eth_account import Account
    except ImportError:
        raise P3Error("the eth-account Python library is required (pip install web3)")
    text = str(key or "").strip()
    if not re.match(r"^(0x)?[0-9a-fA-F]{64}$", text):
        raise P3Error("funding_key is not a 32-byte hex private key")
    try:
        return Account.from_key(text)
    except Exception:
        raise P3Error("funding_key is not a valid secp256k1 private key")


def pending_transfers(rpc, funder, wallet):
    """Transfers from funder to wallet that were sent but are not mined yet.

    Returns dict(nonce_latest, nonce_pending, source, transfers=[{tx_hash, nonce, value_wei}]). Nothing is looked up
    when the funder's pending nonce equals its latest one (nothing of the funder's is in flight on this node). Else
    the node's pool is read: txpool_content (geth, anvil, reth, erigon), else the pending block
    (eth_getBlockByNumber('pending', true)). Raises P3Error when the funder has transactions in flight that neither
    shows (a node without txpool access): one of them may be a transfer to the wallet, so sending is refused."""
    out = dict(nonce_latest=rpc.nonce(funder, "latest"), nonce_pending=rpc.nonce(funder, "pending"), source=None,
               transfers=[])
    in_flight = out["nonce_pending"] - out["nonce_latest"]
    if in_flight <= 0:
        return out
    txs = None
    try:
        content = rpc.obj("txpool_content", [], what="a txpool object")
        txs = []
        for state in ("pending", "queued"):
            by_sender = content.get(state) or {}
            if not isinstance(by_sender, dict):
                raise rpc.unexpected("txpool_content", "an object of senders", by_sender)
            for sender, by_nonce in by_sender.items():
                if str(sender).lower() == funder.lower() and isinstance(by_nonce, dict):
                    txs.extend(tx for tx in by_nonce.values() if isinstance(tx, dict))
        out["source"] = "txpool_content"
    except RpcError as e:
        if e.code is None:
            raise  # the RPC itself failed (unreachable, timeout, not JSON-RPC): no fallback would fare better
    if not txs:
        try:
            block = rpc.obj("eth_getBlockByNumber", ["pending", True], what="a block object", optional=True) or {}
            txs = [tx for tx in (block.get("transactions") or []) if isinstance(tx, dict)
                   and str(tx.get("from") or "").lower() == funder.lower()]
            out["source"] = "pending block" if txs else out["source"]
        except RpcError as e:
            if e.code is None:
                raise
    if not txs:
        raise P3Error("funding account %s has %d transaction(s) in flight (pending nonce %d > latest %d) that %s "
                      "does not show (no txpool_content, not in the pending block): one may be a transfer to %s; "
                      "refusing to send until they are mined" % (
                          funder, in_flight, out["nonce_pending"], out["nonce_latest"], rpc.display, wallet))
    for tx in txs:
        if str(tx.get("to") or "").lower() == wallet.lower():
            try:
                nonce, value = hex_to_int(tx.get("nonce")), hex_to_int(tx.get("value")) or 0
            except P3Error:
                raise rpc.unexpected(out["source"], "transactions with hex nonce and value", tx)
            out["transfers"].append(dict(tx_hash=tx.get("hash"), nonce=nonce, value_wei=value))
    out["transfers"].sort(key=lambda t: t["nonce"] if t["nonce"] is not None else -1)
    return out


def send_transfer(rpc, account, to, amount, chain_id, expect_nonce=None, priority_fee=10 ** 9):
    """Sign and send an EIP-1559 value transfer (no wait). Returns dict(tx_hash, nonce, gas, max_fee_wei).

    expect_nonce: the funder's pending nonce the decision was made on; if it moved since (another transaction of
    the funder was sent meanwhile), nothing is sent (P3Error): the decision has to be made again. Two runs that
    decided on the same state sign the same nonce, so at most one of their transfers can be mined."""
    block = rpc.block("latest")
    base_fee = hex_to_int(block.get("baseFeePerGas")) or 0
    max_fee = 2 * base_fee + priority_fee
    gas = rpc.quantity("eth_estimateGas", [{"from": account.address, "to": to, "value": hex(amount)}])
    funder_balance = rpc.balance(account.address)
    need = amount + gas * max_fee
    if funder_balance < need:
        raise P3Error("funding account %s has %s ETH, needs %s ETH (%s + gas) to fund %s" % (
            account.address, eth(funder_balance), eth(need), eth(amount), to))
    nonce = rpc.nonce(account.address, "pending")
    if expect_nonce is not None and nonce != expect_nonce:
        raise P3Error("funding account %s sent another transaction meanwhile (pending nonce %d, was %d): nothing "
                      "sent, run again to decide on the new state" % (account.address, nonce, expect_nonce))
    tx = dict(chainId=chain_id, nonce=nonce, to=to, value=amount, gas=gas, type=2,
              maxFeePerGas=max_fee, maxPriorityFeePerGas=priority_fee, data=b"")
    signed = account.sign_transaction(tx)
    raw = getattr(signed, "raw_transaction", None) or getattr(signed, "rawTransaction")
    tx_hash = rpc.send_raw("0x" + bytes(raw).hex())
    return dict(tx_hash=tx_hash, nonce=nonce, gas=gas, max_fee_wei=max_fee)


def wait_receipt(rpc, tx_hash, timeout=60.0, poll=0.2, sleep=time.sleep, clock=time.monotonic):
    """Poll for the receipt until timeout seconds have passed (total). Returns dict(tx_hash, block_number,
    gas_used, fee_wei, status), or None when the transaction is still not mined at the deadline."""
    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        if left <= 0:
            return None
        receipt = rpc.receipt(tx_hash, timeout=min(rpc.timeout, max(left, 0.05)))
        if receipt:
            break
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(poll, left))
    gas_used = hex_to_int(receipt.get("gasUsed"))
    price = hex_to_int(receipt.get("effectiveGasPrice")) or 0
    return dict(tx_hash=tx_hash, block_number=hex_to_int(receipt.get("blockNumber")), gas_used=gas_used,
                fee_wei=(gas_used or 0) * price, status=hex_to_int(receipt.get("status")))
