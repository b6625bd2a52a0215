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

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.report import REPORT_ARGUMENT_SPEC, write_report


def main():
    module = P3Module(argument_spec=REPORT_ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = write_report(module.params, check_mode=module.check_mode)
    except P3Error as e:
        module.fail_json(msg=e.msg, **e.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
