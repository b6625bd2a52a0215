"""session_purge's purge (module_utils.sessions.purge) on a throwaway server (P3LAB_REDIS_SERVER: Redis or
Valkey), with pages small enough that the cursor walks hundreds of pages while the table shrinks (keys removed) or
grows (keys written meanwhile): every key present throughout is removed exactly once, the backup holds each
removed key once and restores it byte for byte, keys outside the pattern are untouched, the max_keys cap stays
exact, and tables of zero or one key work. A cluster keyspace (one dictionary per slot on Redis >= 7.4 and
Valkey 8) is purged whole on every server binary found. Write-ahead: a backup file that cannot grow, a SIGKILL of
the whole job, a compare-and-delete call that times out - every removed key has its backup line, and the restore
brings them back (a truncated last line reported, the rest restored).

Needs redis-server; no lab.
"""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from p3harness import BIN, ROOT, base_env, ensure_collection_importable, throwaway_redis

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
    header, entries, _truncated = sessions.read_backup(path)
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys)), "a key is in the backup twice"
    return header, dict((e["key"], e) for e in entries)


@pytest.mark.valkey
def test_mode_all_removes_every_key_once(server, tmp_path):
    expected = _load(server.client, 20000, other=2000)
    res, path = _purge(server, tmp_path, "all")
    assert res["removed"] == 20000 and res["errors"] == [] and not res["capped"]
    assert res["pages"] > 1000 and res["backup"]["fsyncs"] >= 1
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


@pytest.mark.valkey
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


@pytest.mark.valkey
def test_mode_corrupt_exact(server, tmp_path):
    expected = _load(server.client, 20000, corrupt_every=10, other=1000)
    corrupt = dict((k, v) for k, v in expected.items() if v.startswith(b"{not"))
    res, path = _purge(server, tmp_path, "corrupt")
    assert res["removed"] == len(corrupt) == 2000 and res["by_reason"] == {"not-json": 2000}
    assert res["vanished"] == 0 and res["errors"] == []
    _header, entries = _backup(path)
    assert dict((k, e["value"]) for k, e in entries.items()) == corrupt
    valid = [k for k in expected if k not in corrupt]
    assert server.client.exists(*valid) == len(valid) and server.client.exists(*corrupt) == 0


@pytest.mark.valkey
@pytest.mark.parametrize("mode,cap", [("all", 1234), ("corrupt", 321)])
def test_cap_exact(server, tmp_path, mode, cap):
    _load(server.client, 10000, corrupt_every=5 if mode == "corrupt" else 0)
    res, path = _purge(server, tmp_path, mode, max_keys=cap)
    assert res["removed"] == cap and res["capped"]
    _header, entries = _backup(path)
    assert len(entries) == cap
    assert server.client.dbsize() == 10000 - cap


@pytest.mark.valkey
@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("mode", ["all", "corrupt"])
def test_tiny_tables(server, tmp_path, mode, n):
    """A table of a few buckets: each key is counted (check mode too) and removed once."""
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


# ---------------------------------------------------------------------------------------------------------------
# Every server version: a cluster keyspace (one dictionary per slot on Redis >= 7.4 / Valkey 8)
# ---------------------------------------------------------------------------------------------------------------

