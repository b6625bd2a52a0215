"""recover_database.yml against the lab's real PostgreSQL: db-exhaustion -> recover -> healthy, a protected long query
survives, check mode terminates nothing, a second run changes nothing, bad input fails cleanly, no password at -vvvv.

Every assertion on the database reads pg_stat_activity straight from the server (psycopg2 as the lab's admin),
not only what the playbook reported.
"""
import glob
import json
import os
import select
import socket
import time
import urllib.request

import psycopg2
import psycopg2.extensions
import pytest

from p3harness import LAB_DIR, LAB_SECRETS, lab_fault, lab_status, run_playbook

LEAK_APP = "p3-lab-leak"
PROTECTED_APP = "p3-nightly-report"
MIN_AGE = 1  # the fault's backends are seconds old; the runbook's 5 minutes is the role's default


def pg_info():
    with open(os.path.join(LAB_DIR, "lab.json")) as f:
        return json.load(f)["postgres"]


def admin():
    pg = pg_info()
    conn = psycopg2.connect(host="127.0.0.1", port=pg["port"], user=pg["admin_user"], password=pg["admin_password"],
                            dbname=pg["database"], connect_timeout=3, application_name="p3-test-observer")
    conn.autocommit = True
    return conn


def backends():
    """(pid, backend_start) -> row of every client backend except the observer's own."""
    with admin() as conn, conn.cursor() as cur:
        cur.execute("SELECT pid, backend_start::text, usename::text, application_name, state "
                    "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        rows = cur.fetchall()
        cur.execute("SELECT current_setting('max_connections')::int")
        max_conn = cur.fetchone()[0]
    conn.close()
    out = dict(((r[0], r[1]), dict(pid=r[0], start=r[1], user=r[2], app=r[3], state=r[4])) for r in rows)
    return out, max_conn


def keys_of(rows, app):
    return set(k for k, r in rows.items() if r["app"] == app)


class LongQuery(object):
    """A long query running as the app's role (an ordinary slot) with its own application_name, started before the
    fault takes the remaining slots."""

    def __init__(self, app_name, seconds=600):
        pg = pg_info()
        self.conn = psycopg2.connect(host="127.0.0.1", port=pg["port"], user=pg["app_user"], password=pg["app_password"],
                                     dbname=pg["database"], connect_timeout=3, application_name=app_name, async_=1)
        self._wait()
        self.pid = self.conn.get_backend_pid()
        self.conn.cursor().execute("SELECT pg_sleep(%d)" % seconds)

    def _wait(self):
        while True:
            state = self.conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                select.select([self.conn.fileno()], [], [], 3)
            else:
                select.select([], [self.conn.fileno()], [], 3)

    def alive(self):
        """Still running its statement (not terminated, not cancelled)."""
        r, _, _ = select.select([self.conn.fileno()], [], [], 0)
        if not r:
            return True
        try:
            return self.conn.poll() != psycopg2.extensions.POLL_OK
        except psycopg2.Error:
            return False

    def close(self):
        try:
            self.conn.cancel()
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.conn.close()


@pytest.fixture
def protected_query(healthy_lab):
    q = LongQuery(PROTECTED_APP)
    yield q
    q.close()


def health_code():
    with open(os.path.join(LAB_DIR, "lab.json")) as f:
        url = json.load(f)["urls"]["health"]
    try:
        return urllib.request.urlopen(url, timeout=3).status
    except Exception as e:  # noqa: BLE001 - any failure is "not healthy"
        return getattr(e, "code", None)


def recover(report_dir, check=False, verbosity=0, **extra):
    extravars = {"p3_report_dir": report_dir, "p3_db_min_age_seconds": MIN_AGE,
                 "p3_db_exclude_applications": [PROTECTED_APP], "p3_db_app_pool_max": 5}
    extravars.update(extra)
    before = set(glob.glob(os.path.join(report_dir, "recover_database-*.json")))
    run = run_playbook("recover_database.yml", extravars=extravars, check=check, verbosity=verbosity)
    new = sorted(set(glob.glob(os.path.join(report_dir, "recover_database-*.json"))) - before)
    report = None
    if new:
        with open(new[-1]) as f:
            report = json.load(f)
    return run, report


def wait_leak_ready(seconds=MIN_AGE + 0.2):
    """The leak's statements must be older than the policy's minimum age before the playbook reads them."""
    time.sleep(seconds)


def test_exhaustion_recovered_and_protected_query_survives(protected_query, report_dir):
    lab_fault("db-exhaustion")
    rows, max_conn = backends()
    leak = keys_of(rows, LEAK_APP)
    protected = keys_of(rows, PROTECTED_APP)
    assert len(leak) >= 10 and len(protected) == 1, rows
    assert len(rows) + 1 >= 0.8 * max_conn  # exhausted: the observer is the +1
    assert health_code() == 503
    wait_leak_ready()

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-4000:]

    # real state: the app is healthy, usage is under the threshold, the fault's queries are gone, the protected one runs
    st = lab_status()
    assert st["app"]["healthy"] is True and health_code() == 200
    rows, max_conn = backends()
    assert (len(rows) + 1) < 0.8 * max_conn, rows
    assert not keys_of(rows, LEAK_APP), "leak backends survived: %s" % keys_of(rows, LEAK_APP)
    assert keys_of(rows, PROTECTED_APP) == protected
    assert protected_query.alive()

    # what the playbook says matches
    assert report["kind"] == "recover_database" and report["healthy"] is True and report["changed"] is True
    term = report["actions"]["terminate"]
    assert set(term["terminated"]) == set(pid for pid, _ in leak)
    assert protected_query.pid not in [b["pid"] for b in term["selected"]]
    assert term["excluded"]["application"] >= 1
    assert term["protected"]["own"] == 1
    assert report["before"]["database"]["connections"]["via_reserved_slot"] is True
    assert report["before"]["database"]["usage_pct"] >= 80
    assert all(c["healthy"] for c in report["checks"]), report["checks"]
    pool = report["recommendation"]["pool"]
    assert pool["demand"] == 5 * pool["instances"] and pool["max_connections"] == max_conn and pool["recommendation"]
    stats = run.stats["p3_recover_database"]
    assert stats["healthy"] is True and stats["terminated"] == len(leak) and stats["report"].startswith(report_dir)


