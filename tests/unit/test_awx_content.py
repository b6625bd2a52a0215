"""AWX content as code (awx/), the execution environment and the project's collection requirements.

- the surveys are what scripts/awx_surveys.py generates from the roles' argument specs now (a changed spec without
  regenerated surveys fails here, i.e. in make test);
- the credential types: every secret field is secret, injectors reference only declared inputs;
- the recover_all workflow: no acting node is reachable without an approval node right before it, each approval
  preceded by its stage's dry run (job_type check);
- ansible-builder create produces a build context from execution-environment.yml; collections/requirements.yml
  installs the collection (and only its shippable files) the way a project sync does.
"""
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import jinja2
import jinja2.meta
import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
AWX = os.path.join(ROOT, "awx")
BIN = os.path.dirname(sys.executable)


def _load_script():
    spec = importlib.util.spec_from_file_location("awx_surveys", os.path.join(ROOT, "scripts", "awx_surveys.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


surveys = _load_script()


def _yaml(name):
    with open(os.path.join(AWX, name)) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------------------------------------------
# Surveys

def test_surveys_are_current():
    """The committed surveys are exactly what the script generates from today's argument specs."""
    for rel, text in surveys.expected_files(ROOT).items():
        with open(os.path.join(ROOT, rel)) as f:
            assert f.read() == text, "%s is stale: run scripts/awx_surveys.py" % rel
    assert surveys.main(["--check"]) == 0


def test_check_fails_on_a_changed_spec(tmp_path):
    """A spec changed without regenerating the surveys makes --check fail; regenerating makes it pass again."""
    shutil.copytree(os.path.join(ROOT, "roles"), str(tmp_path / "roles"))
    shutil.copytree(os.path.join(ROOT, "awx"), str(tmp_path / "awx"))
    root = str(tmp_path)
    assert surveys.main(["--check", "--root", root]) == 0
    path = tmp_path / "roles" / "database" / "meta" / "argument_specs.yml"
    spec = yaml.safe_load(path.read_text())
    spec["argument_specs"]["main"]["options"]["p3_db_new_gate"] = {"type": "int", "default": 3, "description": "New."}
    path.write_text(yaml.safe_dump(spec))
    assert surveys.main(["--check", "--root", root]) == 1
    assert surveys.main(["--root", root]) == 0
    assert surveys.main(["--check", "--root", root]) == 0
    regenerated = json.loads((tmp_path / "awx" / "surveys" / "recover_database.json").read_text())
    assert {"variable": "p3_db_new_gate", "type": "integer"}.items() <= next(
        q for q in regenerated["spec"] if q["variable"] == "p3_db_new_gate").items()


def _spec_options(template):
    roles = template.get("roles") or [(template["role"], template["entry"])]
    out = {}
    for role, entry in roles:
        for var, opt in surveys.load_spec(ROOT, role, entry).items():
            out.setdefault(var, opt or {})
    return out


@pytest.mark.parametrize("template", surveys.TEMPLATES, ids=[t["slug"] for t in surveys.TEMPLATES])
def test_survey_questions_follow_the_argument_spec(template):
    with open(os.path.join(AWX, "surveys", template["slug"] + ".json")) as f:
        survey = json.load(f)
    options = _spec_options(template)
    assert survey["spec"], "empty survey for %s" % template["name"]
    types = {"str": {"text", "multiplechoice"}, "int": {"integer", "text"}, "float": {"float"},
             "bool": {"multiplechoice"}, "raw": {"integer", "float", "text", "multiplechoice"},
             "list": {"multiselect"}}
    for q in survey["spec"]:
        var = q["variable"]
        assert var in options, "%s: %s is in no argument spec" % (template["name"], var)
        opt = options[var]
        assert q["type"] in types[opt.get("type", "str")], (var, q["type"], opt.get("type"))
        # a default would be passed as an extra variable and override the inventory's value
        assert "default" not in q, var
        assert var not in surveys.CREDENTIAL_VARS and not opt.get("no_log"), "secret %s in a survey" % var
        if opt.get("choices"):
            assert q["choices"].split("\n") == [str(c) for c in opt["choices"]]
        if opt.get("type") == "bool":
            assert q["choices"] == "true\nfalse"
    # every scalar, non-credential, non-internal option is asked (nothing silently dropped)
    if "include" not in template:
        asked = {q["variable"] for q in survey["spec"]}
        for var, opt in options.items():
            scalar = opt.get("type", "str") not in ("list", "dict") or opt.get("choices")
            if scalar and not surveys.excluded(var, template):
                assert var in asked, "%s: option %s has no question" % (template["name"], var)


def test_every_playbook_has_a_template_with_its_survey():
    templates = {t["name"]: t for t in _yaml("controller_templates.yml")["controller_templates"]}
    playbooks = sorted(p for p in os.listdir(os.path.join(ROOT, "playbooks"))
                       if p.startswith("recover_") or p in ("diagnose.yml", "restart_app.yml", "drift_check.yml"))
    assert sorted(os.path.basename(t["playbook"]) for t in templates.values()) == playbooks
    assert set(templates) == {t["name"] for t in surveys.TEMPLATES}
    for t in surveys.TEMPLATES:
        jt = templates[t["name"]]
        assert os.path.isfile(os.path.join(ROOT, jt["playbook"]))
        assert jt["survey_enabled"] is True
        assert "/surveys/%s.json'" % t["slug"] in jt["survey_spec"], jt["survey_spec"]
        # an extra variable holding a secret would be stored with the job: connection settings come by credential
        assert not set(jt.get("extra_vars") or {}) & surveys.CREDENTIAL_VARS


# --------------------------------------------------------------------------------------------------------------
# Credential types

SECRETISH = re.compile(r"password|passwd|secret|token|key|dsn|url", re.I)


def _referenced(template_text):
    return jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template_text))


