"""The playbooks run the way AWX / Automation Controller runs a job template, against the lab under faults.

Each job is an `ansible_runner.run` on a private data dir laid out as AWX lays it out:
- project/: the project checkout (playbooks/, ansible.cfg, collections/requirements.yml), the working directory;
- requirements_collections/: what the project sync installed from collections/requirements.yml (ansible-galaxy
  collection install, once per session), on ANSIBLE_COLLECTIONS_PATHS;
- inventory/hosts: an executable inventory script printing the inventory as JSON (AWX's form), the lab's inventory
  WITHOUT any connection setting: those come only from the credentials;
- env/extravars: the job's extra variables (survey answers, the awx_* / tower_* job variables);
- credentials rendered exactly as awx/controller_credential_types.yml's injectors say, the way AWX renders them
  (a sandboxed Jinja environment over the credential's inputs): env injectors into the job's environment, extra_vars
  injectors into a file of env/ passed as `-e @file`, file injectors into files of env/ (mode 0600) whose path is
  `tower.filename`;
- suppress_env_files (AWX_RUNNER_OMIT_ENV_FILES); runner runs ansible-playbook under its pexpect driver as in AWX,
  with no passwords and no expect answers: nothing is typed, so a prompt would end at the job's timeout.
Then the assertions read runner's artifacts (status, rc, job_events, the stats event's set_stats data), the real state
of the services, and grep every file of the artifacts dir (and the reports) for every secret the credentials
injected.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import jinja2.sandbox
import psycopg2
import pytest
import yaml
from p3harness import (FUNDING_KEY, HANG_GUARD, INVENTORY, PREFIX, ROOT, V, anchor_redis, balance, lab_fault,
                       lab_nodes, lab_status, owner_map, views)

BIN = os.path.dirname(sys.executable)
# the connection settings the credentials provide: never in the job's inventory
CREDENTIAL_VARS = ("p3_database_url", "p3_redis_nodes", "p3_redis_url", "p3_redis_password", "p3_redis_username",
                   "p3_rpc_url", "p3_chain_id", "p3_anchor_wallet", "p3_anchor_funding_key", "p3_app_database_url")
RPC_KEY = "awx-rpc-apikey-3f9c1e"  # an API key in the RPC URL's query, as hosted RPC providers hand them out


def _credential_types():
    with open(os.path.join(ROOT, "awx", "controller_credential_types.yml")) as f:
        return {c["name"]: c for c in yaml.safe_load(f)["controller_credential_types"]}


def render_credential(ctype, inputs, private_data_dir):
    """(env, extra_vars, files) of one credential, rendered as AWX renders a custom credential type's injectors."""
    sandbox = jinja2.sandbox.ImmutableSandboxedEnvironment()
    namespace = {}
    for field in ctype["inputs"]["fields"]:
        default = False if field.get("type") == "boolean" else ""
        namespace[field["id"]] = inputs.get(field["id"], field.get("default", default))
    injectors = ctype.get("injectors") or {}
    files = []
    file_tmpl = injectors.get("file") or {}
    filenames = {}
    for key, tmpl in file_tmpl.items():
        fd, path = tempfile.mkstemp(dir=os.path.join(private_data_dir, "env"))
        with os.fdopen(fd, "w") as f:
            f.write(sandbox.from_string(tmpl).render(**namespace))
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        files.append(path)
        filenames[key.split(".", 1)[1] if "." in key else None] = path
    if filenames:
        namespace["tower"] = {"filename": filenames[None] if list(filenames) == [None] else
                              dict((k, v) for k, v in filenames.items())}
    env = dict((k, sandbox.from_string(v).render(**namespace)) for k, v in (injectors.get("env") or {}).items())
    extra = dict((k, sandbox.from_string(v).render(**namespace))
                 for k, v in (injectors.get("extra_vars") or {}).items())
    return env, extra, files


