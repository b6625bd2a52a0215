"""module_utils/metrics.py (real Prometheus parser, selection) and ethereum_client.py helpers."""
import pytest

from ansible_collections.p3.recovery.plugins.module_utils import ethereum_client as ec
from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, provider_url_secrets

pytest.importorskip("prometheus_client")

TEXT = """\
# HELP api_requests_total Total API requests
# TYPE api_requests_total counter
api_requests_total{endpoint="/health",method="GET",status="200"} 3.0
api_requests_total{endpoint="/api/x",method="GET",status="401"} 2.0
# HELP p3_mesh_peers Mesh peers connected
# TYPE p3_mesh_peers gauge
p3_mesh_peers 12.0
# HELP p3_anchor_queue_depth Anchor jobs by state
# TYPE p3_anchor_queue_depth gauge
p3_anchor_queue_depth{state="wait"} 0.0
p3_anchor_queue_depth{state="failed"} 1000.0
# HELP req_seconds Latency
# TYPE req_seconds histogram
req_seconds_bucket{le="0.1"} 1.0
req_seconds_bucket{le="+Inf"} 2.0
req_seconds_count 2.0
req_seconds_sum 0.35
# TYPE odd gauge
odd NaN
# TYPE never_set counter
"""


@pytest.fixture(scope="module")
def metrics():
    return m.parse_metrics(TEXT)


def test_parse_families_and_samples(metrics):
    assert sorted(metrics) == ["api_requests", "never_set", "odd", "p3_anchor_queue_depth", "p3_mesh_peers", "req_seconds"]
    api = metrics["api_requests"]
    assert api["type"] == "counter" and api["help"] == "Total API requests"
    labels = {"endpoint": "/api/x", "method": "GET", "status": "401"}
    assert api["samples"][1] == {"name": "api_requests_total", "labels": labels, "value": 2}
    assert metrics["req_seconds"]["samples"][3]["value"] == 0.35
    assert metrics["odd"]["samples"][0]["value"] == "NaN"
    assert metrics["never_set"]["samples"] == []


def test_summary(metrics):
    assert m.summarize(metrics) == {"families": 6, "samples": 10,
                                    "by_type": {"counter": 2, "gauge": 3, "histogram": 1}}


def test_required_names(metrics):
    assert m.missing_metrics(metrics, ["api_requests_total", "api_requests", "req_seconds_count", "never_set_total",
                                       "p3_mesh_peers", "nope", "p3_mesh"]) == ["nope", "p3_mesh"]


def test_select(metrics):
    assert m.select(metrics, "p3_anchor_queue_depth.samples[?labels.state=='failed'].value | [0]") == 1000
    assert m.select(metrics, "p3_mesh_peers.samples[0].value") == 12
    assert m.select(metrics, "missing.samples") is None
    with pytest.raises(P3Error, match="invalid select expression"):
        m.compile_select("[[[")


def test_sample_value(metrics):
    assert m.sample_value(metrics, "p3_anchor_queue_depth", {"state": "wait"}) == 0
    assert m.sample_value(metrics, "p3_anchor_queue_depth", {"state": "nope"}, default=-1) == -1
    assert m.sample_value(metrics, "absent") is None


def test_parse_errors_are_clean():
    with pytest.raises(P3Error) as e:
        m.parse_metrics("<html>\n<body>not metrics</body>\n")
    assert e.value.msg.startswith("cannot parse the metrics: ") and "\n" not in e.value.msg
    assert m.parse_metrics("") == {}


def test_json_number():
    assert m.json_number(3.0) == 3 and isinstance(m.json_number(3.0), int)
    assert m.json_number(float("inf")) == "+Inf" and m.json_number(float("-inf")) == "-Inf"
    assert m.json_number(0.5) == 0.5 and m.json_number(7) == 7


def test_ethereum_helpers():
    assert ec.rpc_display("https://u:p@base-mainnet.g.alchemy.com/v2/abcdefghijklmnopqrstu?x=1") == \
        "https://base-mainnet.g.alchemy.com"
    secrets = provider_url_secrets("https://u:pw@base-mainnet.g.alchemy.com/v2/abcdefghijklmnopqrstu?key=12345678")
    assert "pw" in secrets and "abcdefghijklmnopqrstu" in secrets and "12345678" in secrets
    assert ec.hex_to_int("0x7a69") == 31337 and ec.hex_to_int(5) == 5 and ec.hex_to_int(None) is None


def test_rpc_refused_is_a_clean_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rpc = ec.EthereumRpc("http://127.0.0.1:%d" % port, timeout=1)
    with pytest.raises(ec.RpcError) as e:
        rpc.chain_id()
    assert e.value.msg == "eth_chainId http://127.0.0.1:%d failed: connection refused" % port
