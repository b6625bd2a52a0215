"""A short fixed-seed chaos run (issue 17 §4; bench/chaos.py is the long one): a round of seeded fault combinations
under client load, recovered by recover_all.yml, every invariant asserted on real state afterwards
(lab/p3lablib/invariants.py: acknowledged Redis writes re-read from the owners, anchor jobs in BullMQ, one receipt
row and one transaction on chain per job, sessions re-read, the app serving through its front).

Round 4 of seed 17 is issue 17 §3.4, database exhaustion while Redis is down (a master SIGKILLed): recover_all
handles both in the runbook's order under load, and a second run right after changes nothing. The round runs once
(module fixture, about 6 min on a loaded 2-core machine); each invariant is its own test."""
import os
import sys

import pytest

from p3harness import ROOT, lab_status, run_playbook

sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "lab"))

import chaos  # noqa: E402
from p3lablib.common import Lab  # noqa: E402

SEED, ROUND = 17, 4
GUARD = chaos.RECOVER_TIMEOUT  # seconds: a hang guard for one recover_all (bench/chaos.py says why this long)


@pytest.fixture(scope="module")
def chaos_round(lab_up):
    assert chaos.plan_round(SEED, ROUND) == ["db-exhaustion", "redis-master-down"]
    lines = []
    rec = chaos.run_round(Lab(), SEED, ROUND, max_faults=2, rate=10.0, log=lines.append)
    print("\n".join(lines))
    return rec


def test_the_faults_hit_and_recover_all_ends_green(chaos_round):
    rec = chaos_round
    assert not [b for b in rec["breaches"] if b.startswith("inject")], rec["breaches"]  # the faults really hit
    assert rec["recover_rc"] == 0, (rec["breaches"], open(rec["recover_log"]).read()[-3000:])
    st = lab_status()
    assert st["app"]["healthy"] and st["redis"]["cluster_state"] == "ok", st
    assert st["db"]["connections"] < 0.8 * st["db"]["max_connections"], st["db"]


def test_nothing_acknowledged_is_lost(chaos_round):
    ev = chaos_round["evidence"]
    # the load really ran across the faults: acknowledged writes, sessions and jobs to account for
    assert ev["redis_acked"] > 0 and ev["sessions"] > 0 and ev["jobs"] > 0, ev
    assert ev["redis_present"] == ev["redis_acked"], chaos_round["breaches"]
    assert ev["sessions_present"] == ev["sessions"], chaos_round["breaches"]
    assert ev["jobs_present"] == ev["jobs"] == ev["outbox_rows"] == ev["receipts"], (ev, chaos_round["breaches"])
    assert not [b for b in chaos_round["breaches"] if b.startswith(("redis", "sessions", "serving"))]


def test_every_job_anchored_exactly_once_on_chain(chaos_round):
    ev = chaos_round["evidence"]
    assert ev["onchain"] == ev["jobs"], (ev, chaos_round["breaches"])
    assert not [b for b in chaos_round["breaches"] if b.startswith("jobs")], chaos_round["breaches"]


@pytest.mark.extended  # recover_all's second run changing nothing: test_recover_all's three-fault test in the gate
def test_a_second_run_changes_nothing(chaos_round, report_dir):
    again = run_playbook("recover_all.yml", extravars=dict(chaos.gates_for(chaos_round["faults"]),
                                                           p3_report_dir=report_dir), timeout=GUARD)
    assert again.rc == 0, again.stdout[-3000:]
    assert not any(again.changed.values()), again.changed_tasks()
