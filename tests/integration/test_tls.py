"""TLS end to end (issue 16 §1): the shipped playbooks reach a TLS-only Redis Cluster and an SSL-only PostgreSQL
with certificate validation on, using only the connection variables of role p3.recovery.connection; a wrong CA
fails cleanly (one line naming the node and the cause); secrets stay out of the output at -vvv.

The small TLS lab (`p3lab tls-up`, lab/p3lablib/tls.py) runs beside the default lab on P3LAB_BASE_PORT + 600:
Redis with `port 0` (no plain TCP at all), PostgreSQL with `hostssl` only (a plain connection is rejected), so a
run that works has used TLS.
"""
import json
import os
import signal

import psycopg2
import pytest
import redis
import yaml

from p3harness import LAB_SECRETS_HINT, PY, lab, latest_report, run_playbook

GUARD = 240


@pytest.fixture(scope="module")
def tls_lab():
    info = json.loads([line for line in lab("tls-up", timeout=240).splitlines() if line.startswith("{")][-1])
    yield info
    if os.environ.get("P3_KEEP_LAB") != "1":
        lab("tls-down", check=False, timeout=120)


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": PY}}}}))
    return str(path)


def tls_vars(info, tmp_path, ca=None, **extra):
    """The connection variables of a TLS deployment (as an inventory would hold them), for -e @file."""
    ca = ca or info["ca_cert"]
    v = dict(
        p3_redis_nodes=info["redis_nodes"][:2],
        p3_redis_password=info["redis_password"],
        p3_redis_tls=True,
        p3_redis_ca_cert=ca,
        p3_redis_validate_certs=True,
        p3_database_url=info["database_url"],
        p3_db_sslmode="verify-full",
        p3_db_sslrootcert=ca,
        p3_report_dir=str(tmp_path / "reports"),
        p3_diag_probes=["postgres", "redis"],
    )
    v.update(extra)
    path = tmp_path / "vars.json"
    path.write_text(json.dumps(v))
    return str(path)


def tls_client(info, addr, timeout=2):
    host, port = addr.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), password=info["redis_password"], ssl=True,
                       ssl_ca_certs=info["ca_cert"], ssl_cert_reqs="required", socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


def serving_masters(view):
    """host:port of the masters that serve slots and are not flagged fail, from redis-py's CLUSTER NODES."""
    out = set()
    for addr, n in view.items():
        flags = set(n["flags"].split(","))
        if "master" in flags and n["slots"] and not flags & {"fail", "fail?"}:
            out.add(addr.split("@")[0])
    return out


def checks(report):
    return dict((c["name"], c) for c in report["checks"])


def test_the_tls_lab_refuses_plain_connections(tls_lab):
    """What makes the tests below meaningful: no plain TCP Redis, no non-SSL PostgreSQL."""
    host, port = tls_lab["redis_nodes"][0].rsplit(":", 1)
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(host=host, port=int(port), password=tls_lab["redis_password"], socket_timeout=2,
                    socket_connect_timeout=2).ping()
    with pytest.raises(psycopg2.OperationalError, match="no encryption|SSL off"):
        psycopg2.connect(tls_lab["database_url"], sslmode="disable", connect_timeout=3)
    assert tls_client(tls_lab, tls_lab["redis_nodes"][0]).cluster("info")["cluster_state"] == "ok"


