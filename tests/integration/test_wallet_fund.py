"""wallet_fund on a slow chain (issue 13 section 4): never above the target, across runs.

A private anvil (its own port, P3LAB_BASE_PORT + 99, no lab needed) with automatic mining off stands in for a chain
whose blocks come slower than the receipt timeout. Every assertion reads the chain itself over JSON-RPC (balances,
nonces, the pool, receipts).
"""
import os
import socket
import subprocess
import threading
import time

import pytest
import yaml

import p3harness as harness
from p3harness import ROOT, run_playbook

FUNDING_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil account 0 (dev chain only)
FUNDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
OTHER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # anvil account 1
WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # anvil account 2
ETH = 10 ** 18
LOW, TARGET = ETH // 10, ETH // 2
TASK = "Fund"
ANVIL = os.path.join(ROOT, "node_modules", "@foundry-rs", "anvil-linux-amd64", "bin", "anvil")
PORT = int(os.environ.get("P3LAB_BASE_PORT", "17000")) + 99
URL = "http://127.0.0.1:%d" % PORT


def rpc(method, params=None):
    """JSON-RPC on this module's private anvil (p3harness.rpc, URL)."""
    return harness.rpc(method, params, url=URL)


def balance(addr, block="latest"):
    return harness.balance(addr, block, url=URL)


def nonce(addr, block="latest"):
    return int(rpc("eth_getTransactionCount", [addr, block]), 16)


def pool_hashes():
    content = rpc("txpool_content")
    return sorted(tx["hash"] for by_nonce in content["pending"].values() for tx in by_nonce.values())


@pytest.fixture
def chain(tmp_path):
    """anvil without automatic mining (blocks only when the test mines one)."""
    s = socket.socket()
    if s.connect_ex(("127.0.0.1", PORT)) == 0:
        s.close()
        pytest.fail("port %d is in use: cannot start the test's anvil" % PORT)
    s.close()
    log = open(str(tmp_path / "anvil.log"), "wb")
    proc = subprocess.Popen([ANVIL, "--host", "127.0.0.1", "--port", str(PORT), "--no-mining"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                rpc("eth_chainId")
                break
            except OSError:
                time.sleep(0.1)
        rpc("anvil_setBalance", [WALLET, hex(ETH // 20)])  # 0.05 ETH: below the low threshold
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def fund(tmp_path, check=False, **opts):
    """One wallet_fund task in a throwaway playbook; returns (run, result)."""
    args = dict(rpc_url=URL, wallet=WALLET, funding_key=FUNDING_KEY, expected_chain_id=31337,
                low_threshold_wei=LOW, target_wei=TARGET, receipt_timeout=2)
    args.update(opts)
    return one_task(tmp_path, "p3.recovery.wallet_fund", args, check)


def one_task(tmp_path, module, args, check=False):
    """One task of module in a throwaway playbook; returns (run, result)."""
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": os.path.join(ROOT, ".venv", "bin", "python")},
             "tasks": [{"name": TASK, module: args, "ignore_errors": True}]}]
    path = tmp_path / ("play-%d.yml" % time.monotonic_ns())
    path.write_text(yaml.safe_dump(play))
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}))
    run = run_playbook(str(path), check=check, inventory=str(inv))
    return run, run.result(TASK)


def failed(run):
    return any(ev.get("event") == "runner_on_failed" and ev["event_data"].get("task") == TASK for ev in run.events)


def test_timed_out_receipt_then_second_run_sends_nothing(chain, tmp_path):
    # run 1: the transfer is sent, no block comes within the receipt timeout
    run, res = fund(tmp_path)
    assert res["changed"] is True, res
    tx = res["tx_hash"]
    assert pool_hashes() == [tx]  # really sent, not mined
    assert res["amount_wei"] == TARGET - ETH // 20
    assert res["receipt"] == "pending" and res["funded"] is False
    assert failed(run) and tx in res["msg"] and "no receipt" in res["msg"]
    assert FUNDING_KEY[2:] not in run.stdout

    # run 2 (and its check mode): the pending transfer is seen; nothing is sent
    for check in (True, False):
        run, res = fund(tmp_path, check=check)
        assert not failed(run), res
        assert res["changed"] is False, res
        assert res["reason"].startswith("nothing to do: transfer %s pending" % tx), res["reason"]
        assert res["pending_tx"] == tx
        assert pool_hashes() == [tx]
        assert nonce(FUNDER, "pending") == nonce(FUNDER) + 1

    # the block comes: exactly the target, never above
    rpc("evm_mine")
    assert balance(WALLET) == TARGET
    receipt = rpc("eth_getTransactionReceipt", [tx])
    assert int(receipt["status"], 16) == 1

    # a later run: nothing to do
    run, res = fund(tmp_path)
    assert res["changed"] is False and not failed(run), res
    assert pool_hashes() == []
    assert balance(WALLET) == TARGET


