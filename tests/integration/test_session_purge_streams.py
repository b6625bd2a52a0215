"""session_purge's purge (module_utils.sessions.purge) on a throwaway standalone redis-server, with pages small
enough that the two cursor streams per master (SCAN_STREAMS) each walk hundreds of pages while the table shrinks
(keys removed) or grows (keys written meanwhile): every key present throughout is removed exactly once, the
backup holds each removed key once and restores it byte for byte, keys outside the pattern are untouched, the
max_keys cap stays exact with both streams in flight, and tables of zero or one key work.

Needs redis-server; no lab.
"""
import json
import shutil
import threading
import time

import pytest

from p3harness import ensure_collection_importable, throwaway_redis

ensure_collection_importable()

from ansible_collections.p3.recovery.plugins.module_utils import sessions  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings  # noqa: E402

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server not installed")

FIELDS = ["sessionId", "deviceId", "createdAt", "expiresAt"]


@pytest.fixture()
def server():
    redis_server = throwaway_redis(prefix="p3test-sessions-")
    yield redis_server
    redis_server.stop()


def _value(i, now_ms, corrupt=False):
    if corrupt:
        return b"{not json %d" % i
    return json.dumps({"sessionId": "s%d" % i, "deviceId": "d%d" % (i % 7), "createdAt": now_ms,
                       "expiresAt": now_ms + 3600000}).encode()


def _load(client, n, prefix="session:", corrupt_every=0, other=0):
    now_ms = int(time.time() * 1000)
    expected = {}
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        key = b"%s%08d" % (prefix.encode(), i)
        value = _value(i, now_ms, corrupt=bool(corrupt_every) and i % corrupt_every == 0)
        ttl = 600 + i % 100
        pipe.set(key, value, ex=ttl)
        expected[key] = value
        if len(pipe) >= 5000:
            pipe.execute()
    for i in range(other):
        pipe.set(b"cache:%d" % i, b"x")
    pipe.execute()
    return expected


def _purge(server, tmp_path, mode, max_keys=10 ** 7, scan_count=10, check_mode=False):
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    params = dict(pattern="session:*", required_fields=FIELDS, expiry_field="expiresAt", require_ttl=True,
                  scan_count=scan_count)
    path = str(tmp_path / ("purge-%s-%d.jsonl" % (mode, time.time_ns())))
    return sessions.purge(settings, params, mode=mode, max_keys=max_keys, backup_file=path,
                          check_mode=check_mode), path


def _backup(path):
    header, entries = sessions.read_backup(path)
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys)), "a key is in the backup twice"
    return header, dict((e["key"], e) for e in entries)


def test_mode_all_two_streams_remove_every_key_once(server, tmp_path):
    expected = _load(server.client, 20000, other=2000)
    res, path = _purge(server, tmp_path, "all")
    assert res["removed"] == 20000 and res["errors"] == [] and not res["capped"]
    assert res["pages"] > 2 * 500  # both streams walked many pages each
    assert server.client.dbsize() == 2000 and server.client.get(b"cache:1999") == b"x"
    header, entries = _backup(path)
    assert header["mode"] == "all" and set(entries) == set(expected)
    assert all(entries[k]["value"] == v and 0 < entries[k]["pttl"] <= 700000 for k, v in expected.items())
    # the backup puts every key back, byte for byte, with its TTL
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    restored = sessions.restore(settings, path)
    assert restored["restored"] == 20000
    got = server.client.mget(list(expected))
    assert got == list(expected.values())
    assert 0 < server.client.pttl(b"session:00000042") <= 700000