def check_credential_type(ctype):
    """Problems of one credential type definition (empty when fine)."""
    problems = []
    fields = ctype["inputs"]["fields"]
    ids = {f["id"] for f in fields}
    for f in fields:
        if SECRETISH.search(f["id"]) and f.get("type", "string") == "string" and not f.get("secret"):
            problems.append("%s: field %s holds a secret but is not secret: true" % (ctype["name"], f["id"]))
    for req in ctype["inputs"].get("required", []):
        if req not in ids:
            problems.append("%s: required %s is no field" % (ctype["name"], req))
    injectors = ctype.get("injectors", {})
    texts = []
    for kind in ("env", "extra_vars", "file"):
        texts += [(kind, k, v) for k, v in (injectors.get(kind) or {}).items()]
    for kind, key, text in texts:
        refs = _referenced(text) - {"tower"}
        for ref in refs - ids:
            problems.append("%s: %s injector %s references undeclared input %s" % (ctype["name"], kind, key, ref))
        if "tower" in _referenced(text) and not injectors.get("file"):
            problems.append("%s: %s uses tower.filename without a file injector" % (ctype["name"], key))
    # the job's environment is stored with the AWX job and written whole into runner's artifacts/<id>/command
    secret_ids = {f["id"] for f in fields if f.get("secret")}
    for key, text in (injectors.get("env") or {}).items():
        if _referenced(text) & secret_ids:
            problems.append("%s: secret injected as environment variable %s" % (ctype["name"], key))
    return problems


