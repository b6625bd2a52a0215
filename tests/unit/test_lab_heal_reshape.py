"""lab/p3lablib/rediscluster.reshape (what `p3lab heal` runs on a cluster off its 3 + 3 shape): the control flow around
the collection's plan_reshape/run_reshape - nothing at the designed shape, a refused plan named, and a failed run
followed by `redis-cli --cluster fix` that the error reports. The real run is tests/integration/test_lab_heal.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))

from p3lablib import rediscluster  # noqa: E402
from p3lablib.common import REDIS_PASSWORD, Lab, LabError  # noqa: E402
from p3lablib.stack import Deadline  # noqa: E402

from ansible_collections.p3.recovery.plugins.module_utils import redis_cluster as cl  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, timeline_entry  # noqa: E402

PLAN = dict(new_masters=[dict(node="127.0.0.1:15004", node_id="d" * 40, was="spare replica", reset=True)],
            moves=[dict(src="127.0.0.1:15002", dst="127.0.0.1:15004", slots=[0, 1], count=2, range="0-1")],
            reason="make 127.0.0.1:15004 a master")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("P3LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("P3LAB_BASE_PORT", "15000")
    return Lab()


@pytest.fixture
def fake(monkeypatch):
    """The collection's reads and the run replaced; records what was called."""
    calls = dict(run=[], cli=[], reads=0)
    state = dict(ok=False, plan=PLAN, fail=None)

    def read_topology(settings, unanswered_ms=None):
        calls["reads"] += 1
        assert settings.password == REDIS_PASSWORD and settings.deadline.remaining() > 0
        return dict(cluster_enabled=True, nodes=[])

    def shape_verdict(topo, m, r):
        assert (m, r) == (3, 1)
        return dict(ok=state["ok"], reason="2 masters serving slots, replicas per master [2, 2]")

    def plan_reshape(topo, m, r):
        if isinstance(state["plan"], str):
            raise P3Error(state["plan"])
        return state["plan"]

    def run_reshape(settings, read, plan, designed_replicas=1, wait_timeout=30.0, migrate_timeout_ms=5000):
        calls["run"].append(plan)
        assert 0 < wait_timeout <= 30
        done = [timeline_entry("cluster reset soft", "127.0.0.1:15004", "spare replica -> empty master")]
        if state["fail"]:
            raise P3Error(state["fail"], timeline=done)
        return done, []

    def run(cmd, timeout=60, env=None, cwd=None, check=True, what=None):
        calls["cli"].append(cmd)
        return 0, ">>> Check for open slots...\n[OK] All 16384 slots covered.\n"

    for name, f in (("read_topology", read_topology), ("shape_verdict", shape_verdict),
                    ("plan_reshape", plan_reshape), ("run_reshape", run_reshape)):
        monkeypatch.setattr(cl, name, f)
    monkeypatch.setattr(cl, "plan_replica_balance", lambda topo, r: [])
    monkeypatch.setattr(rediscluster, "run", run)
    return calls, state


def test_nothing_at_the_designed_shape(lab, fake):
    calls, state = fake
    state["ok"] = True
    assert rediscluster.reshape(lab, Deadline(60)) == []
    assert calls["run"] == [] and calls["cli"] == []


def test_the_run_is_listed_as_actions(lab, fake):
    calls, state = fake
    actions = rediscluster.reshape(lab, Deadline(60))
    assert calls["run"] == [PLAN] and calls["cli"] == []
    assert actions == ["reshape: cluster reset soft 127.0.0.1:15004: spare replica -> empty master"]


def test_a_failed_run_is_followed_by_cluster_fix_and_says_both(lab, fake):
    calls, state = fake
    state["fail"] = "reshard: the moved keys exist in one copy only: replica 127.0.0.1:15003 behind"
    with pytest.raises(LabError) as e:
        rediscluster.reshape(lab, Deadline(60))
    msg = str(e.value)
    assert "\n" not in msg
    assert state["fail"] in msg and "cluster reset soft 127.0.0.1:15004" in msg, msg
    assert "redis-cli --cluster fix rc 0: [OK] All 16384 slots covered." in msg, msg
    assert len(calls["cli"]) == 1 and calls["cli"][0][1:3] == ["--cluster", "fix"], calls["cli"]
    assert REDIS_PASSWORD not in msg


def test_a_refused_plan_is_read_again_then_named(lab, fake):
    calls, state = fake
    state["plan"] = "not reshaping: 4 masters serve slots, more than the designed 3"
    with pytest.raises(LabError) as e:
        rediscluster.reshape(lab, Deadline(60), settle=0.6)
    assert "cannot be reshaped to 3 masters" in str(e.value) and state["plan"] in str(e.value)
    assert calls["reads"] >= 2 and calls["run"] == [] and calls["cli"] == []
