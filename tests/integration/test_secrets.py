"""Secrets are masked on every path (issue 14 §1).

Every module (and the diagnose playbook) runs at -vvv with unique random secrets in URLs, DSNs (one with an
unencoded @ and a space in the password), redis_nodes entries and Authorization headers, for four cases:
success (the secret is the real one: a Redis ACL user and a PostgreSQL role created with it), bad input,
unreachable, wrong credentials. Everything written - the run's output, its job events (what AWX stores),
the incident logs and postmortems, reports and backups - is searched for each secret, its URL-encoded forms
and its halves. The secrets come from a -e @file, as the README says secrets should.
"""
import glob
import json
import os
import uuid
from urllib.parse import quote

import psycopg2
import pytest
import redis
import yaml

from p3harness import INVENTORY, run_playbook

UNREACHABLE_PORT = int(os.environ.get("P3LAB_BASE_PORT", "17000")) + 93  # nothing listens there
GUARD = 240


def secret(tag):
    # the '/' makes the URL-encoded form (written into the URLs) differ from the raw one; both are searched
    h = uuid.uuid4().hex
    return "s3cr3t-%s-%s/%s" % (tag, h[:16], h[16:])


def q(value):
    return quote(value, safe="")


def lab_vars():
    with open(INVENTORY) as f:
        return yaml.safe_load(f)["all"]["vars"]


def forms(value):
    half = len(value) // 2
    return {value, quote(value, safe=""), quote(value), value[:half], value[half:]}


@pytest.fixture(scope="module")
def creds(lab_up):
    """A Redis ACL user on every node and a PostgreSQL superuser role, each with a random password."""
    v = lab_vars()
    user = "p3sec%s" % uuid.uuid4().hex[:8]
    c = dict(user=user, redis_pw=secret("redis"), pg_pw=secret("pg"), pg_weird="W@ s-" + secret("pgw"),
             http_token=secret("http"), http_pw=secret("httpurl"), rpc_pw=secret("rpc"), wrong=secret("wrong"),
             unreach=secret("unreach"), bad=secret("bad"), env_pw=secret("envvalue"), key=secret("fundkey"))
    nodes = v["p3_redis_nodes"]
    for node in nodes:
        host, port = node.rsplit(":", 1)
        r = redis.Redis(host=host, port=int(port), password=v["p3_redis_password"], socket_timeout=5)
        r.execute_command("ACL", "SETUSER", user, "on", ">" + c["redis_pw"], "~*", "&*", "+@all")
        r.close()
    admin = psycopg2.connect(v["p3_database_url"])
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("CREATE ROLE %s LOGIN SUPERUSER PASSWORD %%s" % user, (c["pg_pw"],))
    cur.execute("CREATE ROLE %s_w LOGIN SUPERUSER PASSWORD %%s" % user, (c["pg_weird"],))
    yield c
    cur.execute("DROP ROLE IF EXISTS %s" % user)
    cur.execute("DROP ROLE IF EXISTS %s_w" % user)
    admin.close()
    for node in nodes:
        host, port = node.rsplit(":", 1)
        r = redis.Redis(host=host, port=int(port), password=v["p3_redis_password"], socket_timeout=5)
        r.execute_command("ACL", "DELUSER", user)
        r.close()


