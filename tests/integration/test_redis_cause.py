"""Scenarios 1 and 2 when Redis itself is the cause: the session bridge and the mesh relay repair Redis first
(through the redis_cluster role), then do their own work - against the real lab, with two faults at once."""
import pytest

from p3harness import lab_fault, lab_status, recover_mesh, recover_sessions, snapshot


@pytest.fixture
def dirs(tmp_path):
    return str(tmp_path / "reports"), str(tmp_path / "backups")


def test_sessions_repair_uncovered_slots_first_then_purge(healthy_lab, dirs):
    report_dir, backup_dir = dirs
    corrupt = set(("session:" + i).encode() for i in lab_fault("sessions-corrupt")["ids"])
    before = snapshot()  # before the slots go: a node with cluster_state:fail refuses reads
    valid_before = dict((k, v) for k, v in before.items() if k not in corrupt)
    assert corrupt <= set(before) and valid_before
    lab_fault("redis-slots-uncovered")
    assert lab_status()["redis"]["cluster_state"] == "fail"

    run, report = recover_sessions(report_dir, backup_dir)
    assert run.rc == 0, run.stdout[-4000:]
    assert report["actions"]["redis_repair"]["ran"] is True
    assert lab_status()["redis"]["cluster_state"] == "ok"
    assert report["actions"]["purge"]["removed"] == len(corrupt)
    after = snapshot()
    assert not corrupt & set(after)
    for key, (raw, _pttl, dump) in valid_before.items():
        assert key in after and after[key][0] == raw and after[key][2] == dump, key


@pytest.mark.extended
def test_mesh_repairs_uncovered_slots_first_then_reconnects(healthy_lab, report_dir):
    lab_fault("mesh-down")
    lab_fault("redis-slots-uncovered")
    before = lab_status()
    assert before["redis"]["cluster_state"] == "fail" and before["mesh"]["peers"] == 0

    run, report = recover_mesh(report_dir)
    assert run.rc == 0, run.stdout[-4000:]
    assert report["actions"]["redis_repair"]["ran"] is True
    after = lab_status()
    assert after["redis"]["cluster_state"] == "ok" and after["mesh"]["peers"] >= 10