def test_check_mode_terminates_nothing(healthy_lab, report_dir):
    lab_fault("db-exhaustion")
    wait_leak_ready()
    before, _ = backends()
    leak = keys_of(before, LEAK_APP)

    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-4000:]

    after, _ = backends()
    # the same backends alive before and after (the app's own pool, 1 s idle lifetime, may come and go by itself)
    gone = set(k for k in before if before[k]["app"] != "p3-protocol") - set(after)
    assert not gone, "check mode ended backends: %s" % gone
    assert keys_of(after, LEAK_APP) == leak
    assert health_code() == 503
    # it returns exactly what would be terminated: the leak, nothing else
    term = report["actions"]["terminate"]
    assert report["check_mode"] is True and term["check_mode"] is True
    assert set((b["pid"], b["backend_start"]) for b in term["selected"]) == leak
    assert term["terminated"] == [] and term["connections_after"] is None
    assert report["changed"] is False and report["actions"]["restart"]["hosts"] == []
    assert "would terminate %d backends" % len(leak) in report["reason"]


def test_second_run_changes_nothing(healthy_lab, report_dir):
    lab_fault("db-exhaustion")
    wait_leak_ready()
    run, report = recover(report_dir)
    assert run.rc == 0 and report["changed"] is True, run.stdout[-3000:]
    before, _ = backends()

    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert not any(run.changed.values()), run.changed
    assert report["changed"] is False and report["healthy"] is True
    assert report["decision"]["act"] is False
    assert report["actions"]["terminate"].get("skipped") is True
    assert report["reason"].startswith("nothing to do")
    after, _ = backends()
    assert not (set(before) - set(after)) - keys_of(before, "p3-protocol"), "a healthy run ended backends"


def test_restart_gate_always_restarts_the_app(healthy_lab, report_dir):
    app_pid = healthy_lab["services"]["app"]["pid"]
    lab_fault("db-exhaustion")
    wait_leak_ready()
    run, report = recover(report_dir, p3_db_restart_app="always")
    assert run.rc == 0, run.stdout[-3000:]
    st = lab_status()
    assert st["app"]["healthy"] is True
    assert st["services"]["app"]["pid"] not in (None, app_pid)
    assert report["actions"]["restart"]["hosts"] == ["p3-lab-app"]
    assert "restarted p3-lab-app" in report["reason"]


