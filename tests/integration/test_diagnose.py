"""diagnose.yml against the real lab: healthy, each fault, bad endpoints, secrets, fail_on_unhealthy."""
import glob
import json
import os
import socket
import subprocess
import time

import psycopg2
import pytest

from p3harness import INVENTORY, LAB_DIR, LAB_SECRETS, PY, ROOT, base_env, lab_fault, lab_status, run_playbook

CHECKS = ["health", "database", "redis", "pulse", "metrics"]


def diagnose(report_dir, **extra):
    extravars = {"p3_report_dir": report_dir}
    extravars.update(extra)
    run = run_playbook("diagnose.yml", extravars=extravars)
    reports = sorted(glob.glob(os.path.join(report_dir, "diagnose-*.json")))
    assert reports, "no report written; output:\n%s" % run.stdout[-3000:]
    with open(reports[-1]) as f:
        report = json.load(f)
    return run, report


def by_name(report):
    return dict((c["name"], c) for c in report["checks"])


def test_healthy_lab_is_all_green(healthy_lab, report_dir):
    run, report = diagnose(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    checks = by_name(report)
    assert sorted(checks) == sorted(CHECKS)
    for name in CHECKS:
        assert checks[name]["healthy"] is True, checks[name]
    assert report["healthy"] is True
    assert report["triage"]["severity"] is None
    # the evidence is read from the real services
    st = lab_status()
    assert report["evidence"]["database"]["connections"]["max"] == st["db"]["max_connections"]
    assert report["evidence"]["redis"]["masters"] == st["redis"]["masters"] == 3
    assert report["evidence"]["redis"]["cluster_state"] == st["redis"]["cluster_state"] == "ok"
    # published for AWX
    stats = run.stats["p3_diagnose"]
    assert stats["healthy"] is True and stats["report"].startswith(report_dir)
    # the table names every check
    table = run.result("Show the verdict table")["msg"].splitlines()
    for name in CHECKS:
        assert any(line.startswith(name) and "OK" in line for line in table), table


# fault -> (checks that must turn red, checks that must stay green)
FAULTS = {
    "app-down": (["health", "pulse", "metrics"], ["database", "redis"]),
    "redis-master-down": (["redis"], ["database", "pulse", "metrics"]),
    "db-exhaustion": (["database"], ["redis", "pulse", "metrics"]),
    "mesh-down": (["pulse"], ["health", "database", "redis", "metrics"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_turns_the_right_check_red(healthy_lab, report_dir, fault):
    did = lab_fault(fault)
    red, green = FAULTS[fault]
    run, report = diagnose(report_dir)
    assert run.rc == 0, "diagnose must complete even when the lab is broken:\n" + run.stdout[-3000:]
    checks = by_name(report)
    for name in red:
        assert checks[name]["healthy"] is False, (fault, checks[name])
        assert checks[name]["reason"], checks[name]
    for name in green:
        assert checks[name]["healthy"] is True, (fault, name, checks[name])
    assert report["healthy"] is False
    assert set(red) <= set(report["triage"]["failing"])
    st = lab_status()
    if fault == "app-down":
        assert not st["services"]["app"]["up"]
        assert "refused" in checks["health"]["reason"].lower(), checks["health"]
        assert report["triage"]["scenarios"] == ["p3.recovery.restart_app"]
    elif fault == "redis-master-down":
        killed = did["node"]
        assert killed in checks["redis"]["reason"], (killed, checks["redis"])
        # the app's health endpoint depends on Redis: while the cluster still routes slots to the dead master it is
        # red and names Redis as the cause (Redis's own failover, ~18 s later, would turn it green again)
        assert checks["health"]["healthy"] is True or "redis" in checks["health"]["reason"], checks["health"]
        unreachable = [n["address"] for n in report["evidence"]["redis"]["nodes"] if not n["reachable"]]
        assert unreachable == [killed]
        assert report["triage"]["scenarios"] == ["p3.recovery.recover_redis"]
    elif fault == "db-exhaustion":
        assert "connections" in checks["database"]["reason"], checks["database"]
        assert st["db"]["connections"] >= 0.8 * st["db"]["max_connections"]
        assert checks["health"]["healthy"] is False and "database" in checks["health"]["reason"]
        assert report["triage"]["severity"] == "SEV-1"
        assert report["triage"]["scenarios"] == ["p3.recovery.recover_database"]
    elif fault == "mesh-down":
        assert st["mesh"]["peers"] == 0
        assert "peer" in checks["pulse"]["reason"].lower(), checks["pulse"]
        assert report["triage"]["scenarios"] == ["p3.recovery.recover_mesh"]


def _blackhole():
    """A TCP port that accepts connections into its backlog and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_unreachable_and_wrong_credentials_every_probe_reports(lab_up, report_dir):
    hole = _blackhole()
    port = hole.getsockname()[1]
    try:
        lab_ports = lab_up["services"]
        pg_port = lab_ports["postgres"]["port"]
        redis_ports = [lab_ports["redis%d" % i]["port"] for i in range(1, 7)]
        # every endpoint wrong in a different way: silent port (timeout), wrong password, closed port
        run, report = diagnose(
            report_dir,
            p3_app_url="http://127.0.0.1:%d" % port,
            p3_database_url="postgresql://p3admin:not-the-password@127.0.0.1:%d/p3" % pg_port,
            p3_redis_nodes=["127.0.0.1:%d" % p for p in redis_ports],
            p3_redis_password="not-the-redis-password",
            p3_probe_timeout=2,
        )
    finally:
        hole.close()
    assert run.rc == 0, run.stdout[-3000:]
    assert "Traceback" not in run.stdout
    checks = by_name(report)
    for name in CHECKS:
        assert checks[name]["healthy"] is False, checks[name]
        assert checks[name]["reason"] and "\n" not in checks[name]["reason"]
    assert "timed out" in checks["health"]["reason"].lower() or "timeout" in checks["health"]["reason"].lower()
    assert "password" in checks["database"]["reason"].lower() or "authentication" in checks["database"]["reason"].lower()
    assert "not-the-password" not in json.dumps(report)
    assert "not-the-redis-password" not in json.dumps(report)

    # closed ports everywhere
    run, report = diagnose(
        report_dir,
        p3_app_url="http://127.0.0.1:1",
        p3_database_url="postgresql://p3admin:x@127.0.0.1:1/p3",
        p3_redis_nodes=["127.0.0.1:1"],
        p3_probe_timeout=2,
    )
    assert run.rc == 0 and "Traceback" not in run.stdout
    checks = by_name(report)
    for name in CHECKS:
        assert checks[name]["healthy"] is False
        assert "127.0.0.1:1" in checks[name]["reason"], checks[name]


def test_malformed_input_fails_the_check_not_the_play(lab_up, report_dir):
    run, report = diagnose(report_dir, p3_database_url="postgresql://[broken", p3_app_url="not a url",
                           p3_redis_nodes=["no-port-here"])
    assert run.rc == 0 and "Traceback" not in run.stdout
    checks = by_name(report)
    for name in ("database", "redis", "health", "metrics"):
        assert checks[name]["healthy"] is False and checks[name]["reason"], checks[name]


def test_secrets_never_printed_even_at_vvv(healthy_lab, report_dir):
    run = run_playbook("diagnose.yml", extravars={"p3_report_dir": report_dir}, verbosity=4)
    assert run.rc == 0
    for secret in LAB_SECRETS:
        assert secret not in run.stdout, secret
    for path in glob.glob(os.path.join(report_dir, "*.json")):
        with open(path) as f:
            text = f.read()
        for secret in LAB_SECRETS:
            assert secret not in text
    run = run_playbook("diagnose.yml", verbosity=4, extravars={
        "p3_report_dir": report_dir,
        "p3_database_url": "postgresql://p3admin:Sup3rSecretWrong@127.0.0.1:%d/p3" % healthy_lab["services"]["postgres"]["port"],
        "p3_redis_password": "R3disSecretWrong"})
    assert "Sup3rSecretWrong" not in run.stdout and "R3disSecretWrong" not in run.stdout


def test_fail_on_unhealthy(healthy_lab, report_dir):
    run, report = diagnose(report_dir, p3_fail_on_unhealthy=True)
    assert run.rc == 0 and report["healthy"] is True
    lab_fault("mesh-down")
    run = run_playbook("diagnose.yml", extravars={"p3_report_dir": report_dir, "p3_fail_on_unhealthy": True})
    assert run.rc != 0
    assert "pulse" in run.result("Fail when asked to and something is unhealthy")["msg"]


def test_check_mode_still_reports(healthy_lab, report_dir):
    run = run_playbook("diagnose.yml", extravars={"p3_report_dir": report_dir}, check=True)
    assert run.rc == 0
    assert glob.glob(os.path.join(report_dir, "diagnose-*.json"))
    # a probe never changes anything, also outside check mode
    assert not any(run.changed.values()), run.changed


def test_built_collection_installs_and_runs(healthy_lab, tmp_path):
    env = base_env()
    env.pop("ANSIBLE_CONFIG")
    dist = tmp_path / "dist"
    colls = tmp_path / "collections"
    subprocess.run([os.path.join(os.path.dirname(PY), "ansible-galaxy"), "collection", "build", "--output-path", str(dist), ROOT],
                   check=True, capture_output=True, env=env, cwd=str(tmp_path))
    tarballs = list(dist.glob("p3-recovery-*.tar.gz"))
    assert len(tarballs) == 1
    subprocess.run([os.path.join(os.path.dirname(PY), "ansible-galaxy"), "collection", "install", "-p", str(colls), str(tarballs[0])],
                   check=True, capture_output=True, env=env, cwd=str(tmp_path))
    assert (colls / "ansible_collections" / "p3" / "recovery" / "playbooks" / "diagnose.yml").exists()
    assert not (colls / "ansible_collections" / "p3" / "recovery" / "lab").exists()
    env["ANSIBLE_COLLECTIONS_PATH"] = str(colls)
    reports = tmp_path / "reports"
    proc = subprocess.run([os.path.join(os.path.dirname(PY), "ansible-playbook"), "-i", INVENTORY, "p3.recovery.diagnose",
                           "-e", "p3_report_dir=%s" % reports], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads(open(sorted(reports.glob("diagnose-*.json"))[-1]).read())
    assert report["healthy"] is True


QUICK_PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/p3.recovery.http:
      url: "{{ p3_app_url }}"
      timeout: 3
    group/p3.recovery.postgres:
      dsn: "{{ qd_dsn | default(p3_database_url) }}"
    group/p3.recovery.redis:
      redis_nodes: "{{ p3_redis_nodes }}"
      redis_password: "{{ p3_redis_password }}"
  tasks:
    - name: quick
      p3.recovery.quick_diagnostics:
        probes: "{{ qd_probes }}"
      register: quick
    - name: report through the module (become, so not in-process)
      p3.recovery.write_report:
        path: "{{ qd_report }}"
        data: "{{ {'healthy': quick.healthy, 'verdicts': quick.verdicts} }}"
      become: true
      become_method: ansible.builtin.su
"""


def test_quick_diagnostics_module_defaults_subset_and_one_bad_input(healthy_lab, tmp_path):
    play = tmp_path / "quick.yml"
    play.write_text(QUICK_PLAY)
    status = lab_status()
    report = str(tmp_path / "quick.json")
    run = run_playbook(str(play), extravars={"qd_probes": ["postgres", "redis", "app"], "qd_report": report})
    assert run.rc == 0, run.stdout[-3000:]
    quick = run.result("quick")
    assert quick["healthy"] is True and quick["changed"] is False
    assert [v["probe"] for v in quick["verdicts"]] == ["postgres", "redis", "app"]
    assert "metrics" not in quick
    # the same evidence the one-probe modules return, read from the real services
    assert quick["postgres"]["connections"]["max"] == status["db"]["max_connections"]
    assert quick["redis"]["masters"] == status["redis"]["masters"] == 3
    assert quick["app"]["pulse"]["peers"] == status["mesh"]["peers"]
    written = run.result("report through the module (become, so not in-process)")
    assert written["path"] == report and "invocation" in written  # the module ran (the in-process path has none)
    with open(report) as f:
        assert json.load(f)["verdicts"] == quick["verdicts"]

    run = run_playbook(str(play), extravars={"qd_probes": ["postgres", "redis", "metrics"], "qd_report": report,
                                             "qd_dsn": "postgresql://[broken"})
    assert run.rc == 0 and "Traceback" not in run.stdout
    quick = run.result("quick")
    assert quick["healthy"] is False
    assert quick["postgres"]["healthy"] is False and quick["postgres"]["error"] is True and quick["postgres"]["reason"]
    assert quick["redis"]["healthy"] is True and quick["metrics"]["healthy"] is True
    assert quick["reason"].startswith("1 of 3 probes unhealthy - postgres: ")


def test_database_at_its_own_connection_limit_is_the_named_root_cause(healthy_lab, report_dir):
    """Issue 13 §6: a database at its own CONNECTION LIMIT (far from max_connections) is red and named; then
    recover_database scopes its terminate to that database and frees it (read back from pg_stat_activity)."""
    with open(os.path.join(LAB_DIR, "lab.json")) as f:
        pg = json.load(f)["postgres"]

    def connect(user, password, dbname, app="p3-test-observer"):
        conn = psycopg2.connect(host="127.0.0.1", port=pg["port"], user=user, password=password, dbname=dbname,
                                connect_timeout=3, application_name=app)
        conn.autocommit = True
        return conn

    admin = connect(pg["admin_user"], pg["admin_password"], pg["database"])
    cur = admin.cursor()
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'p3limitdb'")
    cur.execute("DROP DATABASE IF EXISTS p3limitdb")
    cur.execute("CREATE DATABASE p3limitdb CONNECTION LIMIT 2")
    hogs = []
    try:
        for _ in range(2):
            hog = connect(pg["app_user"], pg["app_password"], "p3limitdb", app="p3-limit-hog")
            hog.cursor().execute("BEGIN")
            hogs.append(hog)
        with pytest.raises(psycopg2.OperationalError, match="too many connections for database"):
            connect(pg["app_user"], pg["app_password"], "p3limitdb").close()

        run, report = diagnose(report_dir)
        assert run.rc == 0, run.stdout[-3000:]
        db = by_name(report)["database"]
        assert db["healthy"] is False
        assert "database p3limitdb at its CONNECTION LIMIT 2 (2/2)" in db["reason"], db
        assert report["triage"]["root_causes"] == ["database"]
        assert report["triage"]["scenarios"] == ["p3.recovery.recover_database"]

        time.sleep(1.2)
        rec = run_playbook("recover_database.yml", extravars={
            "p3_report_dir": report_dir, "p3_db_min_age_seconds": 1, "p3_db_states": ["idle in transaction"]})
        assert rec.rc == 0, rec.stdout[-3000:]
        [path] = glob.glob(os.path.join(report_dir, "recover_database-*.json"))
        with open(path) as f:
            rep = json.load(f)
        assert rep["decision"]["include_databases"] == ["p3limitdb"] and rep["decision"]["include_users"] == []
        assert rep["changed"] is True and rep["healthy"] is True
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'p3limitdb'")
        assert cur.fetchone()[0] == 0
    finally:
        for h in hogs:
            h.close()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'p3limitdb'")
        cur.execute("DROP DATABASE IF EXISTS p3limitdb")
        admin.close()