class Job(object):
    """What an AWX job leaves behind: runner's result and its artifacts dir."""

    def __init__(self, runner, artifacts, report_dir, incident_dir):
        self.rc = runner.rc
        self.status = runner.status
        self.events = list(runner.events)
        self.stdout = runner.stdout.read()
        self.artifacts = artifacts
        self.report_dir = report_dir
        self.incident_dir = incident_dir

    @property
    def stats(self):
        for ev in self.events:
            if ev.get("event") == "playbook_on_stats":
                return ev["event_data"]
        return {}

    def ok(self, task):
        return [ev["event_data"]["res"] for ev in self.events
                if ev.get("event") == "runner_on_ok" and ev["event_data"].get("task") == task]

    def grep(self, secrets, tops=None):
        """(path, secret) of every file under the artifacts dir and the reports that holds a secret."""
        hits = []
        for top in tops or (self.artifacts, self.report_dir, self.incident_dir):
            for d, _dirs, names in os.walk(top):
                for n in names:
                    path = os.path.join(d, n)
                    with open(path, "rb") as f:
                        data = f.read()
                    hits += [(os.path.relpath(path, top), s) for s in secrets if s.encode() in data]
        return hits


@pytest.fixture(scope="module")
def awx(lab_up, tmp_path_factory):
    """A project synced once (the collection installed from collections/requirements.yml, as a project update
    does), and a launcher of jobs."""
    base = tmp_path_factory.mktemp("awx")
    collections = str(base / "requirements_collections")
    cfg = base / "galaxy.cfg"
    cfg.write_text("[defaults]\n")
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r",
                           "collections/requirements.yml", "-p", collections], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, ANSIBLE_CONFIG=str(cfg)))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with open(INVENTORY) as f:
        lab_inv = yaml.safe_load(f)
    ctypes = _credential_types()
    secrets = {
        "dsn": V["p3_database_url"],
        "redis_password": V["p3_redis_password"],
        "rpc_url": V["p3_rpc_url"].rstrip("/") + "/?apikey=" + RPC_KEY,
        "funding_key": FUNDING_KEY,
    }
    credentials = {
        "P3 PostgreSQL admin DSN": {"dsn": secrets["dsn"]},
        "P3 Redis": {"nodes": ",".join(V["p3_redis_nodes"]), "password": secrets["redis_password"]},
        "P3 chain RPC": {"rpc_url": secrets["rpc_url"], "chain_id": str(V["p3_chain_id"]),
                         "anchor_wallet": V["p3_anchor_wallet"]},
        "P3 wallet funding key": {"funding_key": secrets["funding_key"]},
        # the incident record's PostgreSQL sink: the lab's database (a DSN of its own spelling, same password)
        "P3 incident sink": {"dsn": V["p3_database_url"] + ("&" if "?" in V["p3_database_url"] else "?")
                             + "application_name=p3-incident-sink"},
    }
    # what must never show: each secret whole, and its password part alone
    needles = sorted({secrets["dsn"], secrets["redis_password"], RPC_KEY, secrets["funding_key"],
                      secrets["funding_key"][2:], "p3admin-lab-secret",
                      credentials["P3 incident sink"]["dsn"]})
    counter = [1000]
    # the incident directory as a persistent volume of the execution node, shared by the jobs (docs/incidents.md)
    incident_dir = str(base / "incidents")

    def launch(playbook, survey=None, job_type="run", creds=("P3 PostgreSQL admin DSN", "P3 Redis", "P3 chain RPC"),
               template=None):
        counter[0] += 1
        job_id = counter[0]
        pdd = base / ("job%d" % job_id)
        project = pdd / "project"
        (pdd / "env").mkdir(parents=True)
        (pdd / "inventory").mkdir()
        project.mkdir()
        shutil.copytree(os.path.join(ROOT, "playbooks"), str(project / "playbooks"))
        shutil.copytree(os.path.join(ROOT, "collections"), str(project / "collections"))
        shutil.copy(os.path.join(ROOT, "ansible.cfg"), str(project / "ansible.cfg"))
        report_dir = str(pdd / "reports")

        # inventory: the lab's hosts and non-secret settings, no connection setting (AWX's inventory script form)
        inv_vars = dict((k, v) for k, v in lab_inv["all"]["vars"].items() if k not in CREDENTIAL_VARS)
        inv_vars["p3_report_dir"] = report_dir
        hostvars, groups = {}, {}
        for group, body in lab_inv["all"]["children"].items():
            groups[group] = {"hosts": sorted(body["hosts"])}
            hostvars.update(body["hosts"])
        listing = dict(groups, all={"vars": inv_vars, "children": sorted(groups)}, _meta={"hostvars": hostvars})
        script = pdd / "inventory" / "hosts"
        script.write_text("#!%s\nimport json, sys\nprint(json.dumps(%r))\n" % (sys.executable, listing))
        script.chmod(0o700)

        # the job's extra variables: survey answers and AWX's job variables (env/extravars, as AWX writes them)
        extravars = dict(survey or {})
        name = template or "P3 " + playbook[:-len(".yml")]
        for prefix in ("awx", "tower"):
            extravars.update({prefix + "_job_id": job_id, prefix + "_job_template_name": name,
                              prefix + "_user_name": "oncall-alice", prefix + "_job_launch_type": "manual",
                              prefix + "_project_revision": "0" * 40, prefix + "_inventory_name": "P3 lab"})
        (pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars))

        env = {"JOB_ID": str(job_id), "PROJECT_REVISION": "0" * 40, "ANSIBLE_COLLECTIONS_PATHS": collections,
               "ANSIBLE_COLLECTIONS_PATH": collections, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
               "ANSIBLE_NOCOLOR": "1", "P3_INCIDENT_DIR": incident_dir}
        cmdline = []
        for cname in creds:
            cenv, cextra, _files = render_credential(ctypes[cname], credentials[cname], str(pdd))
            env.update(cenv)
            if cextra:
                fd, path = tempfile.mkstemp(dir=str(pdd / "env"))
                with os.fdopen(fd, "w") as f:
                    json.dump(cextra, f)
                cmdline += ["-e", "@" + path]
        if job_type == "check":
            cmdline.append("--check")

        import ansible_runner
        # no passwords / expect answers (AWX gives none for these templates): a prompt would get no answer and
        # the job would end at the hang guard; the hang guard is the job timeout AWX templates carry
        r = ansible_runner.run(
            private_data_dir=str(pdd), playbook=os.path.join("playbooks", playbook),
            inventory=str(script), ident=str(job_id), cmdline=" ".join(cmdline), envvars=env,
            suppress_env_files=True, quiet=True, timeout=HANG_GUARD)
        job = Job(r, str(pdd / "artifacts" / str(job_id)), report_dir, incident_dir)
        job.id, job.template = job_id, name
        job.leaks = job.grep(needles)
        # the same grep finds every injected secret where AWX put it (env/, removed after the job): it can fail
        job.injected = set(s for _p, s in job.grep(needles, tops=[str(pdd / "env")]))
        job.expected = set(n for n in needles if any(n in v for c in creds for v in credentials[c].values()))
        return job

    saved = dict((k, os.environ.pop(k)) for k in list(os.environ) if k in (
        "ANSIBLE_CONFIG", "DATABASE_URL", "REDIS_URL", "REDIS_CLUSTER_NODES", "REDIS_PASSWORD", "REDIS_USERNAME",
        "RPC_URL", "P3_FUNDING_KEY", "P3_INCIDENT_ID"))
    try:
        yield launch
    finally:
        os.environ.update(saved)


