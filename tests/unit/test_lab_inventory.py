"""lab/p3lablib/stack.py: the inventories `p3lab up` writes (pure; the real labs run in tests/integration), and the
test harness's per-lab incident directory."""
import os
import sys

import pytest
import yaml

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "..", "lab"))

from p3lablib import stack, upstream  # noqa: E402
from p3lablib.common import Lab  # noqa: E402


@pytest.fixture
def upstream_lab(tmp_path, monkeypatch):
    monkeypatch.setenv("P3LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("P3LAB_BASE_PORT", "15000")
    L = Lab()
    L.set_mode("upstream", "working", 1)
    return Lab()


def test_the_upstream_inventory_gives_the_restart_gate_the_time_p3_takes_to_start(upstream_lab):
    """P3 in development sets up Vite's dev server before it listens: 41-62 s at load 10-12 here, so the default
    gate of 60 s failed restarts that worked (official CI of stop 24: "not healthy 60 s after the restart")."""
    inv = yaml.safe_load(stack.inventory_text(upstream_lab))
    app = inv["all"]["children"]["p3_app"]["hosts"]["p3-lab-app"]
    assert app["p3_restart_timeout"] == upstream.START_TIMEOUT >= 120
    with open(os.path.join(HERE, "..", "..", "roles", "app_restart", "defaults", "main.yml")) as f:
        assert yaml.safe_load(f)["p3_restart_timeout"] < app["p3_restart_timeout"]


def test_each_lab_keeps_its_own_incidents(tmp_path, monkeypatch):
    """The passes of `make test` run at once, one lab each, with the same host names: a shared incident directory
    joined their runs into one incident (a record listed another lab's findings as its own)."""
    sys.path.insert(0, os.path.join(HERE, "..", "integration"))
    import importlib

    dirs = []
    for name, port in (("lab-b", "17300"), ("lab-valkey", "17500")):
        monkeypatch.setenv("P3LAB_DIR", str(tmp_path / name))
        monkeypatch.setenv("P3LAB_BASE_PORT", port)
        import p3harness

        h = importlib.reload(p3harness)
        dirs.append(h.base_env()["P3_INCIDENT_DIR"])
    assert dirs[0] != dirs[1]
    # never inside the lab's own directory: a run may create it before `p3lab up` does
    assert not any(d.startswith(str(tmp_path)) for d in dirs), dirs