def test_amount_counts_transfers_in_flight_from_anyone(chain, tmp_path):
    """Another account's transfer to the wallet is pending: the pending balance is what counts."""
    rpc("anvil_setBalance", [WALLET, hex(0)])
    send_from(OTHER_KEY, 3 * ETH // 10)
    run, res = fund(tmp_path)
    assert res["changed"] is False and not failed(run), res
    assert res["balance_before_wei"] == 3 * ETH // 10  # pending, not latest (0)
    rpc("evm_mine")
    assert balance(WALLET) == 3 * ETH // 10

    # low again, mined at once: the top-up is exactly target - balance, with its receipt
    rpc("anvil_setBalance", [WALLET, hex(ETH // 20)])
    rpc("evm_setAutomine", [True])
    run, res = fund(tmp_path)
    assert res["changed"] is True and res["funded"] is True and not failed(run), res
    assert res["receipt"] == "mined" and res["block_number"] >= 1
    assert balance(WALLET) == TARGET == res["balance_after_wei"]


def send_from(key, value=1):
    """A plain transfer to WALLET signed by key, sent (not mined: this anvil mines only when asked)."""
    from eth_account import Account
    acct = Account.from_key(key)
    tx = dict(chainId=31337, nonce=nonce(acct.address, "pending"), to=WALLET, value=value, gas=21000,
              type=2, maxFeePerGas=10 ** 10, maxPriorityFeePerGas=10 ** 9, data=b"")
    return rpc("eth_sendRawTransaction", ["0x" + bytes(acct.sign_transaction(tx).raw_transaction).hex()])


class MineAfterReads(object):
    """Mines one block as soon as anvil's own log shows `reads` more eth_getTransactionCount calls than when it
    started (chain_probe's first read: latest, then pending), so the block lands between its two reads."""

    def __init__(self, log_path, reads=2, timeout=120):
        self.log_path, self.reads, self.timeout = log_path, reads, timeout
        self.base = self._count()
        self.mined_at = None
        self._t = threading.Thread(target=self._run, daemon=True)

    def _count(self):
        with open(self.log_path, "rb") as f:
            return f.read().count(b"eth_getTransactionCount")

    def _run(self):
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if self._count() >= self.base + self.reads:
                rpc("evm_mine")
                self.mined_at = self._count()
                return
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._t.join(self.timeout)


def test_chain_probe_tells_a_transaction_in_flight_from_a_stuck_one(chain, tmp_path):
    """A wallet that is sending always has a transaction in flight, so one read of its nonces calls it stuck (the
    chaos round's diagnose did, issue 17). chain_probe reads the latest nonce again pending_confirm_seconds later:
    stuck only when what was pending is still not mined."""
    from eth_account import Account
    sender = Account.from_key(OTHER_KEY).address
    args = dict(rpc_url=URL, wallet=sender, expected_chain_id=31337, low_threshold_wei=1, critical_threshold_wei=0)
    send_from(OTHER_KEY)
    latest = nonce(sender)
    assert nonce(sender, "pending") == latest + 1

    # nothing is mined: stuck, after the second read (evidence: the latest nonce it read then)
    run, res = one_task(tmp_path, "p3.recovery.chain_probe", args)
    assert res["healthy"] is False and res["pending_transactions"] == 1, res
    assert res["nonce_latest_confirmed"] == latest, res
    assert "1 pending transaction(s) stuck (nonce pending %d > latest %d, latest %d after 2s)" % (
        latest + 1, latest, latest) in res["reason"], res["reason"]

    # 0 judges the one read (what the module did before): stuck as well, without a second read
    run, res = one_task(tmp_path, "p3.recovery.chain_probe", dict(args, pending_confirm_seconds=0))
    assert res["healthy"] is False and "nonce_latest_confirmed" not in res, res

    # in flight: the block comes between the two reads - healthy, and the chain says it was mined in between
    log_path = str(tmp_path / "anvil.log")
    with MineAfterReads(log_path) as miner:
        run, res = one_task(tmp_path, "p3.recovery.chain_probe", args)
    assert miner.mined_at is not None
    assert res["pending_transactions"] == 1 and res["nonce_latest_confirmed"] == latest + 1, res
    assert res["healthy"] is True, res["reason"]
    assert nonce(sender) == nonce(sender, "pending") == latest + 1

    # bad input: one line naming the option
    run, res = one_task(tmp_path, "p3.recovery.chain_probe", dict(args, pending_confirm_seconds=61))
    assert failed(run) and "pending_confirm_seconds must be between 0 and 60" in res["msg"], res