def _blackhole():
    """A TCP port that accepts connections into its backlog and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


BAD_INPUT = {
    "malformed dsn": ({"p3_database_url": "postgresql://p3admin:Pw@[broken/p3"}, "invalid dsn"),
    "closed port": ({"p3_database_url": "postgresql://p3admin:x@127.0.0.1:1/p3"}, "127.0.0.1:1: connection refused"),
    "silent host": ({"p3_database_url": "postgresql://p3admin:x@127.0.0.1:{hole}/p3",
                     "p3_db_connect_timeout": 2},
                    "127.0.0.1:{hole}: timed out after 2s"),
    "wrong password": ({"p3_database_url": "postgresql://p3admin:Wr0ngSecret@127.0.0.1:{pg}/p3"},
                       'password authentication failed for user "p3admin"'),
    "negative threshold": ({"p3_db_max_usage_pct": -5}, "p3_db_max_usage_pct must be a number > 0 and <= 100, got -5"),
    "nonsense threshold": ({"p3_db_max_usage_pct": "lots"}, "p3_db_max_usage_pct must be a number"),
    "negative age": ({"p3_db_min_age_seconds": -1}, "p3_db_min_age_seconds must be a number >= 0"),
    "zero cap": ({"p3_db_max_count": 0}, "p3_db_max_count must be an integer >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_cleanly(lab_up, report_dir, case):
    extra, expected = BAD_INPUT[case]
    hole = _blackhole()
    ports = {"hole": hole.getsockname()[1], "pg": pg_info()["port"]}
    extra = dict((k, v.format(**ports) if isinstance(v, str) else v) for k, v in extra.items())
    expected = expected.format(**ports)
    try:
        t0 = time.monotonic()
        run, report = recover(report_dir, **extra)
        elapsed = time.monotonic() - t0
    finally:
        hole.close()
    assert run.rc != 0, run.stdout[-3000:]
    assert elapsed < 60, elapsed  # a hang guard (connect timeouts are 5 s), not a speed check
    assert "Traceback" not in run.stdout
    failed = [ev["event_data"]["res"] for ev in run.events if ev.get("event") == "runner_on_failed"]
    msg = failed[-1]["msg"]
    assert "\n" not in msg and expected in msg, msg
    assert "Wr0ngSecret" not in run.stdout and "Pw@" not in run.stdout
    if case not in ("negative threshold", "nonsense threshold", "negative age", "zero cap"):
        # the database could not be read: the report says why, and nothing was done
        assert report["healthy"] is False and report["reason"] == msg and report["changed"] is False


def test_password_never_printed_at_vvvv(healthy_lab, report_dir):
    lab_fault("db-exhaustion")
    wait_leak_ready()
    run, report = recover(report_dir, verbosity=4)
    assert run.rc == 0 and report["changed"] is True, run.stdout[-3000:]
    for secret in LAB_SECRETS:
        assert secret not in run.stdout, secret
    for path in glob.glob(os.path.join(report_dir, "*.json")):
        with open(path) as f:
            text = f.read()
        for secret in LAB_SECRETS:
            assert secret not in text, (secret, path)
    run, report = recover(report_dir, verbosity=4,
                          p3_database_url="postgresql://p3admin:Sup3rSecretWrong@127.0.0.1:%d/p3" % pg_info()["port"])
    assert run.rc != 0
    assert "Sup3rSecretWrong" not in run.stdout
    assert "Sup3rSecretWrong" not in json.dumps(report)


# -- issue 13 §6: a role at its own CONNECTION LIMIT ------------------------------------------------------------------

HOG_APP = "p3-limit-hog"


def role_backends(role, app=None):
    rows, _ = backends()
    return [r for r in rows.values() if r["user"] == role and (app is None or r["app"] == app)]


def _hog(tries=40):
    """A long query as the app's role; the app's own pool (1 s idle lifetime) may hold a slot for a moment."""
    for _ in range(tries):
        try:
            return LongQuery(HOG_APP)
        except psycopg2.OperationalError as e:
            if "too many connections" not in str(e):
                raise
            time.sleep(0.25)
    raise AssertionError("the app's role never had a free slot")


def test_app_role_at_its_connection_limit_is_named_and_recovered_by_policy(healthy_lab, report_dir):
    """The app's role hits its own CONNECTION LIMIT at ~15 % of max_connections: diagnose must name the limit as the
    root cause (database, not health / restart_app), and recover_database must terminate that role's backends by
    policy so the app connects again."""
    pg = pg_info()
    role = pg["app_user"]
    hogs = []
    with admin() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (HOG_APP,))
        cur.execute("ALTER ROLE %s CONNECTION LIMIT 2" % role)
    conn.close()
    try:
        for _ in range(2):
            hogs.append(_hog())
        assert len(role_backends(role, HOG_APP)) == 2
        with pytest.raises(psycopg2.OperationalError, match="too many connections for role"):
            psycopg2.connect(host="127.0.0.1", port=pg["port"], user=role, password=pg["app_password"],
                             dbname=pg["database"], connect_timeout=3).close()
        rows, max_conn = backends()
        assert len(rows) + 1 < 0.8 * max_conn  # nowhere near max_connections

        diag = run_playbook("diagnose.yml", extravars={"p3_report_dir": report_dir})
        assert diag.rc == 0, diag.stdout[-3000:]
        [path] = glob.glob(os.path.join(report_dir, "diagnose-*.json"))
        with open(path) as f:
            d = json.load(f)
        checks = dict((c["name"], c) for c in d["checks"])
        assert checks["database"]["healthy"] is False, checks["database"]
        assert "role %s at its CONNECTION LIMIT 2 (2/2)" % role in checks["database"]["reason"], checks["database"]
        assert "database" in d["triage"]["root_causes"] and "health" not in d["triage"]["root_causes"], d["triage"]
        assert d["triage"]["scenarios"] == ["p3.recovery.recover_database"], d["triage"]
        assert d["evidence"]["database"]["limited"]["roles"] == [role]

        wait_leak_ready()
        run, report = recover(report_dir)
        assert run.rc == 0, run.stdout[-4000:]
        # real state: the hogs are gone, the role is under its limit, the app connects again
        assert role_backends(role, HOG_APP) == []
        assert health_code() == 200
        assert report["healthy"] is True and report["changed"] is True
        assert "CONNECTION LIMIT" in report["decision"]["why"]
        assert report["decision"]["include_users"] == [role]
        assert sorted(report["actions"]["terminate"]["terminated"]) == sorted(h.pid for h in hogs)
    finally:
        for h in hogs:
            h.close()
        with admin() as conn, conn.cursor() as cur:
            cur.execute("ALTER ROLE %s CONNECTION LIMIT -1" % role)
        conn.close()