def test_mode_all_while_the_table_grows(server, tmp_path):
    """Keys written during the purge make the table grow and rehash under both cursors: every key present from the
    start is still removed, nothing is backed up twice, and the backup matches what was removed."""
    expected = _load(server.client, 20000)
    stop = threading.Event()
    written = []

    def writer():
        import redis
        c = redis.Redis(port=server.port, socket_timeout=30)
        i = 0
        while not stop.is_set() and i < 60000:
            pipe = c.pipeline(transaction=False)
            for _ in range(500):
                pipe.set(b"session:new%08d" % i, b"{}", ex=600)
                written.append(b"session:new%08d" % i)
                i += 1
            pipe.execute()
        c.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        res, path = _purge(server, tmp_path, "all")
    finally:
        stop.set()
        t.join(30)
    assert res["errors"] == []
    left = set(server.client.scan_iter(match="session:0*", count=1000))
    assert left == set(), "keys present throughout were missed: %d" % len(left)
    _header, entries = _backup(path)
    assert set(expected) <= set(entries) and len(entries) == res["removed"]
    assert set(entries) - set(expected) <= set(written)


def test_mode_corrupt_two_streams_exact(server, tmp_path):
    expected = _load(server.client, 20000, corrupt_every=10, other=1000)
    corrupt = dict((k, v) for k, v in expected.items() if v.startswith(b"{not"))
    res, path = _purge(server, tmp_path, "corrupt")
    assert res["removed"] == len(corrupt) == 2000 and res["by_reason"] == {"not-json": 2000}
    assert res["vanished"] == 0 and res["errors"] == []
    _header, entries = _backup(path)
    assert dict((k, e["value"]) for k, e in entries.items()) == corrupt
    valid = [k for k in expected if k not in corrupt]
    assert server.client.exists(*valid) == len(valid) and server.client.exists(*corrupt) == 0


@pytest.mark.parametrize("mode,cap", [("all", 1234), ("corrupt", 321)])
def test_cap_exact_with_both_streams(server, tmp_path, mode, cap):
    _load(server.client, 10000, corrupt_every=5 if mode == "corrupt" else 0)
    res, path = _purge(server, tmp_path, mode, max_keys=cap)
    assert res["removed"] == cap and res["capped"]
    _header, entries = _backup(path)
    assert len(entries) == cap
    assert server.client.dbsize() == 10000 - cap


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("mode", ["all", "corrupt"])
def test_tiny_tables(server, tmp_path, mode, n):
    """A table of a few buckets: one SCAN call of the first stream walks on into the second stream's buckets, so
    both streams return the same keys; each is counted (check mode too) and removed once."""
    server.client.flushall()
    expected = _load(server.client, n, corrupt_every=1 if mode == "corrupt" else 0)
    res, _path = _purge(server, tmp_path, mode, check_mode=True)
    assert res["removed"] == res["matched"] == n and server.client.dbsize() == n and res["backup"] is None
    res, path = _purge(server, tmp_path, mode)
    assert res["removed"] == res["matched"] == n and res["vanished"] == 0 and res["errors"] == []
    assert server.client.dbsize() == 0
    if n:
        _header, entries = _backup(path)
        assert set(entries) == set(expected)
    else:
        assert res["backup"] is None


@pytest.mark.parametrize("streams", [1, 4])
def test_other_stream_counts(server, tmp_path, streams):
    expected = _load(server.client, 5000, corrupt_every=4)
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    params = dict(pattern="session:*", required_fields=FIELDS, expiry_field="expiresAt", require_ttl=True,
                  scan_count=10, scan_streams=streams)
    res = sessions.purge(settings, params, mode="corrupt", max_keys=10 ** 6, backup_file=str(tmp_path / "b.jsonl"))
    corrupt = [k for k, v in expected.items() if v.startswith(b"{not")]
    assert res["removed"] == res["matched"] == len(corrupt) == 1250 and res["vanished"] == 0
    assert server.client.exists(*corrupt) == 0 and server.client.dbsize() == 5000 - 1250


def test_bad_stream_count(server):
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    with pytest.raises(sessions.P3Error, match="scan_streams must be 1, 2 or 4, got 3"):
        sessions.purge(settings, dict(pattern="session:*", scan_count=10, scan_streams=3), mode="corrupt")
