"""bench/chaos.py's round plan (pure): a round's faults depend on (seed, round) only, so `--seed S --round R`
replays it; drawn from the lab's faults, never an incompatible pair, app-down last; percentiles by nearest rank."""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "lab"))

import chaos  # noqa: E402
from p3lablib.faults import FAULTS  # noqa: E402


def test_a_round_replays_from_seed_and_round_alone():
    plans = [chaos.plan_round(17, r, 3) for r in range(40)]
    assert plans == [chaos.plan_round(17, r, 3) for r in range(40)]
    assert len(set(map(tuple, plans))) > 10  # really random across rounds
    assert [chaos.plan_round(18, r, 3) for r in range(40)] != plans


def test_every_plan_is_injectable():
    for seed in range(20):
        for r in range(20):
            p = chaos.plan_round(seed, r, 3)
            assert 1 <= len(p) <= 3 and len(set(p)) == len(p)
            assert all(f in FAULTS for f in p), p
            assert not any(frozenset((a, b)) in chaos.CONFLICTS for a in p for b in p if a != b), p
            assert p == sorted(p, key=chaos.POOL.index) and ("app-down" not in p or p[-1] == "app-down"), p
            assert len(chaos.plan_round(seed, r, 1)) == 1


def test_gates_and_percentiles():
    assert chaos.gates_for(["mesh-down", "db-exhaustion"]) == {"p3_db_min_age_seconds": 1}
    assert chaos.gates_for(["mesh-down"]) == {}
    assert chaos.gates_for(["redis-master-down"]) == {}  # the lab worker names every connection (test_anchor_failover)
    v = [float(x) for x in range(1, 21)]
    assert chaos.percentile(v, 50) == 10.0 and chaos.percentile(v, 95) == 19.0 and chaos.percentile(v, 100) == 20.0
    assert chaos.percentile([3.0], 95) == 3.0


def test_invariant_breaches_name_what_was_lost():
    from p3lablib import invariants
    from p3lablib.load import compare

    ok = {"redis": compare({"k1": "a", "k2": "b"}, {"k1": "a", "k2": "b"}),
          "sessions": compare({"session:1": True}, {"session:1": "x"})}
    assert invariants.redis_breaches(ok) == [] and invariants.session_breaches(ok) == []
    bad = {"redis": compare({"k1": "a", "k2": "b", "k3": "c"}, {"k1": "a", "k2": "other"}),
           "sessions": compare({"session:1": True, "session:2": True}, {"session:1": None})}
    assert invariants.redis_breaches(bad) == ["redis: 1 of 3 acknowledged writes lost (e.g. k2)",
                                              "redis: 1 of 3 acknowledged writes unreadable (slot unserved)"]
    assert invariants.session_breaches(bad) == ["sessions: 1 of 2 valid sessions removed (e.g. session:1)",
                                                "sessions: 1 of 2 unreadable"]
