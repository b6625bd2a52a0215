"""Generate the AWX / Automation Controller job template surveys from the roles' meta/argument_specs.yml.

One source of truth: a role's argument spec says which variables an operator may set, their types, choices and
defaults; this script turns them into survey specs (awx/surveys/<template>.json, the AWX API's survey_spec format),
which awx/controller_templates.yml loads. `--check` regenerates in memory and exits 1 when a file is stale or
missing (make test runs it through tests/unit/test_awx_content.py), so a changed spec without regenerated surveys
fails CI.

Rules (docs/awx.md "Surveys"):
- a question for every scalar option of the template's role entry point (str, int, float, bool, raw, and lists
  with choices as a multiselect); list / dict options without choices stay extra variables (prompt on launch);
- never a question for what a credential injects (connection settings, secrets) nor for per-host or internal
  settings (TEMPLATES[...]["exclude"], EXCLUDE);
- no question carries a default: AWX passes a question's default as an extra variable, which would override the
  inventory's value (p3_report_dir, a host's p3_restart_backend); the role's default is in the question's
  description instead, and an unanswered optional question passes nothing, so the role default applies;
- bool options are a multiple choice of "true" / "false" (AWX answers are strings; the roles hand them to module
  options of type bool, which convert them).

Usage: python3 scripts/awx_surveys.py [--check] [--root DIR]
"""
from __future__ import print_function

import argparse
import json
import os
import re
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# Variables the credential types of awx/controller_credential_types.yml inject (env or extra vars): never survey
# questions (a secret typed into a survey would be stored in the job's extra vars).
CREDENTIAL_VARS = frozenset([
    "p3_database_url", "p3_redis_nodes", "p3_redis_url", "p3_redis_username", "p3_redis_password",
    "p3_rpc_url", "p3_chain_id", "p3_anchor_wallet", "p3_anchor_funding_key", "p3_anchor_canary_token",
    "p3_incident_database_url",
])
# Set once in the inventory / by the playbooks, never per run.
EXCLUDE_PATTERNS = (r".*_defer_verify$", r"^p3_report_dir$", r".*_redis_role$", r".*_app_hosts$")

# name -> playbook, role entry point, extra excludes / includes. The order is the order in controller_templates.yml.
TEMPLATES = [
    {"name": "P3 diagnose", "slug": "diagnose", "role": "diagnose", "entry": "main"},
    {"name": "P3 recover_database", "slug": "recover_database", "role": "database", "entry": "main"},
    {"name": "P3 recover_redis", "slug": "recover_redis", "role": "redis_cluster", "entry": "main"},
    {"name": "P3 recover_sessions", "slug": "recover_sessions", "role": "session_bridge", "entry": "main"},
    {"name": "P3 recover_mesh", "slug": "recover_mesh", "role": "mesh_relay", "entry": "main"},
    {"name": "P3 recover_anchor", "slug": "recover_anchor", "role": "anchor_queue", "entry": "main"},
    {"name": "P3 restart_app", "slug": "restart_app", "role": "app_restart", "entry": "main",
     # how each host restarts its app is inventory (host vars); an extra var would override every host's
     "exclude": ["p3_restart_backend", "p3_supervisorctl", "p3_supervisor_conf", "p3_supervisor_program",
                 "p3_supervisor_update", "p3_systemd_unit", "p3_restart_command", "p3_app_health_url",
                 "p3_app_health_status", "p3_restart_validate_certs", "p3_restart_headers",
                 # the playbook passes its own lock of the app fleet
                 "p3_restart_lock_resource"]},
    {"name": "P3 drift_check", "slug": "drift_check", "role": "drift_check", "entry": "main"},
    # recover_all: the destructive gates and caps of its stages, not every option of five roles (those stay extra
    # variables, as on the command line).
    {"name": "P3 recover_all", "slug": "recover_all",
     "roles": [("database", "main"), ("redis_cluster", "main"), ("session_bridge", "main"), ("mesh_relay", "main"),
               ("anchor_queue", "main")],
     "include": ["p3_db_min_age_seconds", "p3_db_max_count", "p3_db_force", "p3_db_restart_app",
                 "p3_redis_failover", "p3_redis_repair_slots", "p3_redis_allow_data_loss", "p3_redis_allow_takeover",
                 "p3_redis_forget_failed", "p3_session_purge_mode", "p3_session_max_keys",
                 "p3_session_allow_purge_all", "p3_mesh_restart_app", "p3_anchor_fund", "p3_anchor_max_fund_wei",
                 "p3_anchor_retry", "p3_anchor_retry_max_jobs", "p3_anchor_retry_dead_letters"]},
]

