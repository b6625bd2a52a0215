# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ethereum JSON-RPC plumbing of p3.recovery: shared options (doc fragment p3.recovery.ethereum) and a tiny
JSON-RPC client over open_url, enough for probes (web3 is for actions that sign transactions)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import itertools
import json

from urllib.parse import urlsplit, urlunsplit

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error,
    env,
    one_line,
    provider_url_secrets,
    register_secrets,
)
from ansible_collections.p3.recovery.plugins.module_utils.http_client import check_url, request

# The options of doc fragment p3.recovery.ethereum, defined once.
ETHEREUM_ARGUMENT_SPEC = dict(
    # Not no_log as a whole: that would mask every message naming the endpoint (scheme://host:port is the whole
    # URL of a keyless RPC). The credentials inside (userinfo, key-like path segments, query values) are registered
    # as no_log values by EthereumTarget, and messages only ever show rpc_display().
    rpc_url=dict(type="str", no_log=False, fallback=env("RPC_URL")),
    rpc_timeout=dict(type="float", default=5.0),
)

WEI_PER_ETH = 10 ** 18


def ethereum_argument_spec(**extra):
    spec = dict(ETHEREUM_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def rpc_display(url):
    """scheme://host:port only: RPC URLs often carry an API key in their path or query."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, "", "", ""))
    except ValueError:
        return "<invalid URL>"


def hex_to_int(value):
    """A JSON-RPC quantity ('0x1a', or an int) -> int; None stays None. Raises P3Error for anything else."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise P3Error("not a hex quantity: %s" % describe_shape(value))


def describe_shape(value):
    """What a JSON value is, for messages: null, a string '0x1', a number 5, a list, an object {...}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean %s" % str(value).lower()
    if isinstance(value, str):
        return "a string %r" % one_line(value, 60)
    if isinstance(value, (int, float)):
        return "a number %s" % value
    if isinstance(value, list):
        return "a list of %d" % len(value)
    if isinstance(value, dict):
        return "an object %s" % one_line(json.dumps(value, sort_keys=True, default=str), 80)
    return "a %s" % type(value).__name__


class RpcError(P3Error):
    def __init__(self, msg, code=None, data=None):
        super(RpcError, self).__init__(msg, rpc_code=code)
        self.code = code
        self.data = data


class EthereumRpc(object):
    """JSON-RPC 2.0 over HTTP(S) with one timeout per call; every failure is an RpcError with a clean message."""

    _ids = itertools.count(1)

    def __init__(self, url, timeout=5.0, validate_certs=True, secrets=()):
        self.url = check_url(url, option="rpc_url")
        self.timeout = float(timeout)
        self.validate_certs = validate_certs
        self.secrets = list(secrets) + provider_url_secrets(url)
        self.display = rpc_display(url)

    def call(self, method, params=None, timeout=None):
        """One JSON-RPC call; timeout (seconds) overrides rpc_timeout for this call (e.g. what is left of a
        caller's deadline)."""
        payload = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or []})
        resp = request(self.url, method="POST", timeout=timeout or self.timeout, data=payload,
                       headers={"Content-Type": "application/json"}, validate_certs=self.validate_certs,
                       secrets=self.secrets)
        where = "%s %s" % (method, self.display)
        if resp["status"] is None or resp["error"]:
            # no answer, or the headers came and the body did not (timed out / cut off): the cause, not the body
            raise RpcError("%s failed: %s" % (where, resp["error"]))
        body = resp["json"]
        if not isinstance(body, dict):
            raise RpcError("%s -> HTTP %s, not a JSON-RPC answer: %s" % (where, resp["status"], one_line(resp["text"], 120)))
        if body.get("error"):
            err = body["error"] if isinstance(body["error"], dict) else {"message": body["error"]}
            raise RpcError("%s -> error %s: %s" % (where, err.get("code"), one_line(err.get("message"), 200)),
                           code=err.get("code"), data=err.get("data"))
        if "result" not in body:
            raise RpcError("%s -> HTTP %s without result" % (where, resp["status"]))
        return body["result"]

    # Typed calls: a reply of another shape (a string where a block object is expected, a quantity that is not hex)
    # is an RpcError naming the method and the RPC, never a traceback.

    def unexpected(self, method, expected, value):
        return RpcError("%s %s -> unexpected reply: expected %s, got %s" % (
            method, self.display, expected, describe_shape(value)))

    def quantity(self, method, params=None):
        """A call whose result is a hex quantity -> int."""
        value = self.call(method, params)
        if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.unexpected(method, "a hex quantity", value)
        try:
            return hex_to_int(value)
        except P3Error:
            raise self.unexpected(method, "a hex quantity", value)

    def obj(self, method, params=None, what="an object", optional=False, quantities=(), timeout=None):
        """A call whose result is a JSON object (None allowed when optional); the named fields, when present, must
        be hex quantities."""
        value = self.call(method, params, timeout=timeout)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self.unexpected(method, what, value)
        for name in quantities:
            if value.get(name) is not None:
                try:
                    hex_to_int(value[name])
                except P3Error:
                    raise RpcError("%s %s -> unexpected reply: field %s of %s is not a hex quantity (%s)" % (
                        method, self.display, name, what, describe_shape(value[name])))
        return value

    def chain_id(self):
        return self.quantity("eth_chainId")

    def block_number(self):
        return self.quantity("eth_blockNumber")

    def balance(self, address, block="latest"):
        return self.quantity("eth_getBalance", [address, block])

    def nonce(self, address, block="latest"):
        return self.quantity("eth_getTransactionCount", [address, block])

    def block(self, tag="latest", full=False):
        """eth_getBlockByNumber -> dict (number, timestamp, baseFeePerGas checked as quantities)."""
        return self.obj("eth_getBlockByNumber", [tag, bool(full)], what="a block object",
                        quantities=("number", "timestamp", "baseFeePerGas"))

    def receipt(self, tx_hash, timeout=None):
        """eth_getTransactionReceipt -> dict, or None while the transaction is not mined."""
        return self.obj("eth_getTransactionReceipt", [tx_hash], what="a receipt object", optional=True,
                        quantities=("status", "blockNumber", "gasUsed", "effectiveGasPrice"), timeout=timeout)

    def send_raw(self, raw_hex):
        """eth_sendRawTransaction -> the transaction hash (0x + 64 hex)."""
        value = self.call("eth_sendRawTransaction", [raw_hex])
        if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
            raise self.unexpected("eth_sendRawTransaction", "a transaction hash", value)
        return value


class EthereumTarget(object):
    """What modules use: validated rpc_url, secrets registered as no_log, an EthereumRpc."""

    def __init__(self, module):
        self.module = module
        url = module.params.get("rpc_url")
        register_secrets(module, provider_url_secrets(url) if url else [])
        if not url:
            module.fail_json(msg="no Ethereum RPC endpoint: set rpc_url (or RPC_URL)")
        timeout = module.params.get("rpc_timeout") or 5.0
        if timeout <= 0:
            module.fail_json(msg="rpc_timeout must be > 0, got %s" % timeout)
        try:
            self.rpc = EthereumRpc(url, timeout=timeout)
        except P3Error as e:
            module.fail_json(msg=e.msg)
