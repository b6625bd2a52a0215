"""A short fixed-seed chaos run (issue 17 §4; bench/chaos.py is the long one): rounds of seeded fault combinations
under client load, each recovered by recover_all.yml, every invariant asserted on real state after each round
(lab/p3lablib/invariants.py: acknowledged Redis writes re-read from the owners, anchor jobs in BullMQ, one receipt
row and one transaction on chain per job, sessions re-read, the app serving through its front).

Round 4 of seed 17 is issue 17 §3.4, database exhaustion while Redis is down (a master SIGKILLed): recover_all
handles both in the runbook's order under load, and a second run right after changes nothing."""
import os
import sys

import pytest

from p3harness import ROOT, lab_status, run_playbook

sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "lab"))

import chaos  # noqa: E402
from p3lablib.common import Lab  # noqa: E402

SEED = 17
# seed 17: round 4 = db-exhaustion + redis-master-down (§3.4), round 3 = mesh-down + wallet-empty
ROUNDS = (4, 3)
GUARD = 900  # seconds: a hang guard for one recover_all, far above its wall time on a loaded 2-core machine


def _round(rnd):
    lines = []
    rec = chaos.run_round(Lab(), SEED, rnd, max_faults=2, rate=10.0, log=lines.append)
    print("\n".join(lines))
    assert not [b for b in rec["breaches"] if b.startswith("inject")], rec["breaches"]  # the faults really hit
    assert rec["recover_rc"] == 0, (rec["breaches"], open(rec["recover_log"]).read()[-3000:])
    ev = rec["evidence"]
    # the load really ran across the faults: acknowledged writes, sessions and jobs to account for
    assert ev["redis_acked"] > 0 and ev["sessions"] > 0 and ev["jobs"] > 0, ev
    assert ev["redis_present"] == ev["redis_acked"], rec["breaches"]
    assert ev["sessions_present"] == ev["sessions"], rec["breaches"]
    assert ev["jobs_present"] == ev["jobs"] == ev["receipts"] == ev["onchain"], (ev, rec["breaches"])
    assert rec["breaches"] == [], rec["breaches"]
    return rec


def test_db_exhaustion_while_redis_is_down_under_load_then_a_second_run_changes_nothing(lab_up, report_dir):
    assert chaos.plan_round(SEED, 4) == ["db-exhaustion", "redis-master-down"]
    rec = _round(4)
    print("MTTR %.1f s" % rec["mttr_s"])
    st = lab_status()
    assert st["app"]["healthy"] and st["redis"]["cluster_state"] == "ok", st
    assert st["db"]["connections"] < 0.8 * st["db"]["max_connections"], st["db"]
    again = run_playbook("recover_all.yml", extravars=dict(chaos.gates_for(rec["faults"]), p3_report_dir=report_dir),
                         timeout=GUARD)
    assert again.rc == 0, again.stdout[-3000:]
    assert not any(again.changed.values()), again.changed_tasks()


@pytest.mark.parametrize("rnd", [r for r in ROUNDS if r != 4])
def test_chaos_round_keeps_every_invariant(lab_up, rnd):
    _round(rnd)