_MARKUP = re.compile(r"\b([CIOVEMBU])\(([^()]*)\)")
# the AWX UI keeps integers in JavaScript numbers; wei amounts and the like go as text (the role converts)
_INT_MAX = 2 ** 31 - 1


def plain(text):
    """Ansible doc markup (C(x), O(x), V(x), E(x), ...) -> plain text, one line."""
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    text = _MARKUP.sub(lambda m: m.group(2), str(text or ""))
    return " ".join(text.split())


def load_spec(root, role, entry):
    path = os.path.join(root, "roles", role, "meta", "argument_specs.yml")
    with open(path) as f:
        specs = yaml.safe_load(f)["argument_specs"]
    if entry not in specs:
        raise SystemExit("%s: no entry point %r" % (path, entry))
    return specs[entry].get("options") or {}


def excluded(var, template):
    if var in CREDENTIAL_VARS or var in template.get("exclude", ()):
        return True
    return any(re.match(p, var) for p in EXCLUDE_PATTERNS)


def question(var, opt):
    """One survey question for an argument spec option, or None when it has no survey form."""
    otype = opt.get("type", "str")
    default = opt.get("default")
    choices = opt.get("choices")
    q = {"variable": var, "required": bool(opt.get("required")), "min": None, "max": None}
    if otype == "list":
        if not choices:
            return None
        q["type"] = "multiselect"
        q["choices"] = "\n".join(str(c) for c in choices)
    elif otype == "dict":
        return None
    elif choices:
        q["type"] = "multiplechoice"
        q["choices"] = "\n".join(str(c) for c in choices)
    elif otype == "bool":
        q["type"] = "multiplechoice"
        q["choices"] = "true\nfalse"
    elif otype == "int" and not (isinstance(default, int) and abs(default) > _INT_MAX):
        q["type"] = "integer"
    elif otype == "float":
        q["type"] = "float"
    elif otype == "raw" and isinstance(default, bool):
        q["type"] = "multiplechoice"
        q["choices"] = "true\nfalse"
    elif otype == "raw" and isinstance(default, int) and abs(default) <= _INT_MAX:
        q["type"] = "integer"
    elif otype == "raw" and isinstance(default, float):
        q["type"] = "float"
    else:
        q["type"] = "text"
        q["min"], q["max"] = 0, 1024
    desc = plain(opt.get("description"))
    if default is not None and default != "" and default != [] and default != {}:
        shown = json.dumps(default) if not isinstance(default, str) else default
        desc += " Role default: %s." % shown
    q["question_name"] = var
    q["question_description"] = desc[:1000]
    return q


def survey_for(root, template):
    roles = template.get("roles") or [(template["role"], template["entry"])]
    include = template.get("include")
    spec, seen = [], set()
    for role, entry in roles:
        for var, opt in load_spec(root, role, entry).items():
            if var in seen or excluded(var, template) or (include is not None and var not in include):
                continue
            q = question(var, opt or {})
            if q is None:
                continue
            seen.add(var)
            spec.append(q)
    if include is not None:
        missing = sorted(set(include) - seen)
        if missing:
            raise SystemExit("%s: include names options no argument spec has: %s" % (template["name"], missing))
    return {
        "name": template["name"],
        "description": "Generated by scripts/awx_surveys.py from roles/*/meta/argument_specs.yml - do not edit.",
        "spec": spec,
    }


def render(survey):
    return json.dumps(survey, indent=2, sort_keys=True) + "\n"


def expected_files(root):
    return dict((os.path.join("awx", "surveys", t["slug"] + ".json"), render(survey_for(root, t))) for t in TEMPLATES)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a survey file is stale or missing")
    ap.add_argument("--root", default=ROOT, help="collection root (default: this repository)")
    args = ap.parse_args(argv)
    stale = []
    for rel, text in sorted(expected_files(args.root).items()):
        path = os.path.join(args.root, rel)
        try:
            with open(path) as f:
                current = f.read()
        except IOError:
            current = None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if args.check and stale:
        print("stale AWX surveys (run python3 scripts/awx_surveys.py): %s" % ", ".join(stale), file=sys.stderr)
        return 1
    if args.check:
        print("checked %d survey(s): up to date" % len(TEMPLATES))
    else:
        print("wrote %d of %d survey(s)" % (len(stale), len(TEMPLATES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