def case_vars(case, c):
    """The connection values of one case (what goes into the -e @file)."""
    v = lab_vars()
    pg = urlsplit_port(v["p3_database_url"])
    rpc = urlsplit_port(v["p3_rpc_url"])
    app = urlsplit_port(v["p3_app_url"])
    nodes = v["p3_redis_nodes"]
    redis_pw = dict(success=c["redis_pw"], bad=c["redis_pw"], wrong=c["wrong"], unreachable=c["unreach"])[case]
    pg_pw = dict(success=c["pg_pw"], bad=c["bad"], wrong=c["wrong"], unreachable=c["unreach"])[case]
    other = dict(success=c["http_pw"], bad=c["bad"], wrong=c["wrong"], unreachable=c["unreach"])[case]
    if case == "unreachable":
        nodes = ["127.0.0.1:%d" % UNREACHABLE_PORT]
        pg = rpc = app = UNREACHABLE_PORT
    first = nodes[0]
    return dict(
        sec_redis_url="redis://%s:%s@%s" % (c["user"], q(redis_pw), first),
        sec_redis_nodes=["redis://%s:%s@%s" % (c["user"], q(redis_pw), n) for n in nodes],
        sec_dsn="postgresql://%s:%s@127.0.0.1:%d/p3" % (c["user"], q(pg_pw), pg),
        # keyword form, unencoded @ and an unquoted space in the password: malformed on purpose except success
        sec_dsn_kw=("host=127.0.0.1 port=%d dbname=p3 user=%s_w password='%s'" % (pg, c["user"], c["pg_weird"])
                    if case == "success" else
                    "host=127.0.0.1 port=%d dbname=p3 user=%s_w password=%s" % (pg, c["user"], c["pg_weird"])),
        sec_url="http://u:%s@127.0.0.1:%d" % (q(other), app),
        sec_headers={"Authorization": "Bearer %s" % (c["http_token"] if case == "success" else other)},
        sec_rpc_url="http://u:%s@127.0.0.1:%d" % (q(c["rpc_pw"] if case == "success" else other), rpc),
        sec_chain_id=v["p3_chain_id"],
        sec_wallet=v["p3_anchor_wallet"] if case != "bad" else "0xnot-an-address",
        sec_key="0x" + uuid.uuid4().hex * 2 if case != "bad" else c["key"],
        sec_env_value="postgresql://p3app:%s@127.0.0.1:5432/p3" % q(c["env_pw"]),
        sec_timeout=1 if case != "bad" else "not-a-number",
    )


def urlsplit_port(url):
    from urllib.parse import urlsplit
    return urlsplit(url).port


REDIS = dict(redis_url="{{ sec_redis_url }}", redis_connect_timeout="{{ sec_timeout }}",
             redis_socket_timeout="{{ sec_timeout }}")
NODES = dict(redis_nodes="{{ sec_redis_nodes }}", redis_connect_timeout="{{ sec_timeout }}",
             redis_socket_timeout="{{ sec_timeout }}")
PG = dict(dsn="{{ sec_dsn }}", connect_timeout="{{ sec_timeout }}")
PG_KW = dict(dsn="{{ sec_dsn_kw }}", connect_timeout="{{ sec_timeout }}")
HTTP = dict(url="{{ sec_url }}", headers="{{ sec_headers }}", timeout="{{ sec_timeout }}")
RPC = dict(rpc_url="{{ sec_rpc_url }}", rpc_timeout="{{ sec_timeout }}")

