#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: process_env
short_description: Set an environment variable of the app in its process manager (supervisor or systemd)
version_added: 0.1.0
description:
  - The runbook's C(export ANCHOR_CONCURRENCY=128) before a restart, made durable - an C(export) in an on-call shell
    never reaches a process started by a process manager.
  - V(supervisor) - sets C(NAME="value") in the C(environment=) line of C([program:<program>]) in O(supervisor_conf)
    (other variables kept), then, unless O(apply=false), runs C(supervisorctl reread) so the next
    C(supervisorctl update <program>) (role C(p3.recovery.app_restart) with C(p3_supervisor_update=true)) starts
    the program with it.
  - V(systemd) - writes C(Environment="NAME=value") into the drop-in O(systemd_dropin) of O(systemd_unit) and
    runs C(systemctl daemon-reload) unless O(apply=false); the next restart uses it.
  - The value is written literally - V(supervisor) and V(systemd) both expand C(%), so it is written as C(%%). A
    value with a newline, carriage return or NUL byte (or a double quote, or for systemd a backslash) fails
    cleanly before anything is written; messages name the variable, never its value or any other variable.
  - V(supervisor) - the candidate file is written to a 0600 temporary file and its program section parsed with
    supervisor's own parser (when the C(supervisor) Python package is importable on the host, RV(checked)) before
    it replaces the real file; when C(supervisorctl reread) still fails, the previous file is put back.
  - A value is hidden from every output when O(name) looks like a credential (C(PASSWORD), C(SECRET), C(TOKEN),
    C(PRIVATE_KEY)...) and a password inside a URL value is always hidden.
  - Idempotent (no change when the value is already set); the previous file is kept as a timestamped backup.
  - In check mode nothing is written or reloaded; the result says what would change.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description: Variable name, for example C(ANCHOR_CONCURRENCY).
    type: str
    required: true
  value:
    description: Its value.
    type: str
    required: true
  backend:
    description: Process manager.
    type: str
    choices: [supervisor, systemd]
    default: supervisor
  supervisor_conf:
    description: Supervisor configuration file that holds the program section.
    type: path
  program:
    description: Supervisor program name.
    type: str
  supervisorctl:
    description: C(supervisorctl) binary.
    type: path
    default: supervisorctl
  systemd_unit:
    description: Unit name, for example C(p3-protocol.service).
    type: str
  systemd_dropin:
    description: Drop-in path; default C(/etc/systemd/system/<unit>.d/p3-recovery-env.conf).
    type: path
  apply:
    description: Run C(supervisorctl reread) / C(systemctl daemon-reload) after a change.
    type: bool
    default: true
  backup:
    description: Keep the previous file as C(<file>.<timestamp>~).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Raise the anchor worker concurrency (restart with p3.recovery.app_restart afterwards)
  p3.recovery.process_env:
    name: ANCHOR_CONCURRENCY
    value: "16"
    supervisor_conf: /etc/supervisor/conf.d/p3.conf
    program: p3-protocol
"""

RETURN = r"""
previous:
  description: The value before (null when unset).
  returned: always
  type: str
path:
  description: File changed (or that would be).
  returned: always
  type: str
backup_file:
  description: Backup of the previous file.
  returned: when changed and O(backup)
  type: str
restart_needed:
  description: The running program still has the old value until it is restarted.
  returned: always
  type: bool
checked:
  description: The candidate file was parsed with supervisor's own parser before it replaced the real one.
  returned: backend supervisor
  type: bool
restored:
  description: The reload failed and the previous file was put back (the run then fails, with C(changed=false)).
  returned: when the reload failed
  type: bool
timeline:
  description: One entry C({ts, action, target, detail}) when changed.
  returned: always
  type: list
  elements: dict
"""

import os
import tempfile

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error, is_secret_name, one_line, register_secrets, timeline_entry)
from ansible_collections.p3.recovery.plugins.module_utils.process_env import (
    check_name,
    check_supervisor_config,
    mask_values,
    set_supervisor_env,
    set_systemd_env,
    supervisor_env_pairs,
)


def write_file(path, text):
    """Write text next to path in a 0600 temporary file (other variables in it are credentials); return its name."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".p3tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except Exception:
        os.unlink(tmp)
        raise
    return tmp


