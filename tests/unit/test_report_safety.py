"""Unit tests (issues 13 §6, 14 §1/§4): report names unique per run, no path escapes, no invocation, no SQL text
or live session ids unless asked for."""
import datetime
import json
import os

import pytest

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils import report

NOW = datetime.datetime(2026, 11, 28, 13, 15, 0, 123, tzinfo=datetime.timezone.utc)


def params(tmp_path, **kw):
    p = dict(data={"healthy": True}, dir=str(tmp_path), prefix="recover_database", path=None, mode="0640")
    p.update(kw)
    return p


def test_two_reports_in_the_same_second_are_two_files(tmp_path):
    a = report.write_report(params(tmp_path, data={"run": 1}), now=NOW)
    b = report.write_report(params(tmp_path, data={"run": 2}), now=NOW)
    assert a["path"] != b["path"]
    files = sorted(os.listdir(str(tmp_path)))
    assert len(files) == 2
    runs = set()
    for name in files:
        with open(os.path.join(str(tmp_path), name)) as f:
            body = json.load(f)
        runs.add(body["run"])
        assert body["report"] == os.path.join(str(tmp_path), name)  # the report names its own path
    assert runs == {1, 2}


def test_generated_names_are_created_exclusively(tmp_path, monkeypatch):
    """Even if the generated name were to repeat, the second write fails instead of replacing the first report."""
    monkeypatch.setattr(report, "unique_name", lambda prefix, now: "%s-fixed.json" % prefix)
    report.write_report(params(tmp_path, data={"run": 1}), now=NOW)
    with pytest.raises(P3Error, match="already exists"):
        report.write_report(params(tmp_path, data={"run": 2}), now=NOW)
    with open(str(tmp_path / "recover_database-fixed.json")) as f:
        assert json.load(f)["run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["recover_database-fixed.json"]  # no temporary file left


def test_an_explicit_path_is_replaced_atomically(tmp_path):
    target = str(tmp_path / "r.json")
    report.write_report(params(tmp_path, path=target, data={"run": 1}), now=NOW)
    report.write_report(params(tmp_path, path=target, data={"run": 2}), now=NOW)
    with open(target) as f:
        assert json.load(f)["run"] == 2


@pytest.mark.parametrize("prefix", ["../evil", "a/b", "..", "x/../../y"])
def test_prefix_cannot_escape_the_directory(tmp_path, prefix):
    with pytest.raises(P3Error, match="^prefix must"):
        report.write_report(params(tmp_path / "reports", prefix=prefix), now=NOW)
    assert not any(p.name.endswith(".json") for p in tmp_path.rglob("*"))


def test_path_with_dotdot_is_rejected(tmp_path):
    with pytest.raises(P3Error, match=r"\.\."):
        report.write_report(params(tmp_path, path=str(tmp_path / "reports" / ".." / ".." / "x.json")), now=NOW)


def test_invocation_is_stripped_recursively(tmp_path):
    data = {"actions": {"terminate": {"changed": True, "invocation": {"module_args": {"dsn": "postgresql://u:pw@h/db"}},
                                      "items": [{"invocation": {"module_args": {}}, "pid": 1}]}}}
    r = report.write_report(params(tmp_path, data=data), now=NOW)
    with open(r["path"]) as f:
        body = json.load(f)
    text = json.dumps(body["actions"])
    assert "invocation" not in text and "pw@h" not in text and '"pid": 1' in text


def test_sql_text_and_session_ids_are_left_out_by_default(tmp_path):
    data = {"before": {"long_running": [{"pid": 7, "query": "UPDATE users SET password = 'hunter2' WHERE id = 42"}]},
            "session_id": "3f1c2b7e-5d1a-4f7c-9a0b-0c1d2e3f4a5b",
            "handshake": {"body": {"sessionId": "3f1c2b7e-5d1a-4f7c-9a0b-0c1d2e3f4a5b", "ttlSeconds": 3600}},
            "sample": [{"key": "session:3f1c2b7e-5d1a-4f7c-9a0b-0c1d2e3f4a5b", "reason": "not-json"}]}
    r = report.write_report(params(tmp_path, data=data), now=NOW)
    with open(r["path"]) as f:
        text = f.read()
        body = json.loads(text)
    assert "hunter2" not in text and "3f1c2b7e-5d1a-4f7c-9a0b-0c1d2e3f4a5b" not in text
    q = body["before"]["long_running"][0]["query"]
    assert q.startswith("fingerprint:") and "UPDATE users SET password = ?" in q
    assert body["sample"][0]["key"].startswith("session:sha256:")
    assert body["session_id"].startswith("sha256:")
    # the same id gives the same hash, so entries can still be matched up
    again = report.redact({"session_id": "3f1c2b7e-5d1a-4f7c-9a0b-0c1d2e3f4a5b"})
    assert again["session_id"] == body["session_id"]
    assert report.redact({"keys": "{bull}:anchor:*"}) == {"keys": "{bull}:anchor:*"}  # a pattern names no session
    r2 = report.write_report(params(tmp_path, data=data, include_sensitive=True), now=NOW)
    with open(r2["path"]) as f:
        text = f.read()
    assert "hunter2" in text and "session:3f1c2b7e" in text


def test_report_file_and_directory_modes_do_not_depend_on_umask(tmp_path):
    old = os.umask(0)
    try:
        r = report.write_report(params(tmp_path / "new", mode="0600"), now=NOW)
    finally:
        os.umask(old)
    assert os.stat(r["path"]).st_mode & 0o777 == 0o600
    assert os.stat(str(tmp_path / "new")).st_mode & 0o777 == 0o700


def test_the_directory_itself_may_be_relative_with_dotdot(tmp_path):
    base = tmp_path / "a"
    base.mkdir()
    r = report.write_report(params(tmp_path, dir=str(base / ".." / "reports")), now=NOW)
    assert os.path.dirname(os.path.realpath(r["path"])) == str(tmp_path / "reports")


def test_a_private_directory_is_private_its_new_parents_are_not(tmp_path):
    """make_private_dir creates the directory 0700 whatever the umask, and parents it has to create the way
    `mkdir -p -m 0700` does (the process umask): a report or incident directory under a path that does not exist yet
    must not make that path unreadable to others (a test lab's directory created by a playbook's first incident
    record became 0700, and PostgreSQL, started as its own user in it, could not start)."""
    old = os.umask(0o022)
    try:
        leaf = tmp_path / "srv" / "p3" / "reports"
        report.make_private_dir(str(leaf))
    finally:
        os.umask(old)
    assert (leaf.stat().st_mode & 0o777) == 0o700
    assert (tmp_path / "srv").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "srv" / "p3").stat().st_mode & 0o777 == 0o755
    report.make_private_dir(str(leaf))  # an existing directory is left as it is
    os.chmod(str(leaf), 0o750)
    report.make_private_dir(str(leaf))
    assert (leaf.stat().st_mode & 0o777) == 0o750