# (task name, module, args, check mode, must succeed in the success case)
MODULES = [
    ("redis_probe url", "redis_probe", REDIS, False, True),
    ("redis_probe nodes", "redis_probe", NODES, False, True),
    ("topology", "redis_cluster_topology", NODES, False, True),
    ("cluster node", "redis_cluster_node", NODES, True, False),
    ("failover", "redis_cluster_failover", NODES, True, False),
    ("slots", "redis_cluster_slots", NODES, True, False),
    ("census", "session_census", NODES, False, True),
    ("purge all without allow_all", "session_purge", dict(NODES, mode="all"), True, False),
    ("restore", "session_restore", dict(NODES, path="/nonexistent/p3-backup.jsonl"), True, False),
    ("bullmq probe", "bullmq_probe", dict(NODES, queue="anchor", prefix="{bull}"), False, True),
    ("bullmq retry max_jobs 0", "bullmq_retry", dict(NODES, queue="anchor", prefix="{bull}", max_jobs=0), True,
     False),
    ("pubsub", "mesh_pubsub_probe", NODES, False, True),
    ("publish", "mesh_publish", NODES, True, False),
    ("postgres probe", "postgres_probe", PG, False, True),
    ("postgres probe keyword dsn", "postgres_probe", PG_KW, False, True),
    ("activity", "postgres_activity", PG, False, True),
    ("terminate", "postgres_terminate", PG, True, False),
    ("outbox", "outbox_probe", PG, False, True),
    ("reconcile", "outbox_reconcile", PG, True, False),
    ("app", "app_probe", HTTP, False, True),
    ("metrics", "metrics_probe", HTTP, False, True),
    ("mesh peers", "mesh_peers_probe", HTTP, False, True),
    ("auth", "session_auth_probe", HTTP, False, False),
    ("handshake", "session_handshake_probe", HTTP, False, False),
    ("chain", "chain_probe", dict(RPC, wallet="{{ sec_wallet }}", expected_chain_id="{{ sec_chain_id }}"), False,
     True),
    ("fund", "wallet_fund", dict(RPC, wallet="{{ sec_wallet }}", funding_key="{{ sec_key }}",
                                 expected_chain_id="{{ sec_chain_id }}"), True, False),
    ("lock redis", "recovery_lock", dict(NODES, resource="secrets-test", store="redis", state="query"), False, True),
    ("lock postgres", "recovery_lock", dict(PG, resource="secrets-test", store="postgres", state="query"), False,
     True),
    ("quick", "quick_diagnostics", dict(HTTP, dsn="{{ sec_dsn }}", redis_nodes="{{ sec_redis_nodes }}",
                                        connect_timeout="{{ sec_timeout }}"), False, True),
]


def module_play(tmp_path):
    conf = tmp_path / "supervisor.conf"
    conf.write_text('[program:p3app]\ncommand=/bin/true\nenvironment=OTHER="keep"\n')
    tasks = []
    for name, module, args, check, dummy in MODULES:
        task = {"name": name, "p3.recovery." + module: args, "ignore_errors": True}
        if check:
            task["check_mode"] = True
        tasks.append(task)
    tasks.append({"name": "process_env", "ignore_errors": True, "p3.recovery.process_env": dict(
        name="DATABASE_URL", value="{{ sec_env_value }}", supervisor_conf=str(conf), program="p3app",
        apply=False, backup=True)})
    path = tmp_path / "secrets.yml"
    path.write_text(json.dumps([dict(hosts="localhost", gather_facts=False, tasks=tasks)]))
    return str(path)


def everything_written(run, tmp_path):
    """The run's output, its job events, and every file under tmp_path (incidents, reports, backups)."""
    texts = [run.stdout, json.dumps(run.events)]
    for dirpath, dummy, files in os.walk(str(tmp_path)):
        for name in files:
            if name in ("vars.json", "secrets.yml", "supervisor.conf"):
                continue  # the input itself, and the file process_env writes the value into
            with open(os.path.join(dirpath, name), errors="replace") as f:
                texts.append("%s:\n%s" % (os.path.join(dirpath, name), f.read()))
    return "\n".join(texts)


def assert_no_secret(text, c):
    leaks = []
    for key, value in c.items():
        if key == "user":
            continue
        for form in forms(value):
            if form in text:
                i = text.index(form)
                leaks.append("%s (%r): ...%s..." % (key, form, text[max(0, i - 200):i + 60]))
    assert not leaks, "\n\n".join(leaks[:5])


@pytest.mark.parametrize("case", ["success", "bad", "unreachable", "wrong"])
def test_every_module_masks_secrets(creds, tmp_path, case):
    extravars = tmp_path / "vars.json"
    extravars.write_text(json.dumps(case_vars(case, creds)))
    incidents = tmp_path / "incidents"
    run = run_playbook(module_play(tmp_path), extravars_file=str(extravars), verbosity=3, timeout=GUARD,
                       env={"P3_INCIDENT_DIR": str(incidents), "P3_INCIDENT_ID": "secrets-%s" % case})
    assert run.status != "timeout", run.stdout[-3000:]
    assert_no_secret(everything_written(run, tmp_path), creds)
    for name, module, args, check, must_succeed in MODULES:
        res = run.result(name)
        if case == "success" and must_succeed:
            # the credentials (also those inside redis_nodes URLs and a quoted keyword DSN) were used
            assert not run.failed(name), (name, res.get("msg"))
        elif case == "unreachable" or (case == "wrong" and set(args) & {"redis_url", "redis_nodes", "dsn"}):
            # (the lab's app and anvil take any HTTP credentials; Redis and PostgreSQL refuse wrong ones)
            healthy = res.get("healthy")
            assert run.failed(name) or healthy is False, (name, res)
        if run.failed(name):
            assert "\n" not in res.get("msg", "") and "Traceback" not in res.get("msg", ""), (name, res.get("msg"))
    if case != "bad":
        assert not run.failed("process_env"), run.result("process_env")


