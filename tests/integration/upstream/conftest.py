"""Integration tests against P3 Protocol's own, unmodified server (`p3lab up --app upstream`, docs/lab.md).

Run them with `make integration-upstream`: a lab of their own (P3LAB_DIR .state/lab-upstream, ports
P3LAB_BASE_PORT + 700), started once per session in the working BullMQ state and taken down at the end (P3_KEEP_LAB=1
keeps it). They are collected only when P3_UPSTREAM_TESTS=1 (the make target sets it), so a plain
`pytest tests/integration` - `make test` - leaves them out until the lead wires them in.
Helpers: p3upstream_harness.py (tests import from there, never from this conftest).
"""
import os

import pytest

RUN = os.environ.get("P3_UPSTREAM_TESTS") == "1"
if not RUN:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def upstream_lab():
    """The upstream lab, up once for the session (a cold npm cache makes the first `up` take minutes)."""
    from p3harness import ROOT, lab, lab_status

    lab_dir = os.environ.get("P3LAB_DIR")
    if not lab_dir or os.path.realpath(lab_dir) == os.path.realpath(os.path.join(ROOT, ".lab")):
        pytest.exit("the upstream tests need a lab dir of their own: run `make integration-upstream` (or set "
                    "P3LAB_DIR, e.g. .state/lab-upstream, and P3LAB_BASE_PORT)", returncode=4)
    lab("up", "--app", "upstream", "--bullmq", "working", timeout=1500)
    yield lab_status()
    if os.environ.get("P3_KEEP_LAB") != "1":
        lab("down", check=False, timeout=120)


@pytest.fixture
def healthy_upstream(upstream_lab):
    """P3 healthy (working BullMQ, every fault undone) before the test and after it."""
    from p3harness import lab, lab_status

    lab("up", "--bullmq", "working", timeout=600)
    lab("heal", timeout=300)
    st = lab_status()
    assert st["healthy"], st["problems"]
    yield st
    lab("up", "--bullmq", "working", timeout=600)
    lab("heal", timeout=300)
