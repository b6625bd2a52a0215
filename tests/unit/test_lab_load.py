"""The load generator's accounting (lab/p3lablib/load.py): pure logic, no services."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))

from p3lablib import load  # noqa: E402


def recs():
    return [
        {"s": "start", "run": "r1"},
        {"s": "redis", "run": "r1", "k": "a", "v": "1", "written": True, "acks": 1, "ok": True},
        {"s": "redis", "run": "r1", "k": "b", "v": "2", "written": True, "acks": 0, "ok": False,
         "why": "WAIT 1 500: 0 replicas"},
        {"s": "redis", "run": "r1", "k": "c", "v": "3", "ok": False, "why": "ConnectionError: refused"},
        {"s": "redis", "run": "r1", "k": "a", "v": "4", "written": True, "acks": 1, "ok": True},
        {"s": "session", "run": "r1", "op": "handshake", "id": "s1", "code": 201, "ok": True},
        {"s": "session", "run": "r1", "op": "handshake", "code": 503, "ok": False, "why": "HTTP 503"},
        {"s": "session", "run": "r1", "op": "read", "id": "s1", "code": 200, "ok": True},
        {"s": "anchor", "run": "r1", "job": "j1", "code": 202, "ok": True},
        {"s": "anchor", "run": "r1", "job": "j1", "code": 202, "ok": True},
        {"s": "http", "run": "r1", "code": 200, "ok": True},
        {"s": "http", "run": "r1", "code": None, "ok": False, "why": "HTTP 503"},
        {"s": "stop", "run": "r1"},
    ]


def test_summarize_counts_ok_failed_unacked_and_http_total():
    s = load.summarize(recs())
    assert s["redis"] == {"attempts": 4, "ok": 2, "failed": 1, "unacked": 1,
                          "reasons": {"ConnectionError: refused": 1}}
    assert s["session"]["attempts"] == 3 and s["session"]["failed"] == 1
    assert s["session"]["reads"] == 1 and s["session"]["reads_failed"] == 0
    assert s["anchor"]["ok"] == 2
    assert s["http_total"] == {"requests": 7, "ok": 5, "failed": 2, "reasons": {"HTTP 503": 2}}


def test_expected_keeps_only_acknowledged_last_value_and_unique_ids():
    want = load.expected(recs())
    # b was written but not acknowledged, c never written: neither is owed
    assert want["keys"] == {"a": "4"}
    assert want["sessions"] == ["s1"]
    assert want["jobs"] == ["j1"]


def test_compare_present_lost_unreadable():
    got = load.compare({"a": "1", "b": "2", "c": "3", "d": "4"}, {"a": "1", "b": None, "c": "stale"})
    assert got == {"expected": 4, "present": 1, "lost": 2, "unreadable": 1, "lost_sample": ["b", "c"]}


def test_compare_presence_only():
    got = load.compare({"x": True, "y": True}, {"x": "anything", "y": None})
    assert (got["present"], got["lost"]) == (1, 1)


def test_read_ledger_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_bytes(b"".join((json.dumps(r) + "\n").encode() for r in recs()[:3]) + b'{"s": "redis", "k"')
    assert len(load.read_ledger(str(p))) == 3
    assert load.read_ledger(str(tmp_path / "missing")) == []


def test_ledger_appends_and_survives_reopen(tmp_path):
    p = str(tmp_path / "d" / "l.jsonl")
    lg = load.Ledger(p)
    lg.write({"s": "http", "ok": True})
    lg.close()
    lg.write({"s": "http", "ok": False})  # after close: dropped, no error
    lg = load.Ledger(p)
    lg.write({"s": "http", "ok": True})
    lg.close()
    assert [r["ok"] for r in load.read_ledger(p)] == [True, True]


class _Lab(object):
    dir = "/nonexistent-lab"
    lab_json = "/nonexistent-lab/lab.json"
    app_url = "http://127.0.0.1:1"


@pytest.mark.parametrize("kw,msg", [
    ({"seconds": 0}, "seconds"), ({"seconds": 10000}, "seconds"), ({"rate": 0}, "rate"),
    ({"max_ops": 0}, "max_ops"), ({"streams": ["redis", "bogus"]}, "bogus"), ({"streams": []}, "stream"),
    ({"url": "http://10.0.0.1:80"}, "loopback"),
])
def test_bad_input_is_one_line(kw, msg):
    with pytest.raises(load.LoadError, match=msg):
        load.Load(_Lab(), **kw)