@pytest.mark.parametrize("playbook,case", [("diagnose.yml", "success"), ("diagnose.yml", "unreachable"),
                                           ("diagnose.yml", "wrong"), ("recover_all.yml", "wrong"),
                                           ("recover_all.yml", "unreachable")])
def test_playbooks_mask_secrets(creds, tmp_path, playbook, case):
    """diagnose, and recover_all in check mode failing on wrong / unreachable credentials: its failed-run
    report and postmortem embed the registered results."""
    cv = case_vars(case, creds)
    extravars = tmp_path / "vars.json"
    extravars.write_text(json.dumps(dict(
        p3_redis_nodes=cv["sec_redis_nodes"], p3_redis_password="", p3_database_url=cv["sec_dsn"],
        p3_app_url=cv["sec_url"], p3_rpc_url=cv["sec_rpc_url"], p3_report_dir=str(tmp_path / "reports"))))
    incidents = tmp_path / "incidents"
    run = run_playbook(playbook, extravars_file=str(extravars), verbosity=3, timeout=GUARD,
                       check=playbook != "diagnose.yml",
                       env={"P3_INCIDENT_DIR": str(incidents), "P3_INCIDENT_ID": "run-%s" % case})
    assert run.status != "timeout", run.stdout[-3000:]
    assert os.path.isdir(str(tmp_path / "reports")), run.stdout[-3000:]
    assert_no_secret(everything_written(run, tmp_path), creds)


@pytest.mark.parametrize("playbook,case", [("diagnose.yml", "success"), ("recover_redis.yml", "wrong")])
def test_connection_variables_mask_secrets(creds, tmp_path, playbook, case):
    """The Redis password as a variable of its own (p3_redis_username / p3_redis_password of role
    p3.recovery.connection), passed once per play through module_defaults: used (success: the ACL user's password
    reaches every node), and masked at -vvv everywhere (wrong: recover_redis fails on it)."""
    v = lab_vars()
    cv = case_vars(case, creds)
    extravars = tmp_path / "vars.json"
    extravars.write_text(json.dumps(dict(
        p3_redis_nodes=v["p3_redis_nodes"], p3_redis_username=creds["user"],
        p3_redis_password=creds["redis_pw"] if case == "success" else creds["wrong"],
        p3_database_url=cv["sec_dsn"], p3_diag_probes=["postgres", "redis"],
        p3_report_dir=str(tmp_path / "reports"))))
    incidents = tmp_path / "incidents"
    run = run_playbook(playbook, extravars_file=str(extravars), verbosity=3, timeout=GUARD, check=case != "success",
                       env={"P3_INCIDENT_DIR": str(incidents), "P3_INCIDENT_ID": "conn-%s" % case})
    assert run.status != "timeout", run.stdout[-3000:]
    assert_no_secret(everything_written(run, tmp_path), creds)
    if case == "success":
        assert run.rc == 0, run.stdout[-3000:]
        report = json.loads(open(sorted(glob.glob(str(tmp_path / "reports" / "diagnose-*.json")))[-1]).read())
        verdicts = dict((c["name"], c["healthy"]) for c in report["checks"])
        assert verdicts["redis"] is True and verdicts["database"] is True, report["checks"]
    else:
        assert run.rc != 0 and "Traceback" not in run.stdout
