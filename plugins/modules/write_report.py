#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: write_report
short_description: Write a JSON run report (diagnose, recovery) with a UTC timestamped name
version_added: 0.1.0
description:
  - Writes O(data) as pretty JSON into O(dir), named C(<prefix>-<UTC timestamp>.json), or to O(path).
  - Creates the directory when missing and writes atomically (temporary file, then rename).
  - Adds C(generated_at) (UTC, ISO 8601) to the report unless it is already there.
  - In check mode nothing is written; the playbooks of this collection run it with C(check_mode=false)
    because a report is the output of a dry run, not a change to the system.
  - For the same reason it always reports C(changed=false), so a diagnose or drift-check run on a healthy
    system shows no change.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  data:
    description: The report content.
    type: dict
    required: true
  dir:
    description: Directory for the report, used when O(path) is not set.
    type: path
    default: reports
  prefix:
    description: File name prefix, used when O(path) is not set.
    type: str
    default: report
  path:
    description: Exact file to write; overrides O(dir) and O(prefix).
    type: path
  mode:
    description: File mode of the report.
    type: raw
    default: '0640'
"""

EXAMPLES = r"""
- name: Write the diagnose report
  p3.recovery.write_report:
    dir: /var/lib/p3/reports
    prefix: diagnose
    data:
      healthy: true
      checks: []
  check_mode: false
  register: report

- name: Show where it went
  ansible.builtin.debug:
    var: report.path
"""

RETURN = r"""
path:
  description: The file written (or that would be written in check mode).
  returned: always
  type: str
  sample: reports/diagnose-20261128T131500Z.json
generated_at:
  description: UTC time stamped into the report.
  returned: always
  type: str
  sample: "2026-11-28T13:15:00Z"
"""

import datetime
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native


def main():
    module = AnsibleModule(
        argument_spec=dict(
            data=dict(type="dict", required=True),
            dir=dict(type="path", default="reports"),
            prefix=dict(type="str", default="report"),
            path=dict(type="path"),
            mode=dict(type="raw", default="0640"),
        ),
        supports_check_mode=True,
    )
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    generated_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = module.params["path"] or os.path.join(
        module.params["dir"], "%s-%s.json" % (module.params["prefix"], now.strftime("%Y%m%dT%H%M%SZ"))
    )
    data = dict(module.params["data"])
    data.setdefault("generated_at", generated_at)
    result = dict(changed=False, path=path, generated_at=data["generated_at"])
    if module.check_mode:
        module.exit_json(**result)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".report-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        mode = module.params["mode"]
        os.chmod(tmp, int(mode, 8) if isinstance(mode, str) else mode)
        os.rename(tmp, path)
    except (OSError, ValueError, TypeError) as e:
        module.fail_json(msg="cannot write report %s: %s" % (path, to_native(e)), path=path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
