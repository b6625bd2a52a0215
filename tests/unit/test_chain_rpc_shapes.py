"""Unexpected JSON-RPC reply shapes (issue 14 section 4): a string where a block object is expected, a number that
is not hex, an object where a quantity is expected. Every one must become one clean line naming the RPC and the
method, never a traceback. A real HTTP server on loopback answers with the shape under test."""
import json
import threading

from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import chain
from ansible_collections.p3.recovery.plugins.module_utils import ethereum_client as ec
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

GOOD = {
    "eth_chainId": "0x7a69",
    "eth_getBlockByNumber": {"number": "0x10", "timestamp": "0x0", "baseFeePerGas": "0x1"},
    "eth_getBalance": "0x0",
    "eth_getTransactionCount": "0x0",
    "eth_getTransactionReceipt": None,
}


@pytest.fixture
def rpc_server():
    answers = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            result = answers.get(body["method"], GOOD.get(body["method"]))
            if callable(result):
                result = result(body["params"])
            data = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield answers, "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("method,bad,needle", [
    ("eth_getBlockByNumber", "0x10", "a block object"),
    ("eth_getBlockByNumber", ["x"], "a block object"),
    ("eth_getBlockByNumber", {"number": "zz", "timestamp": "0x0"}, "number"),
    ("eth_chainId", "not-hex", "a hex quantity"),
    ("eth_chainId", {"a": 1}, "a hex quantity"),
    ("eth_getBalance", None, "a hex quantity"),
    ("eth_getTransactionCount", [1], "a hex quantity"),
])
def test_chain_facts_names_rpc_and_method(rpc_server, method, bad, needle):
    answers, url = rpc_server
    answers[method] = bad
    rpc = ec.EthereumRpc(url, timeout=2)
    out = chain.chain_facts(rpc, wallet="0x70997970C51812dc3A010C7d01b50e0d17dc79C8", low=1, critical=0)
    assert out["healthy"] is False
    assert method in out["reason"] and url in out["reason"], out["reason"]
    assert needle in out["reason"], out["reason"]
    assert "\n" not in out["reason"]


@pytest.mark.parametrize("bad", ["0xabc", 5, ["a"], {"status": "nothex", "blockNumber": "0x1"}])
def test_receipt_shapes(rpc_server, bad):
    answers, url = rpc_server
    answers["eth_getTransactionReceipt"] = bad
    rpc = ec.EthereumRpc(url, timeout=2)
    out = chain.chain_facts(rpc, tx_hashes=["0x" + "ab" * 32])
    assert out["healthy"] is False
    assert "eth_getTransactionReceipt" in out["reason"] and url in out["reason"], out["reason"]


def test_typed_accessors(rpc_server):
    answers, url = rpc_server
    rpc = ec.EthereumRpc(url, timeout=2)
    assert rpc.chain_id() == 31337
    assert rpc.block("latest")["number"] == "0x10"
    answers["eth_getBlockByNumber"] = None
    with pytest.raises(P3Error) as e:
        rpc.block("latest")
    assert e.value.msg == "eth_getBlockByNumber %s -> unexpected reply: expected a block object, got null" % url
    answers["eth_chainId"] = "0x" + "f" * 5000
    assert rpc.chain_id() == int("f" * 5000, 16)
    answers["eth_chainId"] = "x" * 5000
    with pytest.raises(P3Error) as e:
        rpc.chain_id()
    assert len(e.value.msg) < 300 and e.value.msg.startswith("eth_chainId %s -> unexpected reply" % url)


def test_hex_to_int_is_clean():
    with pytest.raises(P3Error):
        ec.hex_to_int("zz")
    with pytest.raises(P3Error):
        ec.hex_to_int({"a": 1})


FUNDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
TX = {"hash": "0x" + "ab" * 32, "nonce": "0x5", "value": "0x10", "to": WALLET.lower(), "from": FUNDER.lower()}


def _nonces(latest, pending):
    """eth_getTransactionCount answering by block tag."""
    return lambda params: "0x%x" % (latest if params[1] == "latest" else pending)


def test_pending_transfer_found_in_txpool(rpc_server):
    answers, url = rpc_server
    answers["eth_getTransactionCount"] = _nonces(5, 6)
    answers["txpool_content"] = {"pending": {FUNDER.lower(): {"5": TX}}, "queued": {}}
    out = chain.pending_transfers(ec.EthereumRpc(url, timeout=2), FUNDER, WALLET)
    assert out["transfers"] == [dict(tx_hash=TX["hash"], nonce=5, value_wei=16)] and out["source"] == "txpool_content"


def test_nothing_in_flight_asks_no_pool(rpc_server):
    answers, url = rpc_server
    answers["txpool_content"] = "would be a bad shape if it were asked"
    out = chain.pending_transfers(ec.EthereumRpc(url, timeout=2), FUNDER, WALLET)
    assert out["transfers"] == [] and out["source"] is None


def test_in_flight_but_invisible_refuses(rpc_server):
    answers, url = rpc_server
    answers["eth_getTransactionCount"] = _nonces(5, 7)
    answers["txpool_content"] = {"pending": {}, "queued": {}}
    answers["eth_getBlockByNumber"] = {"number": "0x10", "timestamp": "0x0", "transactions": []}
    with pytest.raises(P3Error) as e:
        chain.pending_transfers(ec.EthereumRpc(url, timeout=2), FUNDER, WALLET)
    assert "2 transaction(s) in flight" in e.value.msg and "refusing to send" in e.value.msg