def _binaries():
    bench = os.path.join(ROOT, "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from benchlib import which_binaries
    return which_binaries()


def _existing(client, keys):
    """How many of keys exist (one EXISTS per key: a cluster node refuses multi-key commands across slots)."""
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.exists(k)
    return sum(pipe.execute())


@pytest.mark.parametrize("mode", ["corrupt", "all"])
@pytest.mark.parametrize("binary", _binaries(), ids=os.path.basename)
def test_cluster_keyspace_purged_whole_on_every_server(tmp_path, binary, mode):
    """30,000 corrupt sessions (and 3,000 valid ones) on a cluster node owning every slot: all of them are removed
    (mode all: the valid ones too), and check mode counts exactly what the run then removes."""
    srv = throwaway_redis(prefix="p3test-cluster-", binary=binary, cluster=True)
    try:
        corrupt = _load(srv.client, 30000, corrupt_every=1)
        valid = _load(srv.client, 3000, prefix="session:ok:")
        want = len(corrupt) + (len(valid) if mode == "all" else 0)
        check, _path = _purge(srv, tmp_path, mode, scan_count=100, check_mode=True)
        assert check["cluster"] and check["errors"] == []
        assert check["removed"] == want, (srv.version(), check["removed"], check["scanned"])
        assert srv.client.dbsize() == 33000
        res, path = _purge(srv, tmp_path, mode, scan_count=100)
        assert res["errors"] == [] and res["removed"] == want and res["vanished"] == 0, (srv.version(), res)
        assert _existing(srv.client, corrupt) == 0
        assert _existing(srv.client, valid) == (0 if mode == "all" else len(valid))
        _header, entries = _backup(path)
        assert len(entries) == want
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------------------------
# Write-ahead: a key is removed only after its backup line is durable
# ---------------------------------------------------------------------------------------------------------------

# server-side loader: n sessions session:<12 digits> (~170 bytes, EX 3600); every `every`-th value is not JSON
LOADER = """
local base, n, every, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i = base, base + n - 1 do
  local v
  if every > 0 and i % every == 0 then
    v = '{not json ' .. i
  else
    v = '{"sessionId":"s' .. i .. '","deviceId":"d' .. (i % 1000) .. '","createdAt":' .. now ..
        ',"expiresAt":' .. (tonumber(now) + 3600000) .. '}'
  end
  redis.call('SET', string.format('session:%012d', i), v, 'EX', 3600)
end
return n
"""


def _big_load(client, n, every=0):
    now = int(time.time() * 1000)
    for base in range(0, n, 50000):
        client.eval(LOADER, 0, base, min(50000, n - base), every, now)
    return now


def _big_expected(i, now, every=0):
    if every and i % every == 0:
        return b"{not json %d" % i
    return b'{"sessionId":"s%d","deviceId":"d%d","createdAt":%d,"expiresAt":%d}' % (i, i % 1000, now, now + 3600000)


def _missing(client, n):
    """Indexes of session:<i> (i < n) that are gone."""
    out = []
    for base in range(0, n, 20000):
        keys = [b"session:%012d" % i for i in range(base, min(n, base + 20000))]
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        out.extend(base + j for j, e in enumerate(pipe.execute()) if not e)
    return out


def _assert_every_removed_key_backed_up(client, n, path, now, every=0):
    """Every session key that is gone has a complete backup line holding its exact value; returns (gone, entries,
    truncated)."""
    gone = _missing(client, n)
    header, entries, truncated = sessions.read_backup(path)
    backed = dict((e["key"], e["value"]) for e in entries)
    lost = [i for i in gone if backed.get(b"session:%012d" % i) != _big_expected(i, now, every)]
    assert not lost, "%d of %d removed keys have no backup line (first: %s)" % (len(lost), len(gone), lost[:3])
    return gone, entries, truncated


RUNNER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.p3.recovery.plugins.module_utils import sessions
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings
settings = RedisSettings([("127.0.0.1", int(sys.argv[2]))], socket_timeout=30, connect_timeout=5)
params = dict(pattern="session:*", required_fields=["sessionId", "deviceId", "createdAt", "expiresAt"],
              expiry_field="expiresAt", require_ttl=True, scan_count=100)
try:
    res = sessions.purge(settings, params, mode=sys.argv[3], max_keys=10 ** 7, backup_file=sys.argv[4])
except Exception as e:
    res = dict(exception="%s: %s" % (type(e).__name__, e))
print(json.dumps(res, default=str))
"""


@pytest.mark.server_agnostic
@pytest.mark.parametrize("mode", ["all", "corrupt"])
def test_backup_file_that_cannot_grow(server, tmp_path, mode):
    """The backup file hits its size limit (RLIMIT_FSIZE, as a full disk): the purge stops with one line naming the
    backup, every key it removed has its line, and the restore puts them all back (the cut last line reported)."""
    n, every = 200000, (1 if mode == "corrupt" else 0)
    now = _big_load(server.client, n, every)
    path = str(tmp_path / "limited.jsonl")
    limit = 2 * 1024 * 1024

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", RUNNER, os.path.join(ROOT, ".state", "unit-path"),
                           str(server.port), mode, path], preexec_fn=cap, capture_output=True, text=True,
                          timeout=300)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    gone, entries, truncated = _assert_every_removed_key_backed_up(server.client, n, path, now, every)
    assert 0 < len(gone) < n
    assert res.get("removed") == len(gone), res
    assert any(e.startswith("backup: ") and "File too large" in e for e in res["errors"]), res["errors"]
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    restored = sessions.restore(settings, path)
    assert restored["restored"] == len(gone) and restored["errors"] == []
    assert restored["identical"] == len(entries) - len(gone)
    assert _missing(server.client, n) == []
    if truncated:
        assert restored["truncated"] == truncated and truncated["offset"] + truncated["bytes"] == limit


@pytest.mark.valkey
def test_take_that_times_out_is_resolved_and_counted(server, tmp_path):
    """A 1 s socket timeout while another client runs a 2.5 s script: the calls in flight time out; the purge
    resolves its compare-and-delete call (which keys are gone) before it ends, so `removed` counts exactly the keys
    that are gone, and each of them has its backup line."""
    n = 300000
    now = _big_load(server.client, n)
    path = str(tmp_path / "timeout.jsonl")
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=1, connect_timeout=1)
    params = dict(pattern="session:*", required_fields=FIELDS, expiry_field="expiresAt", require_ttl=True,
                  scan_count=100)
    out = {}

    def run():
        out["res"] = sessions.purge(settings, params, mode="all", max_keys=10 ** 7, backup_file=path)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (os.path.exists(path) and os.path.getsize(path) > 2000000):
        time.sleep(0.005)
    import redis
    busy = redis.Redis(port=server.port, socket_timeout=30)
    busy.eval("local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] "
              "while true do local u = redis.call('TIME') if u[1] * 1000000 + u[2] - s > 2500000 then break end end "
              "return 1", 0)
    t.join(120)
    res = out["res"]
    assert res["errors"], "the 2.5 s script did not hit the purge mid-run: %s" % res
    gone, _entries, _truncated = _assert_every_removed_key_backed_up(server.client, n, path, now)
    assert res["removed"] == len(gone) and res["unresolved"] == 0, (res["removed"], len(gone), res["errors"])


def _ansible(module, args, timeout=None, **popen):
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", module,
           "-a", json.dumps(args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=base_env(dict(ANSIBLE_PYTHON_INTERPRETER=sys.executable)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _kill_tree(proc):
    """SIGKILL ansible and every process under it (its workers run in sessions of their own), all at once."""
    import psutil
    root = psutil.Process(proc.pid)
    tree = [root] + root.children(recursive=True)
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait(30)


def test_sigkill_mid_purge_loses_nothing(server, tmp_path):
    """SIGKILL of the whole job (ansible and its module: an AWX cancel, the OOM killer) in the middle of a 1M-key
    purge: every key that is gone has its backup line, and session_restore brings all of them back byte for byte
    with a TTL."""
    n = int(os.environ.get("P3_TEST_KILL_KEYS", "1000000"))
    now = _big_load(server.client, n)
    path = str(tmp_path / "killed.jsonl")
    redis_args = dict(redis_nodes=["127.0.0.1:%d" % server.port], redis_socket_timeout=30)
    proc = _ansible("p3.recovery.session_purge", dict(redis_args, mode="all", allow_all=True, max_keys=n,
                                                      backup_path=path), start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # killed once about a fifth of the lines are written
        while time.monotonic() < deadline and not (os.path.exists(path) and os.path.getsize(path) > n * 60):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.002)
    finally:
        _kill_tree(proc)
    gone, entries, truncated = _assert_every_removed_key_backed_up(server.client, n, path, now)
    assert 0 < len(gone) < n, "the kill did not land mid-run (%d of %d gone)" % (len(gone), n)
    undo = _ansible("p3.recovery.session_restore", dict(redis_args, path=path))
    out, _ = undo.communicate(timeout=600)
    assert undo.returncode == 0, out[-2000:]
    assert re.search(r"\brestored: %d\b" % len(gone), out), out[-2000:]
    assert _missing(server.client, n) == []
    for base in range(0, n, 20000):
        idx = list(range(base, min(n, base + 20000)))
        got = server.client.mget([b"session:%012d" % i for i in idx])
        assert got == [_big_expected(i, now) for i in idx]
    pipe = server.client.pipeline(transaction=False)
    for i in gone[:2000]:
        pipe.pttl(b"session:%012d" % i)
    assert all(0 < t <= 3600000 for t in pipe.execute())


@pytest.mark.server_agnostic
def test_restore_reports_a_truncated_last_line_and_restores_the_rest(server, tmp_path):
    expected = _load(server.client, 500)
    res, path = _purge(server, tmp_path, "all")
    assert res["removed"] == 500
    size = os.path.getsize(path)
    with open(path, "rb+") as fh:
        fh.truncate(size - 40)  # the last line cut in the middle
    settings = RedisSettings([("127.0.0.1", server.port)], socket_timeout=30, connect_timeout=5)
    restored = sessions.restore(settings, path)
    assert restored["restored"] == 499 and restored["entries"] == 499
    assert restored["truncated"]["line"] == 501 and restored["truncated"]["offset"] + restored["truncated"][
        "bytes"] == size - 40
    assert server.client.dbsize() == 499
    assert all(server.client.get(k) == v for k, v in list(expected.items())[:50] if server.client.exists(k))


@pytest.mark.valkey
@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_take_leaves_keys_that_changed_since_read(tmp_path, cluster):
    """LUA_READ reads a page; between it and LUA_TAKE keys change (new value, TTL added to a no-ttl session, type
    changed, deleted, a value of the same length written with its TTL kept): those stay, the others are removed -
    the compare-and-delete the purge relies on. The last case is why the compare is the whole value: a cheaper
    fingerprint of length and TTL would remove a key whose new value has no backup line."""
    srv = throwaway_redis(prefix="p3test-take-", cluster=cluster)
    c = srv.client
    now_ms = int(time.time() * 1000)
    good = json.dumps({"sessionId": "x", "deviceId": "d", "createdAt": now_ms, "expiresAt": now_ms + 3600000})
    names = ("same", "no-ttl-same", "hash-same", "changed", "ttl-added", "hash-now-string", "deleted",
             "no-ttl-valued", "same-length-ttl-kept")
    keys = dict((n, ("edgerace:" + n).encode()) for n in names)
    try:
        c.set(keys["same"], b"{oops", ex=100)
        c.set(keys["no-ttl-same"], good)
        c.hset(keys["hash-same"], mapping={"a": "1"})
        c.set(keys["changed"], b"{oops", ex=100)
        c.set(keys["ttl-added"], good)
        c.hset(keys["hash-now-string"], mapping={"a": "1"})
        c.set(keys["deleted"], b"{oops", ex=100)
        c.set(keys["no-ttl-valued"], b"{oops")
        c.set(keys["same-length-ttl-kept"], b"{oops", ex=100)
        batch = "0" if cluster else "1"
        cursor, _ms, _us, got, values, types, dumps, pttls = c.eval(sessions.LUA_READ, 0, batch, 0, "edgerace:*", 100)
        assert int(cursor) == 0 and sorted(got) == sorted(keys.values())
        types = types.decode() or "s" * len(got)
        dumps = list(dumps)
        read = {}
        for k, v, ty, t in zip(got, values, types, pttls):
            read[k] = ("d", dumps.pop(0), t) if ty == "d" else ("v", v, t)
        assert read[keys["hash-same"]][0] == "d" and read[keys["no-ttl-same"]][2] == -1
        reasons = {keys["no-ttl-same"]: "no-ttl", keys["ttl-added"]: "no-ttl"}
        items = [(keys[n], reasons.get(keys[n], "not-json"), read[keys[n]][0], read[keys[n]][1], read[keys[n]][2])
                 for n in names]
        # what happens between the read and the take
        c.set(keys["changed"], good, ex=100)
        c.expire(keys["ttl-added"], 100)
        c.delete(keys["hash-now-string"])
        c.set(keys["hash-now-string"], b"x")
        c.delete(keys["deleted"])
        ttl_before = c.pttl(keys["same-length-ttl-kept"])
        c.setrange(keys["same-length-ttl-kept"], 4, b"z")  # {oops -> {oopz: same length, TTL untouched
        assert c.strlen(keys["same-length-ttl-kept"]) == 5 and 0 < c.pttl(keys["same-length-ttl-kept"]) <= ttl_before
        _ms, _us, outcome = c.eval(sessions.LUA_TAKE, 0, batch, *sessions._take_args(items))
        assert outcome.decode() == "rrrkkk-rk"
        assert sum(c.exists(keys[n]) for n in ("same", "no-ttl-same", "hash-same", "no-ttl-valued")) == 0
        assert c.get(keys["changed"]) == good.encode() and c.ttl(keys["ttl-added"]) > 0
        assert c.get(keys["hash-now-string"]) == b"x" and c.get(keys["same-length-ttl-kept"]) == b"{oopz"
        # idempotent: the same call again (as when resolving a call whose reply was lost) removes nothing more
        _ms, _us, again = c.eval(sessions.LUA_TAKE, 0, batch, *sessions._take_args(items))
        assert again.decode() == "---kkk--k"
    finally:
        srv.stop()
