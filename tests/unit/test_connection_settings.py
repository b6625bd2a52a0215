"""Connection settings once (issue 16 §1): role p3.recovery.connection builds the module_defaults of each action
group, the playbooks set them once per play, no role task repeats them, and the TLS options reach the clients."""
import glob
import os
import re

import pytest
import yaml

from ansible_collections.p3.recovery.plugins.module_utils import postgres_client as pc
from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc
from ansible_collections.p3.recovery.plugins.module_utils.ethereum_client import ETHEREUM_ARGUMENT_SPEC
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HTTP_ARGUMENT_SPEC

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GROUPS = {  # action group -> (argument spec of its connection options, doc fragment every module of it extends)
    "redis": (rc.REDIS_ARGUMENT_SPEC, "redis"),
    "postgres": (pc.POSTGRES_ARGUMENT_SPEC, "postgres"),
    "http": (HTTP_ARGUMENT_SPEC, "http_api"),
    "ethereum": (ETHEREUM_ARGUMENT_SPEC, "ethereum"),
}


def load(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return yaml.safe_load(f)


DEFAULTS = load("roles", "connection", "defaults", "main.yml")
SPEC = load("roles", "connection", "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
CONNECTION_OPTIONS = set().union(*(DEFAULTS["p3_%s_module_defaults" % g] for g in GROUPS))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_defaults_are_options_every_module_of_the_group_accepts(group):
    spec, fragment = GROUPS[group]
    mapping = DEFAULTS["p3_%s_module_defaults" % group]
    assert set(mapping) <= set(spec), set(mapping) - set(spec)
    members = load("meta", "runtime.yml")["action_groups"][group]
    assert members
    for module in members:
        with open(os.path.join(ROOT, "plugins", "modules", module + ".py")) as f:
            source = f.read()
        # a module_defaults group passes every option to every module of the group: each must accept them
        assert "- p3.recovery.%s\n" % fragment in source, (group, module)
    # the doc fragment documents exactly the argument spec (ansible-doc shows what the module takes)
    with open(os.path.join(ROOT, "plugins", "doc_fragments", fragment + ".py")) as f:
        doc = yaml.safe_load(re.search(r'DOCUMENTATION = r"""(.*?)"""', f.read(), re.S).group(1))
    assert set(doc["options"]) == set(spec) - set(getattr(spec, "undocumented", ())), group


def test_every_variable_of_the_mappings_is_documented_with_its_default():
    used = set()
    for group in GROUPS:
        for value in DEFAULTS["p3_%s_module_defaults" % group].values():
            used.update(re.findall(r"\b(p3_\w+)", value))
    assert used <= set(SPEC), used - set(SPEC)
    for name, opt in SPEC.items():
        if "default" in opt:
            assert DEFAULTS.get(name) == opt["default"], name
        if name in DEFAULTS and not name.endswith("_module_defaults"):
            assert "default" in opt, name
    for name in ("p3_redis_password", "p3_database_url"):
        assert SPEC[name].get("no_log") is True, name


def _role_calls_modules(role):
    """Whether a role's tasks call a module of the collection (incident_record only publishes a file's content)."""
    for path in glob.glob(os.path.join(ROOT, "roles", role, "tasks", "*.yml")):
        for task in _tasks(load(path)):
            if any(key.startswith("p3.recovery.") for key in task):
                return True
    return False


def test_every_role_depends_on_the_connection_role():
    roles = [os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "roles", "*", "tasks"))]
    assert len(roles) > 5
    for role in roles:
        if role == "connection" or not _role_calls_modules(role):
            continue
        meta = load("roles", role, "meta", "main.yml")
        assert {"role": "p3.recovery.connection"} in meta["dependencies"], role


def _tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from _tasks(node[key])


def test_no_role_task_repeats_the_connection_options():
    """No p3.recovery task passes a connection option from the variable the module_defaults take it from (or from
    a per-role timeout): role-specific values (a restart's own headers, one computed URL) stay."""
    shared = {}
    for group in GROUPS:
        for option, value in DEFAULTS["p3_%s_module_defaults" % group].items():
            shared.setdefault(option, set()).update(re.findall(r"\b(p3_\w+)", value))
    offenders = []
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "tasks", "*.yml")):
        for task in _tasks(load(path)):
            for key, args in task.items():
                if not (key.startswith("p3.recovery.") and isinstance(args, dict)):
                    continue
                for option in set(args) & set(shared):
                    names = set(re.findall(r"\b(p3_\w+)", str(args[option])))
                    if names & shared[option] or (option.endswith("timeout") and option != "timeout"):
                        offenders.append((os.path.relpath(path, ROOT), task.get("name"), option))
    assert not offenders, offenders