def test_credential_types_are_sound():
    ctypes = _yaml("controller_credential_types.yml")["controller_credential_types"]
    assert {c["name"] for c in ctypes} == {"P3 PostgreSQL admin DSN", "P3 Redis", "P3 chain RPC",
                                           "P3 wallet funding key", "P3 incident sink"}
    for ctype in ctypes:
        assert ctype["kind"] == "cloud"
        assert check_credential_type(ctype) == []
    by_name = {c["name"]: c for c in ctypes}
    # what the roles read: their connection variables (secrets) and the modules' environment fallbacks (the rest)
    assert by_name["P3 PostgreSQL admin DSN"]["injectors"] == {"extra_vars": {"p3_database_url": "{{ dsn }}"}}
    redis_env = {"REDIS_CLUSTER_NODES": "{{ nodes }}", "REDIS_USERNAME": "{{ username }}"}
    assert by_name["P3 Redis"]["injectors"]["env"] == redis_env
    assert by_name["P3 Redis"]["injectors"]["extra_vars"]["p3_redis_password"] == "{{ password }}"
    assert set(by_name["P3 chain RPC"]["injectors"]["extra_vars"]) == {"p3_rpc_url", "p3_chain_id",
                                                                       "p3_anchor_wallet"}
    assert by_name["P3 wallet funding key"]["injectors"]["extra_vars"] == {
        "p3_anchor_funding_key": "{{ funding_key }}"}
    # the incident callback's PostgreSQL sink: a secret DSN, as an extra variable only (never the environment)
    sink = by_name["P3 incident sink"]
    assert sink["injectors"] == {"extra_vars": {"p3_incident_database_url": "{{ dsn }}"}}
    assert [f for f in sink["inputs"]["fields"] if f["id"] == "dsn"][0]["secret"] is True
    # every variable a credential injects is one the surveys never ask
    for ctype in ctypes:
        assert set(ctype["injectors"].get("extra_vars", {})) - {"p3_redis_ca_cert"} <= surveys.CREDENTIAL_VARS


def test_credential_type_check_catches_mistakes():
    ctype = copy.deepcopy(_yaml("controller_credential_types.yml")["controller_credential_types"][1])
    ctype["inputs"]["fields"].append({"id": "api_token", "label": "Token", "type": "string"})
    ctype["injectors"]["env"]["REDIS_PASSWORD"] = "{{ passwd }}"
    ctype["injectors"]["env"]["REDIS_AUTH"] = "{{ password }}"
    problems = check_credential_type(ctype)
    assert any("secret injected as environment variable REDIS_AUTH" in p for p in problems), problems
    assert any("field api_token holds a secret" in p for p in problems), problems
    assert any("undeclared input passwd" in p for p in problems), problems


def test_credentials_use_the_types_and_no_literal_secret():
    ctypes = {c["name"]: c for c in _yaml("controller_credential_types.yml")["controller_credential_types"]}
    creds = _yaml("controller_credentials.yml")["controller_credentials"]
    # one credential of every type, and every template carries the incident sink (the record outlives the job)
    assert sorted(c["credential_type"] for c in creds) == sorted(ctypes)
    for jt in _yaml("controller_templates.yml")["controller_templates"]:
        assert "P3 incident sink" in jt["credentials"], jt["name"]
    for cred in creds:
        ctype = ctypes[cred["credential_type"]]
        ids = {f["id"] for f in ctype["inputs"]["fields"]}
        assert set(cred["inputs"]) <= ids
        for f in ctype["inputs"]["fields"]:
            if f.get("secret") and f["id"] in cred["inputs"]:
                assert re.fullmatch(r"\{\{ vault_\w+ \}\}", cred["inputs"][f["id"]]), cred["name"]


# --------------------------------------------------------------------------------------------------------------
# Workflow

ACTING_TEMPLATES = {"P3 recover_database", "P3 recover_redis", "P3 recover_sessions", "P3 recover_mesh",
                    "P3 recover_anchor", "P3 recover_all", "P3 restart_app"}
READ_ONLY_TEMPLATES = {"P3 diagnose", "P3 drift_check"}


