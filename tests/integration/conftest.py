"""Integration fixtures: the real lab, started once per session. The helpers live in p3harness.py."""
import os

import pytest

from p3harness import lab, lab_status


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "valkey: the outcome is decided by the Redis server itself (its failure detection and failover, "
        "CLUSTER and CLIENT LIST replies, SCAN cursors, scripts, pub/sub): make test runs these a second time on Valkey "
        "8 (make integration-valkey); make integration-valkey-full runs every Redis, session and mesh test there")
    config.addinivalue_line(
        "markers", "extended: left out of make test's gate (make test-full runs them): a lab self-test whose fact the "
        "playbook tests assert again on the same lab before they recover, or a variant of a property that a test "
        "of the gate proves too (the Redis lock store beside PostgreSQL, recover_all's check mode beside each "
        "stage's, two more faults of the alert loop)")
    config.addinivalue_line(
        "markers", "server_agnostic: the outcome does not depend on the Redis server (output masking, backup files on "
        "the controller); make integration-valkey-full deselects these")


def pytest_runtest_logreport(report):
    """A failure or error is written to the pass's log as it happens (with -q pytest shows them only at the end of a
    pass that may take an hour): when, the test, the phase and the end of its report."""
    if report.failed:
        import sys
        import time

        sys.__stderr__.write("\n[%s] %s %s FAILED:\n%s\n" % (
            time.strftime("%H:%M:%S"), report.nodeid, report.when, str(report.longrepr)[-4000:]))
        sys.__stderr__.flush()


@pytest.fixture(scope="session")
def lab_up():
    """Start the lab once for the whole session (idempotent) and take it down at the end."""
    lab("up", timeout=240)
    yield lab_status()
    if os.environ.get("P3_KEEP_LAB") != "1":
        lab("down", check=False, timeout=120)


@pytest.fixture
def healthy_lab(lab_up):
    """A healthy lab before the test (undoing whatever an earlier test broke) and after it."""
    lab("heal", timeout=240)
    st = lab_status()
    assert st["app"]["healthy"] and st["redis"]["cluster_state"] == "ok", st
    yield st
    lab("heal", timeout=240)


@pytest.fixture
def report_dir(tmp_path):
    d = tmp_path / "reports"
    return str(d)