def _assert_job(job, status="successful", rc=0):
    assert (job.status, job.rc) == (status, rc), job.stdout[-4000:]
    assert job.leaks == [], "secrets in the artifacts: %s" % job.leaks
    assert job.expected and job.injected == job.expected, (job.injected, job.expected)
    kinds = [ev["event"] for ev in job.events if ev["event"] != "verbose"]
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats", kinds[:3]
    # runner's artifacts: what AWX reads back
    with open(os.path.join(job.artifacts, "rc")) as f:
        assert f.read().strip() == str(rc)
    with open(os.path.join(job.artifacts, "status")) as f:
        assert f.read().strip() == status
    assert len(os.listdir(os.path.join(job.artifacts, "job_events"))) == len(job.events)
    # the incident record survives the job in its artifacts, saying which AWX job, template and user ran it
    record = job.stats["artifact_data"]["p3_incident"]
    who = record["who"]
    assert (who["awx_job_id"], who["awx_job_template_name"], who["awx_user_name"], who["via"]) == (
        str(job.id), job.template, "oncall-alice", "awx"), who
    return record


def test_workflow_stages_as_awx_jobs_under_three_faults(awx, healthy_lab):
    """The jobs of the recover_all workflow (awx/controller_workflows.yml) under three faults at once: diagnose,
    then database -> Redis -> anchor worker, each job with the credentials its
    template carries and the extra variables its workflow node passes."""
    wallet = V["p3_anchor_wallet"]
    empty = lab_fault("wallet-empty")  # first: it needs a working queue to fail its jobs
    did = lab_fault("redis-slots-uncovered")
    lab_fault("db-exhaustion")
    assert balance(wallet) == 0 and len(empty["jobs"]) == 10

    diag = awx("diagnose.yml")
    incident = _assert_job(diag)["incident_id"]
    assert incident
    verdict = diag.stats["artifact_data"]["p3_diagnose"]
    assert verdict["healthy"] is False
    assert verdict["triage"]["scenarios"][:2] == ["p3.recovery.recover_database", "p3.recovery.recover_redis"], \
        verdict["triage"]

    # the database stage (its dry run is recover_database in check mode, tested in test_recover_database.py)
    node_vars = {"p3_db_min_age_seconds": 1, "p3_db_app_check": False}  # survey answer + the node's extra_data
    before = _leak_pids()
    assert before
    run = awx("recover_database.yml", survey=node_vars)
    assert _assert_job(run)["incident_id"] == incident  # one incident, several jobs
    assert run.stats["artifact_data"]["p3_recover_database"]["healthy"] is True
    assert run.stats["changed"].get("localhost", 0) >= 1
    assert not _leak_pids() & before

    # the Redis stage: every node serves every slot again, the deleted range on its old owner
    a, b = did["range"]
    job = awx("recover_redis.yml")
    assert _assert_job(job)["incident_id"] == incident
    assert job.stats["artifact_data"]["p3_recover_redis"]["healthy"] is True
    for addr, view in views(lab_nodes()).items():
        owners = owner_map(view)
        assert len(owners) == 16384, addr
        assert {owners[s] for s in range(a, b + 1)} == {did["owner"]}, addr

    # the anchor stage, with the funding key credential: funded, retried, nothing failed
    job = awx("recover_anchor.yml", creds=("P3 PostgreSQL admin DSN", "P3 Redis", "P3 chain RPC",
                                          "P3 wallet funding key"))
    assert _assert_job(job)["incident_id"] == incident
    stats = job.stats["artifact_data"]["p3_recover_anchor"]
    assert stats["healthy"] is True and stats["retried"] >= 10, stats
    assert balance(wallet) > 0
    assert anchor_redis().zcard(PREFIX + "failed") == 0
    assert lab_status()["app"]["healthy"] is True