def check_workflow(wf, templates):
    """Problems of a workflow definition: every node that may act (a recover / restart template not forced into
    check mode) must have only approval nodes as parents, each approval only the dry run of the same template as
    its parents, and approvals lead on only when approved (success)."""
    problems = []
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    parents = {i: [] for i in nodes}
    for n in nodes.values():
        for kind in ("success_nodes", "failure_nodes", "always_nodes"):
            for child in (n.get("related") or {}).get(kind, []):
                if child["identifier"] not in nodes:
                    problems.append("%s -> unknown node %s" % (n["identifier"], child["identifier"]))
                    continue
                parents[child["identifier"]].append((n["identifier"], kind))

    def ujt(i):
        return nodes[i]["unified_job_template"]

    def is_approval(i):
        return ujt(i).get("type") == "workflow_approval"

    def acts(i):
        u = ujt(i)
        if u.get("type") != "job_template":
            return False
        if u["name"] in READ_ONLY_TEMPLATES:
            return False
        if u["name"] not in ACTING_TEMPLATES:
            problems.append("%s: unknown template %s" % (i, u["name"]))
            return True
        return nodes[i].get("job_type", templates[u["name"]].get("job_type", "run")) != "check"

    roots = [i for i, p in parents.items() if not p]
    if not roots:
        problems.append("no root node")
    for i in nodes:
        if acts(i):
            if not parents[i]:
                problems.append("%s acts and is a root" % i)
            for parent, kind in parents[i]:
                if not is_approval(parent) or kind != "success_nodes":
                    problems.append("%s acts and is reached from %s (%s) without approval" % (i, parent, kind))
        elif ujt(i).get("type") == "job_template" and nodes[i].get("job_type") == "check":
            if not templates[ujt(i)["name"]].get("ask_job_type_on_launch"):
                problems.append("%s: template %s does not prompt for the job type" % (i, ujt(i)["name"]))
        if is_approval(i):
            rel = nodes[i].get("related") or {}
            if rel.get("failure_nodes") or rel.get("always_nodes"):
                problems.append("%s: a denied or timed-out approval leads on" % i)
            if not ujt(i).get("timeout"):
                problems.append("%s: approval without a timeout" % i)
            children = [c["identifier"] for c in rel.get("success_nodes", [])]
            for parent, kind in parents[i]:
                p = ujt(parent)
                if nodes[parent].get("job_type") != "check" or kind != "success_nodes" or not any(
                        ujt(c).get("name") == p.get("name") for c in children):
                    problems.append("%s: not preceded by the dry run of the stage it approves" % i)
            if not parents[i]:
                problems.append("%s: approval without a dry run before it" % i)
        for key in ("extra_data",):
            if nodes[i].get(key) and templates.get(ujt(i).get("name"), {}).get("ask_variables_on_launch") is not True:
                problems.append("%s: extra_data on a template that does not prompt for variables" % i)
    return problems


def _workflow_and_templates():
    wf = _yaml("controller_workflows.yml")["controller_workflows"]
    templates = {t["name"]: t for t in _yaml("controller_templates.yml")["controller_templates"]}
    assert len(wf) == 1
    return wf[0], templates


def test_recover_all_workflow_gates_every_acting_stage():
    wf, templates = _workflow_and_templates()
    assert check_workflow(wf, templates) == []
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    # the runbook's order and every destructive stage the issue names is there, behind its approval
    order = ["database", "redis", "app", "sessions", "mesh", "anchor"]
    for stage in order:
        assert nodes[stage + "_dry_run"]["job_type"] == "check"
        assert nodes[stage + "_approval"]["unified_job_template"]["type"] == "workflow_approval"
        assert nodes[stage + "_run"]["job_type"] == "run"
    chain, node = [], "diagnose"
    while True:
        succ = [c["identifier"] for c in nodes[node].get("related", {}).get("success_nodes", [])]
        fail = [c["identifier"] for c in nodes[node].get("related", {}).get("failure_nodes", [])]
        nxt = fail or succ  # follow the acting path (the app check's failure path)
        if not nxt:
            break
        node = nxt[0]
        chain.append(node)
    assert [c[:-len("_run")] for c in chain if c.endswith("_run") and not c.endswith("_dry_run")] == order
    assert chain[-1] == "final_diagnose"
    assert nodes["final_diagnose"]["extra_data"] == {"p3_fail_on_unhealthy": True}


@pytest.mark.parametrize("mutation", ["shortcut", "failure_path", "approval_denied_leads_on", "no_dry_run"])
def test_workflow_check_catches_ungated_stages(mutation):
    wf, templates = _workflow_and_templates()
    wf = copy.deepcopy(wf)
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    if mutation == "shortcut":  # diagnose straight into the purge
        nodes["diagnose"]["related"]["success_nodes"].append({"identifier": "sessions_run"})
    elif mutation == "failure_path":  # a failed dry run goes on to the real run
        nodes["redis_dry_run"]["related"]["failure_nodes"] = [{"identifier": "redis_run"}]
    elif mutation == "approval_denied_leads_on":
        nodes["anchor_approval"]["related"]["failure_nodes"] = [{"identifier": "anchor_run"}]
    elif mutation == "no_dry_run":  # the approver would approve blind
        nodes["database_dry_run"]["job_type"] = "run"
    assert check_workflow(wf, templates) != []


