"""recover_all.yml against the real lab: several faults at once, recovered in the runbook's order, each stage
gated on the one before."""
import glob
import os

import pytest

from p3harness import RECOVER_ALL_GUARD, lab_fault, lab_status, run_playbook


def recover_all(report_dir, check=False, **extra):
    extravars = {"p3_report_dir": report_dir}
    extravars.update(extra)
    return run_playbook("recover_all.yml", extravars=extravars, check=check, timeout=RECOVER_ALL_GUARD)


def changed_actions(run):
    """The modules that changed something, in the order they ran."""
    out = []
    for ev in run.events:
        data = ev.get("event_data", {})
        if ev.get("event") == "runner_on_ok" and data.get("res", {}).get("changed"):
            out.append(data.get("resolved_action") or data.get("task_action"))
    return out


def ran(run, role):
    return any(ev.get("event_data", {}).get("role") == role for ev in run.events
               if ev.get("event", "").startswith("runner_on_"))


def test_three_faults_recovered_in_the_runbook_order(healthy_lab, report_dir):
    for fault in ("db-exhaustion", "redis-slots-uncovered", "mesh-down"):
        lab_fault(fault)
    before = lab_status()
    assert before["redis"]["cluster_state"] == "fail" and before["mesh"]["peers"] == 0
    assert before["db"]["connections"] >= 0.8 * before["db"]["max_connections"]

    run = recover_all(report_dir, p3_db_min_age_seconds=1)
    assert run.rc == 0, run.stdout[-4000:]
    after = lab_status()
    assert after["app"]["healthy"] is True
    assert after["redis"]["cluster_state"] == "ok" and after["redis"]["masters"] == 3
    assert after["db"]["connections"] < 0.8 * after["db"]["max_connections"]
    assert after["mesh"]["peers"] >= 10
    acted = changed_actions(run)
    order = [acted.index(a) for a in ("p3.recovery.postgres_terminate", "p3.recovery.redis_cluster_slots",
                                      "p3.recovery.mesh_publish")]
    assert order == sorted(order), acted  # database, then Redis, then the mesh relay

    # the lab is healthy again: a second run changes nothing, yet every stage looked at its area and the run wrote
    # its starting point and its final all-green diagnose (this is also the healthy-lab run - one run, not two)
    again_dir = os.path.join(report_dir, "again")
    os.makedirs(again_dir)
    again = recover_all(again_dir, p3_db_min_age_seconds=1)
    assert again.rc == 0, again.stdout[-3000:]
    assert not any(again.changed.values()), (again.changed, again.changed_tasks())
    for role in ("database", "redis_cluster", "session_bridge", "mesh_relay", "anchor_queue"):
        assert ran(again, role), role
    assert len(glob.glob(os.path.join(again_dir, "diagnose-*.json"))) == 2


def test_a_stage_that_does_not_verify_stops_the_later_ones(healthy_lab, report_dir):
    lab_fault("db-exhaustion")
    lab_fault("mesh-down")
    # The default policy only terminates backends older than 5 minutes: the fresh leak stays, the database
    # stage cannot verify, and nothing after it may run.
    run = recover_all(report_dir)
    assert run.rc != 0
    assert ran(run, "database")
    assert not ran(run, "redis_cluster") and not ran(run, "mesh_relay") and not ran(run, "anchor_queue")
    assert "p3.recovery.mesh_publish" not in changed_actions(run)
    assert lab_status()["mesh"]["peers"] == 0


@pytest.mark.extended
def test_check_mode_changes_nothing(healthy_lab, report_dir):
    lab_fault("mesh-down")
    lab_fault("db-exhaustion")
    leaked = lab_status()["db"]["connections"]
    run = recover_all(report_dir, check=True, p3_db_min_age_seconds=1)
    assert run.rc == 0, run.stdout[-3000:]
    after = lab_status()
    assert after["mesh"]["peers"] == 0 and after["db"]["connections"] >= leaked
    assert after["app"]["healthy"] is False
