"""Unit tests: running several probes at once (diagnostics.run_probes / ScopedModule) and writing reports."""
import datetime
import json
import os
import stat
import time
import types

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, probe_result
from ansible_collections.p3.recovery.plugins.module_utils import report


class FakeModule(object):
    def __init__(self):
        self.params = {"url": "x"}
        self.no_log_values = set()

    def fail_json(self, **kwargs):  # pragma: no cover - must never be reached through ScopedModule
        raise AssertionError("the real module must not fail")


def test_run_probes_keeps_order_and_turns_failures_into_verdicts():
    module = FakeModule()
    scoped = d.ScopedModule(module)

    def bad_input():
        scoped.no_log_values.add("s3cret")
        scoped.fail_json(msg="no application URL: set url (or P3_APP_URL)", exception="tb")

    def crash():
        raise ValueError("boom")

    def p3error():
        raise P3Error("SELECT 1 on db:5432 did not return 1")

    results = d.run_probes({
        "redis": lambda: probe_result(True, "6 nodes"),
        "app": bad_input,
        "metrics": crash,
        "postgres": p3error,
    })
    assert list(results) == ["redis", "app", "metrics", "postgres"]
    assert results["redis"]["healthy"] is True and "error" not in results["redis"]
    assert results["app"] == dict(changed=False, healthy=False, reason="no application URL: set url (or P3_APP_URL)",
                                  error=True)
    assert results["metrics"]["healthy"] is False and results["metrics"]["error"] is True
    assert results["metrics"]["reason"].startswith("metrics probe failed: ") and "boom" in results["metrics"]["reason"]
    assert results["postgres"]["reason"] == "SELECT 1 on db:5432 did not return 1"
    assert "s3cret" in module.no_log_values  # secrets registered through the scoped module reach the real one


def test_run_probes_runs_concurrently_and_guards_a_probe_that_never_returns():
    started = []

    def slow(name):
        def fn():
            started.append(name)
            time.sleep(0.3)
            return probe_result(True, name)
        return fn

    t0 = time.monotonic()
    results = d.run_probes({"a": slow("a"), "b": slow("b"), "c": slow("c")})
    assert sorted(started) == ["a", "b", "c"]
    assert all(r["healthy"] for r in results.values())
    # three 0.3 s probes one after the other would need 0.9 s: they overlapped (generous bound, not a benchmark)
    assert time.monotonic() - t0 < 0.85

    results = d.run_probes({"hang": lambda: time.sleep(5), "ok": lambda: probe_result(True, "fine")}, deadline=0.2)
    assert results["hang"]["healthy"] is False and "did not finish within 0.2 s" in results["hang"]["reason"]
    assert results["ok"]["healthy"] is True


def test_scoped_module_exit_is_an_error_not_an_exit():
    with pytest.raises(d.ProbeInputError):
        d.ScopedModule(FakeModule()).exit_json(changed=False)


def test_summary_reason():
    ok = probe_result(True, "fine")
    assert d.summary_reason({"app": ok, "redis": ok}) == "all 2 probes healthy (app, redis)"
    bad = probe_result(False, "node 127.0.0.1:17001 unreachable (connection refused)")
    assert d.summary_reason({"app": ok, "redis": bad}) == (
        "1 of 2 probes unhealthy - redis: node 127.0.0.1:17001 unreachable (connection refused)")


def test_usage_threshold_bounds():
    d.check_usage_threshold(80)
    d.check_usage_threshold(100)
    for bad in (0, -1, 100.5):
        with pytest.raises(P3Error, match="max_usage_pct must be in"):
            d.check_usage_threshold(bad)


def test_metrics_probe_select_error_carries_the_evidence():
    text = "# TYPE p3_mesh_peers gauge\np3_mesh_peers 12\n"
    answer = dict(method="GET", url="http://h/metrics", status=200, latency_ms=1.0, ok=True, text=text, error=None)
    target = types.SimpleNamespace(get=lambda path: answer)
    pytest.importorskip("prometheus_client")
    result = d.metrics_probe(target, "/metrics", ["p3_mesh_peers"])
    assert result["healthy"] is True and result["metrics"]["p3_mesh_peers"]["samples"][0]["value"] == 12
    missing = d.metrics_probe(target, "/metrics", ["p3_auth_failures_total"])
    assert missing["healthy"] is False and missing["missing"] == ["p3_auth_failures_total"]
    pytest.importorskip("jmespath")
    assert d.metrics_probe(target, "/metrics", [], "p3_mesh_peers.samples[0].value")["selected"] == 12
    with pytest.raises(d.SelectError) as err:
        d.metrics_probe(target, "/metrics", [], "p3_mesh_peers.samples[")
    assert err.value.details["metrics"]["p3_mesh_peers"]["type"] == "gauge"


NOW = datetime.datetime(2026, 11, 28, 13, 15, 0, 123, tzinfo=datetime.timezone.utc)


def test_write_report_names_writes_atomically_and_never_reports_changed(tmp_path):
    params = dict(data={"healthy": True, "checks": []}, dir=str(tmp_path / "r"), prefix="diagnose", path=None,
                  mode="0640")
    result = report.write_report(params, now=NOW)
    assert result["changed"] is False and result["generated_at"] == "2026-11-28T13:15:00Z"
    name = os.path.basename(result["path"])
    assert os.path.dirname(result["path"]) == str(tmp_path / "r") and name.startswith("diagnose-20261128T131500000123Z-")
    with open(result["path"]) as f:
        assert json.load(f) == {"healthy": True, "checks": [], "generated_at": "2026-11-28T13:15:00Z",
                                "report": result["path"]}
    assert stat.S_IMODE(os.stat(result["path"]).st_mode) == 0o640
    assert os.listdir(str(tmp_path / "r")) == [name]  # no temporary file left
    kept = report.write_report(dict(params, data={"generated_at": "earlier"}, path=str(tmp_path / "x.json"), mode=0o600),
                               now=NOW)
    assert kept["generated_at"] == "earlier" and stat.S_IMODE(os.stat(kept["path"]).st_mode) == 0o600


def test_write_report_check_mode_writes_nothing_and_errors_are_one_line(tmp_path):
    params = dict(data={"a": 1}, dir=str(tmp_path / "never"), prefix="p", path=None, mode="0640")
    result = report.write_report(params, check_mode=True, now=NOW)
    assert os.path.basename(result["path"]).startswith("p-20261128T131500000123Z-") and not (tmp_path / "never").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(P3Error, match=r"^cannot write report .*file/sub/r.json: ") as err:
        report.write_report(dict(params, path=str(blocker / "sub" / "r.json")), now=NOW)
    assert "\n" not in err.value.msg
    with pytest.raises(P3Error, match="mode must be an octal file mode"):
        report.write_report(dict(params, mode="rw-r--r--"), now=NOW)