def test_drift_check_schedule():
    (sched,) = _yaml("controller_schedules.yml")["controller_schedules"]
    assert sched["unified_job_template"] == "P3 drift_check"
    assert re.search(r"RRULE:FREQ=(MINUTELY|HOURLY);INTERVAL=\d+", sched["rrule"])
    assert sched["rrule"].startswith("DTSTART:")


def test_every_referenced_object_is_defined():
    """Templates name the project, EE and credentials defined beside them; the workflow names its templates."""
    project = {p["name"] for p in _yaml("controller_projects.yml")["controller_projects"]}
    ees = {e["name"] for e in _yaml("controller_execution_environments.yml")["controller_execution_environments"]}
    creds = {c["name"] for c in _yaml("controller_credentials.yml")["controller_credentials"]}
    templates = _yaml("controller_templates.yml")["controller_templates"]
    for t in templates:
        assert t["project"] in project and t["execution_environment"] in ees
        assert set(t["credentials"]) <= creds
    names = {t["name"] for t in templates}
    wf = _workflow_and_templates()[0]
    for n in wf["workflow_nodes"]:
        if n["unified_job_template"]["type"] == "job_template":
            assert n["unified_job_template"]["name"] in names


# --------------------------------------------------------------------------------------------------------------
# Execution environment and project sync

def test_ansible_builder_create(tmp_path):
    """ansible-builder create (v3 schema) makes a build context with our Python and system requirements (building
    the image needs podman or docker, which this machine lacks)."""
    ctx = tmp_path / "context"
    with open(os.path.join(ROOT, "execution-environment.yml")) as f:
        assert yaml.safe_load(f)["version"] == 3
    proc = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml",
                           "-c", str(ctx), "-v", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "ansible-core>=2.16,<2.20" in dockerfile and "ansible-runner" in dockerfile
    assert (ctx / "_build" / "requirements.txt").read_text() == open(os.path.join(ROOT, "requirements.txt")).read()
    assert (ctx / "_build" / "bindep.txt").read_text() == open(os.path.join(ROOT, "bindep.txt")).read()
    # the build's own introspection (what the image build runs first) parses both files
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ctx / "_build" / "scripts" / "introspect.py"), "introspect",
                           "--user-pip", str(ctx / "_build" / "requirements.txt"),
                           "--user-bindep", str(ctx / "_build" / "bindep.txt"),
                           "--write-pip", str(out / "pip.txt"), "--write-bindep", str(out / "bindep.txt")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pip = (out / "pip.txt").read_text()
    for dep in ("redis>=", "psycopg2-binary", "web3", "bullmq"):
        assert dep in pip
    assert "git [platform:rpm]" in (out / "bindep.txt").read_text()


def test_bindep_selects_nothing_profiled_for_the_ee():
    """ansible-builder runs bindep without a profile: only the un-profiled rpm lines reach the image."""
    bindep = pytest.importorskip("bindep.depends")
    with open(os.path.join(ROOT, "bindep.txt")) as f:
        deps = bindep.Depends(f.read())
    rpm = deps.active_rules(["default", "platform:rpm", "platform:redhat", "platform:centos"])
    assert sorted(r[0] for r in rpm) == ["git", "postgresql", "redis"]
    dpkg = deps.active_rules(["default", "platform:dpkg", "platform:debian"])
    assert dpkg == []


def test_project_sync_installs_the_collection(tmp_path):
    """What AWX's project update runs in the project checkout: ansible-galaxy collection install -r
    collections/requirements.yml, into a path of its own."""
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "c"),
               HOME=str(tmp_path))
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r",
                           "collections/requirements.yml", "-p", str(tmp_path / "c")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inst = tmp_path / "c" / "ansible_collections" / "p3" / "recovery"
    assert (inst / "MANIFEST.json").is_file()
    assert (inst / "plugins" / "modules" / "quick_diagnostics.py").is_file()
    assert (inst / "roles" / "database" / "meta" / "argument_specs.yml").is_file()
    assert not (inst / "lab").exists()