def test_every_play_that_runs_a_role_sets_the_connection_once():
    expected = dict(("group/p3.recovery.%s" % g, "{{ p3_%s_module_defaults }}" % g) for g in GROUPS)
    plays = 0
    for path in glob.glob(os.path.join(ROOT, "playbooks", "*.yml")):
        for play in load(path):
            text = yaml.safe_dump(play)
            if "import_playbook" in play or not ("roles" in play or "p3.recovery." in text):
                continue
            # roles: and the roles its tasks import / include (every play's rescue includes incident_record)
            names = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
            names += re.findall(r"\bname: (p3\.recovery\.\w+)", text)
            if not names:
                continue  # tasks of its own only (recover_all's app stage passes its options itself)
            if names and not any(_role_calls_modules(n.split(".")[-1]) for n in names):
                continue  # roles that call no module of the collection (incident_record)
            plays += 1
            assert play.get("module_defaults") == expected, (path, play["name"])
    assert plays >= 15


def _settings(**params):
    base = dict(redis_nodes=["127.0.0.1:7000"], redis_tls=False, redis_validate_certs=True)
    base.update(params)
    return rc.resolve_redis_settings(base)


def test_redis_tls_options_reach_the_client():
    assert rc.tls_kwargs(_settings()) == {}
    kw = rc.tls_kwargs(_settings(redis_tls=True, redis_ca_cert="/ca.pem", redis_client_cert="/c.pem",
                                 redis_client_key="/k.pem"))
    assert kw == dict(ssl=True, ssl_ca_certs="/ca.pem", ssl_cert_reqs="required", ssl_check_hostname=True,
                      ssl_certfile="/c.pem", ssl_keyfile="/k.pem")
    kw = rc.tls_kwargs(_settings(redis_url="rediss://h:1", redis_nodes=None, redis_validate_certs=False))
    assert kw["ssl"] is True and kw["ssl_cert_reqs"] == "none" and kw["ssl_check_hostname"] is False
    assert "ssl_certfile" not in kw
    client = rc.node_client(_settings(redis_tls=True, redis_ca_cert="/ca.pem"), "127.0.0.1", 7000)
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_postgres_ssl_options_reach_libpq():
    info = pc.build_conninfo(dict(db_sslmode="verify-full", db_sslrootcert="/ca.pem", db_sslcert="/c.pem",
                                  db_sslkey="/k.pem", connect_timeout=5),
                             {"host": "db", "sslmode": "disable", "sslrootcert": "/other.pem"})
    assert (info["sslmode"], info["sslrootcert"], info["sslcert"], info["sslkey"]) == (
        "verify-full", "/ca.pem", "/c.pem", "/k.pem")
    # unset options leave the DSN's own
    info = pc.build_conninfo(dict(db_sslrootcert=None, connect_timeout=5), {"host": "db", "sslrootcert": "/dsn.pem"})
    assert info["sslrootcert"] == "/dsn.pem" and "sslcert" not in info


REMOVED_HTTP_TIMEOUTS = ("p3_probe_timeout", "p3_session_timeout", "p3_anchor_timeout", "p3_mesh_timeout",
                         "p3_drift_timeout")


def test_one_http_timeout_name_and_the_ca_reach_the_http_group():
    http = DEFAULTS["p3_http_module_defaults"]
    assert http["timeout"] == "{{ p3_http_timeout }}" and DEFAULTS["p3_http_timeout"] == 5
    assert http["ca_path"] == "{{ p3_http_ca_path | default(omit, true) }}"
    assert SPEC["p3_http_ca_path"]["type"] == "path"
    text = ""
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "*", "*.yml")) + glob.glob(os.path.join(ROOT, "playbooks", "*.yml")):
        if os.sep + "connection" + os.sep not in path:
            with open(path) as f:
                text += f.read()
    for name in REMOVED_HTTP_TIMEOUTS:
        assert name not in text, name


def test_a_removed_timeout_name_fails_the_run_in_one_line(tmp_path):
    import subprocess
    import sys

    play = tmp_path / "play.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n    - p3.recovery.connection\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), P3_INCIDENT_DIR=str(tmp_path),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".state", "unit-path"))
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=" + sys.executable, str(play)]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stdout[-2000:]
    bad = subprocess.run(cmd + ["-e", "p3_mesh_timeout=3", "-e", "p3_probe_timeout=2"], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode != 0
    line = [ln for ln in bad.stdout.splitlines() if "no longer read" in ln]
    assert line and "p3_mesh_timeout, p3_probe_timeout are no longer read: set p3_http_timeout" in line[0], bad.stdout
