"""Pure logic of the session and mesh scenarios: the session validation rule, expiry parsing, option checks, the
backup file format (write, read, malformed input) and the connection counting (psutil mocked)."""
import collections
import json
import os
import stat

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import mesh, sessions
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

NOW = 1_800_000_000_000  # ms


def session(**kw):
    d = {"sessionId": "s", "deviceId": "d", "createdAt": NOW - 1000, "expiresAt": NOW + 3_600_000}
    d.update(kw)
    return json.dumps(d).encode()


@pytest.mark.parametrize("raw,pttl,expected", [
    (session(), 3_600_000, None),
    (b"  " + session() + b"\n", 5, None),
    (session(expiresAt=(NOW + 60_000) // 1000), 10, None),          # seconds
    (session(expiresAt=str(NOW + 60_000)), 10, None),               # numeric string
    (session(expiresAt="2099-01-01T00:00:00Z"), 10, None),          # ISO 8601
    (session(deviceId="caf\u00e9"), 10, None),
    (session(), -1, "no-ttl"),
    (session(expiresAt=NOW - 1), 10, "expired"),
    (session(expiresAt=NOW), 10, "expired"),
    (session(expiresAt="2001-01-01T00:00:00"), 10, "expired"),
    (session(expiresAt=None), 10, "bad-expiry"),
    (session(expiresAt=True), 10, "bad-expiry"),
    (session(expiresAt="soon"), 10, "bad-expiry"),
    (b'{"sessionId":"s"}', 10, "missing-fields"),
    (b"{}", 10, "missing-fields"),
    (b"[]", 10, "not-object"),
    (b"42", 10, "not-object"),
    (b"{not json", 10, "not-json"),
    (b"[" * 5000 + b"]" * 5000, 10, "not-json"),
    (b"\x80\x81\xfe", 10, "not-utf8"),
    (Exception("WRONGTYPE Operation against a key holding the wrong kind of value"), 10, "wrong-type"),
])
def test_classify(raw, pttl, expected):
    assert sessions.classify(raw, pttl, now_ms=NOW) == expected


def test_classify_options():
    assert sessions.classify(session(), -1, require_ttl=False, now_ms=NOW) is None
    assert sessions.classify(b'{"a": 1}', 10, required_fields=["a"], expiry_field="", now_ms=NOW) is None
    assert sessions.classify(b'{"a": 1}', 10, required_fields=["a", "b"], expiry_field="", now_ms=NOW) == "missing-fields"
    # the order of the checks: missing fields before the expiry, the expiry before the TTL
    assert sessions.classify(b'{"expiresAt": 1}', -1, now_ms=NOW) == "missing-fields"
    assert sessions.classify(session(expiresAt=1), -1, now_ms=NOW) == "expired"


@pytest.mark.parametrize("value,expected", [
    (1_800_000_000_000, 1_800_000_000_000),
    (1_800_000_000, 1_800_000_000_000),
    (1_800_000_000.5, 1_800_000_000_500),
    ("1800000000000", 1_800_000_000_000),
    (" 1800000000 ", 1_800_000_000_000),
    ("2027-01-15T08:00:00Z", 1_799_971_200_000 + 8 * 3_600_000),
    ("2027-01-15T08:00:00+01:00", 1_799_971_200_000 + 7 * 3_600_000),
    ("2027-01-15T08:00:00", 1_799_971_200_000 + 8 * 3_600_000),  # no zone: UTC
    (None, None), (True, None), ([], None), ("soon", None), (float("nan"), None), (float("inf"), None),
])
def test_parse_time_ms(value, expected):
    assert sessions.parse_time_ms(value) == expected


def test_check_options():
    ok = dict(pattern="session:*", scan_count=500, required_fields=["a"])
    sessions.check_options(ok)
    for bad, text in [(dict(ok, pattern=""), "pattern"), (dict(ok, scan_count=0), "scan_count"),
                      (dict(ok, scan_count=10001), "scan_count"), (dict(ok, required_fields=[" "]), "required_fields")]:
        with pytest.raises(P3Error) as e:
            sessions.check_options(bad)
        assert text in e.value.msg


def test_backup_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "b.jsonl")
    w = sessions.BackupWriter(path, dict(format=sessions.BACKUP_FORMAT, version=sessions.BACKUP_VERSION, mode="corrupt"))
    w.check()
    assert not os.path.exists(path)  # the check leaves nothing behind
    w.write_page([(b"session:a", "not-json", "v", b"{oops\xff", 5000),
                  (b"session:\xffb", "wrong-type", "d", b"\x00dump", -1)], "127.0.0.1:1", NOW)
    w.write_page([], "127.0.0.1:1", NOW)
    w.wait(2)  # returns once both entries are fsynced
    assert w.durable == 2 and w.fsyncs >= 1
    w.close()
    assert w.count == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    header, entries, truncated = sessions.read_backup(path)
    assert truncated is None
    assert header["mode"] == "corrupt"
    a, b = entries
    assert a["key"] == b"session:a" and a["value"] == b"{oops\xff" and a["dump"] is None
    assert a["pttl"] == 5000 and a["expire_at_ms"] == NOW + 5000 and a["reason"] == "not-json"
    assert b["key"] == b"session:\xffb" and b["dump"] == b"\x00dump" and b["value"] is None
    assert b["expire_at_ms"] is None and b["pttl"] == -1


def test_backup_refuses_to_overwrite(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("x")
    w = sessions.BackupWriter(str(path), {})
    with pytest.raises(P3Error) as e:
        w.check()
    assert "cannot create the backup file" in e.value.msg


@pytest.mark.parametrize("content,text", [
    ("", "not a p3.recovery session backup"),
    ('{"format": "other"}\n', "not a p3.recovery session backup"),
    ('{"format": "p3.recovery.redis-dump", "version": 9}\n', "unsupported backup version"),
    ('{"format": "p3.recovery.redis-dump", "version": 1}\n{"key": "!!", "value": "eA=="}\n', "line 2"),
    ('{"format": "p3.recovery.redis-dump", "version": 1}\n{"key": "eA==", "value": "eA==", "dump": "eA=="}\n', "line 2"),
    ('{"format": "p3.recovery.redis-dump", "version": 1}\nnot json\n', "line 2"),
])
def test_read_backup_rejects_malformed_files(tmp_path, content, text):
    path = tmp_path / "b.jsonl"
    path.write_text(content)
    with pytest.raises(P3Error) as e:
        sessions.read_backup(str(path))
    assert text in e.value.msg and "\n" not in e.value.msg


def test_read_backup_reports_a_truncated_last_line(tmp_path):
    """A last line cut short (killed, disk full): the complete lines are entries, the cut one is reported."""
    head = '{"format": "p3.recovery.redis-dump", "version": 1}\n'
    line = '{"key": "eA==", "value": "eQ==", "pttl": -1, "expire_at_ms": null}\n'
    path = tmp_path / "b.jsonl"
    path.write_text(head + line + line[:17])
    header, entries, truncated = sessions.read_backup(str(path))
    assert len(entries) == 1 and entries[0]["value"] == b"y"
    assert truncated == dict(line=3, offset=len(head) + len(line), bytes=17)
    path.write_text(head + line + line.rstrip("\n"))  # complete but for its newline: an entry
    assert sessions.read_backup(str(path))[1:] == (entries * 2, None)
    path.write_text(head + line[:17] + "\n" + line)  # a damaged line in the middle is not a cut: refused
    with pytest.raises(P3Error) as e:
        sessions.read_backup(str(path))
    assert "line 2" in e.value.msg


def test_take_args_and_resp():
    items = [(b"session:a", "not-json", "v", b"{x", 5), (b"session:b", "no-ttl", "v", b"{}", -1),
             (b"session:c", "wrong-type", "d", b"\x00dump", -1)]
    args = sessions._take_args(items)
    assert args == ["vtd", b"session:a", b"{x", b"session:b", b"{}", b"session:c", b"\x00dump"]
    from redis.connection import PythonRespSerializer
    want = b"".join(PythonRespSerializer(6000, lambda a: a if isinstance(a, bytes) else str(a).encode()).pack(
        "EVALSHA", "abc", 0, "1", *args))
    assert sessions._resp(["EVALSHA", "abc", 0, "1"] + args) == want


def test_read_backup_missing_file(tmp_path):
    with pytest.raises(P3Error) as e:
        sessions.read_backup(str(tmp_path / "nope.jsonl"))
    assert "cannot read the backup file" in e.value.msg


def test_slot_owners():
    verdict = {"failed_nodes": ["127.0.0.1:3"], "nodes": [
        {"address": "127.0.0.1:1", "role": "master", "slots": ["0-5460", "7000"]},
        {"address": "127.0.0.1:2", "role": "master", "slots": ["5461-6999", "7001-16383"]},
        {"address": "127.0.0.1:3", "role": "master", "slots": []},
        {"address": "127.0.0.1:4", "role": "replica", "slots": []},
    ]}
    assert sessions.slot_owners(verdict) == [(0, 5460, "127.0.0.1:1"), (5461, 6999, "127.0.0.1:2"),
                                             (7000, 7000, "127.0.0.1:1"), (7001, 16383, "127.0.0.1:2")]


Addr = collections.namedtuple("Addr", "ip port")
Conn = collections.namedtuple("Conn", "laddr raddr status")


def test_count_connections(monkeypatch):
    conns = [Conn(Addr("127.0.0.1", 5000), (), "LISTEN")]
    conns += [Conn(Addr("127.0.0.1", 5000), Addr("10.0.0.%d" % (i % 3), 40000 + i), "ESTABLISHED") for i in range(7)]
    conns += [Conn(Addr("127.0.0.1", 5000), Addr("10.0.0.9", 1), "TIME_WAIT"),
              Conn(Addr("127.0.0.1", 40001), Addr("127.0.0.1", 5000), "ESTABLISHED"),  # a client of port 5000
              Conn(None, None, "NONE")]

    class FakePsutil(object):
        AccessDenied = PermissionError

        @staticmethod
        def net_connections(kind):
            return conns
    monkeypatch.setattr(mesh, "psutil", FakePsutil, raising=False)
    monkeypatch.setattr(mesh, "HAS_PSUTIL", True)
    r = mesh.count_connections(5000, top=2)
    assert r["listening"] is True and r["connections"] == 7
    assert r["by_state"] == {"ESTABLISHED": 7, "TIME_WAIT": 1}
    assert r["top_remotes"] == [{"address": "10.0.0.0", "connections": 3}, {"address": "10.0.0.1", "connections": 2}]
    assert mesh.count_connections(5000, states=("ESTABLISHED", "TIME_WAIT"))["connections"] == 8


def test_count_connections_access_denied(monkeypatch):
    class FakePsutil(object):
        AccessDenied = PermissionError

        @staticmethod
        def net_connections(kind):
            raise PermissionError()
    monkeypatch.setattr(mesh, "psutil", FakePsutil, raising=False)
    monkeypatch.setattr(mesh, "HAS_PSUTIL", True)
    with pytest.raises(P3Error) as e:
        mesh.count_connections(5000)
    assert "become" in e.value.msg


def test_nesting_limit_matches_cjson():
    ok = b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":99999999999999,"x":' + b"[" * 900 + b"]" * 900 + b"}"
    assert sessions.classify(ok, 10, now_ms=NOW) is None
    assert sessions.classify(b"[" * 1001 + b"]" * 1001, 10, now_ms=NOW) == "not-json"
    assert sessions._depth('{"a":"[[[[","b":[{}]}') == 3


def _judge_cases():
    """Values around every shortcut of sessions.Judge: each must get classify()'s answer."""
    base = {"sessionId": "s", "deviceId": "d", "createdAt": NOW - 1000}
    values = []
    for exp in [NOW + 1, NOW, NOW - 1, (NOW + 60_000) // 1000, NOW // 1000, 99_999_999_999, 100_000_000_000,
                -99_999_999_999, -100_000_000_000, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 1, -2 ** 53, 10 ** 30, 0, -1,
                1.5, float(NOW + 10), "1800000000", " 1800000060000 ", "2099-01-01T00:00:00Z", "", "x", None,
                True, False, [], {}, "NaN"]:
        values.append(json.dumps(dict(base, expiresAt=exp)).encode())
    values += [
        b"\xef\xbb\xbf" + session(), session() + b" ", b" " + session(), b"\t" + session() + b"\n",
        session() + b"x", session() + b"{}", b"{}", b"[]", b"null", b"1", b'"s"', b"", b" ", b"{",
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":NaN}',
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":Infinity}',
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":1e400}',
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":1800000000000.0}',
        b'{"sessionId":"s","sessionId":"t","deviceId":"d","createdAt":1,"expiresAt":1800000060000}',
        b'{"sessionId":"\\ud800","deviceId":"d","createdAt":1,"expiresAt":1800000060000}',
        b'{"sessionId":"s\x01","deviceId":"d","createdAt":1,"expiresAt":1800000060000}',
        b"\xff" + session(), session(deviceId="caf\u00e9"), session(deviceId="\u2028"),
        b"[" * 999 + b"]" * 999, b"[" * 1000 + b"]" * 1000, b"[" * 1001 + b"]" * 1001,
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":1800000060000,"x":' + b"[" * 998 + b"]" * 998 + b"}",
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":1800000060000,"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"sessionId":"s","deviceId":"d","createdAt":1,"expiresAt":1800000060000,"x":"' + b"[" * 2000 + b'"}',
        "caf\u00e9".encode("latin-1"), Exception("WRONGTYPE"), "text", b'{"a": 1}',
    ]
    return values


@pytest.mark.parametrize("options", [
    {}, {"require_ttl": False}, {"required_fields": ["a"], "expiry_field": ""}, {"required_fields": []},
    {"expiry_field": "createdAt"}, {"required_fields": None, "expiry_field": None},
])
def test_judge_matches_classify(options):
    judge = sessions.Judge(**options)
    for raw in _judge_cases():
        for pttl in (-1, 0, 5000):
            assert judge(raw, pttl, NOW) == sessions.classify(raw, pttl, now_ms=NOW, **options), (raw[:80], pttl)