def _leak_pids():
    conn = psycopg2.connect(V["p3_database_url"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'p3-lab-leak'")
            return set(r[0] for r in cur.fetchall())
    finally:
        conn.close()


def test_a_failed_job_still_publishes_its_incident_record_and_the_sink_credential_stores_it(awx, healthy_lab):
    """A recover_* job that fails (db-exhaustion under a policy that terminates nothing: the verification fails the
    run) still leaves its incident record in the job's artifacts (set_stats p3_incident in the stats event), saying
    what failed; the P3 incident sink credential (its DSN injected as an extra variable) gets the run's row in
    PostgreSQL; no secret of any credential, the sink's DSN included, is in the artifacts."""
    lab_fault("db-exhaustion")
    job = awx("recover_database.yml", survey={"p3_db_min_age_seconds": 86400, "p3_db_app_check": False,
                                              "p3_db_verify_timeout": 2},
              creds=("P3 PostgreSQL admin DSN", "P3 Redis", "P3 chain RPC", "P3 incident sink"))
    record = _assert_job(job, status="failed", rc=2)
    assert record["failed"] is True and record["state"] == "open" and record["healthy"] is False, record
    # the root cause is the incident's (an open incident of the same target is reused: after the test above it
    # holds that job's faults too), and it says the database is still failing
    assert record["incident_id"] and record["root_cause"].startswith("Broken: "), record["root_cause"]
    assert "not yet restored - still failing: postgres_activity" in record["root_cause"], record["root_cause"]
    assert any(e["status"] == "failed" for e in record["timeline"]), record["timeline"]
    assert record["sinks"]["database"] and "p3admin-lab-secret" not in json.dumps(record)
    # the sink's row of this very run, written with the DSN the credential injected
    conn = psycopg2.connect(V["p3_database_url"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT state, who->>'awx_job_id' FROM p3_incident_runs WHERE run_id = %s", (record["run"],))
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == [("open", str(job.id))], rows
