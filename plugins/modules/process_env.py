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
timeline:
  description: One entry C({ts, action, target, detail}) when changed.
  returned: always
  type: list
  elements: dict
"""

import datetime
import os

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line
from ansible_collections.p3.recovery.plugins.module_utils.process_env import check_name, set_supervisor_env, set_systemd_env


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
    try:
        check_name(p["name"])
        if p["backend"] == "supervisor":
            path = p["supervisor_conf"]
            try:
                with open(path) as f:
                    old = f.read()
            except (IOError, OSError) as e:
                raise P3Error("cannot read %s: %s" % (path, one_line(e.strerror or e, 120)))
            new, previous = set_supervisor_env(old, p["program"], p["name"], p["value"])
            target = "[program:%s] in %s" % (p["program"], path)
            apply_cmd = [p["supervisorctl"], "-c", path, "reread"]
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
    if new == old:
        module.exit_json(**result)
    result.update(changed=True, restart_needed=True)
    # Only the variable itself: the rest of the file holds other secrets (database URLs, keys).
    result["diff"] = dict(before="%s=%s\n" % (p["name"], previous) if previous is not None else "",
                          after="%s=%s\n" % (p["name"], p["value"]), before_header=path, after_header=path)
    detail = "%s=%s (was %s)" % (p["name"], p["value"], previous if previous is not None else "unset")
    ts = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if module.check_mode:
        result["timeline"].append(dict(ts=ts, action="process_env (check mode: nothing written)", target=target,
                                       detail="would set " + detail))
        module.exit_json(**result)
    if p["backup"] and os.path.exists(path):
        result["backup_file"] = module.backup_local(path)
    if not os.path.isdir(os.path.dirname(path) or "."):
        os.makedirs(os.path.dirname(path))
    tmp = "%s.p3tmp" % path
    with open(tmp, "w") as f:
        f.write(new)
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    module.atomic_move(tmp, path)
    result["timeline"].append(dict(ts=ts, action="process_env", target=target, detail="set " + detail))
    if p["apply"]:
        rc, out, err = module.run_command(apply_cmd)
        if rc != 0:
            module.fail_json(msg="%s: wrote %s but %s failed (rc %d): %s" % (
                target, detail, " ".join(apply_cmd), rc, one_line(err or out, 200)), **result)
        result["applied"] = one_line(out, 200)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