def test_diagnose_over_tls_with_certificate_validation(tls_lab, tmp_path, inventory):
    # with client certificates too (the lab verifies a presented one against its CA: tls-auth-clients optional)
    extravars = tls_vars(tls_lab, tmp_path, p3_redis_client_cert=tls_lab["client_cert"],
                         p3_redis_client_key=tls_lab["client_key"], p3_db_sslcert=tls_lab["client_cert"],
                         p3_db_sslkey=tls_lab["client_key"])
    run = run_playbook("diagnose.yml", inventory=inventory, extravars_file=extravars, verbosity=3, timeout=GUARD)
    assert run.rc == 0, run.stdout[-3000:]
    report = latest_report(str(tmp_path / "reports"), "diagnose")
    c = checks(report)
    assert c["redis"]["healthy"] is True, c["redis"]
    assert c["database"]["healthy"] is True, c["database"]
    # every node was reached (the seeds named two of the six; the rest were found over TLS too)
    assert "6 nodes reachable" in c["redis"]["reason"], c["redis"]
    # the PostgreSQL connection of the probe really was an SSL one: the server says so
    conn = psycopg2.connect(tls_lab["database_url"], sslmode="verify-full", sslrootcert=tls_lab["ca_cert"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.backend_type = 'client backend'")
        all_ssl, count = cur.fetchone()
    conn.close()
    assert all_ssl is True and count >= 1
    for secret in LAB_SECRETS_HINT:
        assert secret not in run.stdout and secret not in json.dumps(run.events)


def test_a_wrong_ca_fails_in_one_line_naming_the_target(tls_lab, tmp_path, inventory):
    extravars = tls_vars(tls_lab, tmp_path, ca=tls_lab["other_ca_cert"], p3_fail_on_unhealthy=True)
    run = run_playbook("diagnose.yml", inventory=inventory, extravars_file=extravars, verbosity=3, timeout=GUARD)
    assert run.rc != 0, run.stdout[-3000:]
    assert "Traceback" not in run.stdout
    c = checks(latest_report(str(tmp_path / "reports"), "diagnose"))
    for name in ("redis", "database"):
        reason = c[name]["reason"]
        assert c[name]["healthy"] is False and "\n" not in reason, c[name]
        assert "certificate verification failed" in reason, reason
    assert tls_lab["redis_nodes"][0] in c["redis"]["reason"]
    assert "127.0.0.1:%d" % tls_lab["pg_port"] in c["database"]["reason"]

    # a recovery playbook: failed:true, one line, naming the nodes and the cause
    run = run_playbook("recover_redis.yml", inventory=inventory, extravars_file=extravars, timeout=GUARD)
    assert run.rc != 0 and "Traceback" not in run.stdout
    failed = [e["event_data"]["res"]["msg"] for e in run.events
              if e.get("event") == "runner_on_failed" and "msg" in e["event_data"].get("res", {})]
    assert failed, run.stdout[-3000:]
    assert "\n" not in failed[0] and tls_lab["redis_nodes"][0] in failed[0], failed[0]
    assert "certificate verification failed" in failed[0], failed[0]
    for secret in LAB_SECRETS_HINT:
        assert secret not in run.stdout and secret not in json.dumps(run.events)


def test_recover_redis_fails_over_a_killed_master_over_tls(tls_lab, tmp_path, inventory):
    # the lab is whole before (a previous run of this test restarted its victim)
    lab("tls-up", timeout=240)
    view = tls_client(tls_lab, tls_lab["redis_nodes"][0]).cluster("nodes")
    masters = sorted(serving_masters(view))
    assert len(masters) == 3, view
    victim = masters[-1]
    with open(tls_lab["redis_pidfiles"][victim]) as f:
        os.kill(int(f.read().strip()), signal.SIGKILL)
    try:
        seeds = [n for n in tls_lab["redis_nodes"] if n != victim][:2]
        run = run_playbook("recover_redis.yml", inventory=inventory, timeout=GUARD, extravars_file=tls_vars(
            tls_lab, tmp_path, p3_redis_nodes=seeds, p3_redis_confirm_timeout=30, p3_redis_wait_timeout=30))
        assert run.rc == 0, run.stdout[-3000:]
        # real state, read over TLS: every slot served again, by a master that is not the victim
        survivor = tls_client(tls_lab, seeds[0])
        assert survivor.cluster("info")["cluster_state"] == "ok"
        view = survivor.cluster("nodes")
        owners = serving_masters(view)
        assert victim not in owners and len(owners) == 3, view
        report = latest_report(str(tmp_path / "reports"), "recover_redis")
        assert report and run.changed, run.stdout[-3000:]
    finally:
        # the victim comes back and rejoins as a replica (tls-up restarts it and waits for 3 linked replicas)
        lab("tls-up", timeout=240)


def test_the_app_over_https_with_a_private_ca(lab_up, tls_lab, tmp_path, inventory):
    """The lab's app behind HTTPS signed by the private CA (HAProxy TLS termination of the TLS lab): with
    p3_http_ca_path (role p3.recovery.connection) the app probe validates the certificate and succeeds; with a wrong
    CA it fails in one line naming the URL and the cause."""
    import ssl
    import urllib.request

    url = tls_lab["app_https_url"]
    # the front really is TLS signed by the private CA (checked without the collection)
    ctx = ssl.create_default_context(cafile=tls_lab["ca_cert"])
    assert urllib.request.urlopen(url + "/health", timeout=5, context=ctx).status == 200

    def diagnose(ca):
        extra = tls_vars(tls_lab, tmp_path, p3_app_url=url, p3_http_ca_path=ca, p3_validate_certs=True,
                         p3_diag_probes=["app"], p3_fail_on_unhealthy=True)
        return run_playbook("diagnose.yml", inventory=inventory, extravars_file=extra, timeout=GUARD)

    run = diagnose(tls_lab["ca_cert"])
    assert run.rc == 0, run.stdout[-3000:]
    app = checks(latest_report(str(tmp_path / "reports"), "diagnose"))["health"]
    assert app["healthy"] is True, app

    run = diagnose(tls_lab["other_ca_cert"])
    assert run.rc != 0 and "Traceback" not in run.stdout, run.stdout[-3000:]
    app = checks(latest_report(str(tmp_path / "reports"), "diagnose"))["health"]
    reason = app["reason"]
    assert app["healthy"] is False and "\n" not in reason, app
    assert "certificate verification failed" in reason and url.split("//")[1] in reason, reason