def main():
    module = P3Module(
        argument_spec=dict(
            name=dict(type="str", required=True),
            value=dict(type="str", required=True),
            backend=dict(type="str", choices=["supervisor", "systemd"], default="supervisor"),
            supervisor_conf=dict(type="path"),
            program=dict(type="str"),
            supervisorctl=dict(type="path", default="supervisorctl"),
            systemd_unit=dict(type="str"),
            systemd_dropin=dict(type="path"),
            apply=dict(type="bool", default=True),
            backup=dict(type="bool", default=True),
        ),
        required_if=[("backend", "supervisor", ("supervisor_conf", "program")),
                     ("backend", "systemd", ("systemd_unit",))],
        supports_check_mode=True,
    )
    p = module.params
    if is_secret_name(p["name"]):
        register_secrets(module, [p["value"]])  # e.g. DATABASE_PASSWORD: its value is never shown
    pairs = []
    checked = False
    try:
        check_name(p["name"])
        if p["backend"] == "supervisor":
            path = p["supervisor_conf"]
            try:
                with open(path) as f:
                    old = f.read()
            except (IOError, OSError) as e:
                raise P3Error("cannot read %s: %s" % (path, one_line(e.strerror or e, 120)))
            pairs = supervisor_env_pairs(old, p["program"])
            new, previous = set_supervisor_env(old, p["program"], p["name"], p["value"])
            target = "[program:%s] in %s" % (p["program"], path)
            apply_cmd = [p["supervisorctl"], "-c", path, "reread"]
            if new != old:
                # the candidate as supervisord will read it, before anything is written
                checked = check_supervisor_config(new, path, p["program"], pairs + supervisor_env_pairs(new, p["program"]))
        else:
            unit = p["systemd_unit"]
            path = p["systemd_dropin"] or "/etc/systemd/system/%s.d/p3-recovery-env.conf" % unit
            old = ""
            if os.path.exists(path):
                with open(path) as f:
                    old = f.read()
            new, previous = set_systemd_env(old, p["name"], p["value"])
            target = "%s drop-in %s" % (unit, path)
            apply_cmd = ["systemctl", "daemon-reload"]
    except P3Error as e:
        module.fail_json(msg=e.msg)
    result = dict(changed=False, previous=previous, path=path, restart_needed=False, timeline=[])
    if p["backend"] == "supervisor":
        result["checked"] = checked
    if new == old:
        module.exit_json(**result)
    result.update(changed=True, restart_needed=True)
    # Only the variable itself: the rest of the file holds other secrets (database URLs, keys).
    result["diff"] = dict(before="%s=%s\n" % (p["name"], previous) if previous is not None else "",
                          after="%s=%s\n" % (p["name"], p["value"]), before_header=path, after_header=path)
    detail = "%s=%s (was %s)" % (p["name"], p["value"], previous if previous is not None else "unset")
    if module.check_mode:
        result["timeline"].append(timeline_entry("process_env (check mode: nothing written)", target,
                                                 "would set " + detail))
        module.exit_json(**result)
    if p["backup"] and os.path.exists(path):
        result["backup_file"] = module.backup_local(path)
    if not os.path.isdir(os.path.dirname(path) or "."):
        os.makedirs(os.path.dirname(path))
    existed = os.path.exists(path)
    tmp = write_file(path, new)
    if existed:
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    module.atomic_move(tmp, path)
    result["timeline"].append(timeline_entry("process_env", target, "set " + detail))
    if p["apply"]:
        rc, out, err = module.run_command(apply_cmd)
        if rc != 0:
            # Put the previous file back so the process manager never starts from a file it cannot read.
            if existed:
                restore = write_file(path, old)
                os.chmod(restore, os.stat(path).st_mode & 0o7777)
                module.atomic_move(restore, path)
            else:
                os.unlink(path)
            result.update(changed=False, restart_needed=False, restored=True)
            result["timeline"].append(timeline_entry("process_env (rolled back)", target,
                                                     "%s failed, previous file restored" % " ".join(apply_cmd)))
            cause = one_line(mask_values(err or out, pairs + supervisor_env_pairs(new, p.get("program") or "")), 200)
            module.fail_json(msg="%s: %s failed (rc %d), previous file restored: %s" % (
                target, " ".join(apply_cmd), rc, cause), **result)
        result["applied"] = one_line(out, 200)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
