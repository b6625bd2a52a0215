#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: write_report
short_description: Write a JSON run report (diagnose, recovery) under a name unique to the run
version_added: 0.1.0
description:
  - Writes O(data) as pretty JSON into O(dir), named C(<prefix>-<UTC timestamp to the microsecond>-<pid>-<random>.json),
    or to O(path). Two runs in the same second write two files.
  - Creates the directory when missing (mode C(0700), whatever the umask) and writes atomically and exclusively
    (temporary file, then a hard link that fails when the name exists), so no report ever replaces another.
    An explicit O(path) is replaced atomically (temporary file, then rename).
  - O(prefix) must be a plain name part (no C(/), no C(..)) and O(path) must not contain C(..); the final path is
    resolved and checked to stay inside O(dir).
  - Adds C(generated_at) (UTC, ISO 8601) to the report unless it is already there, and C(report), the report's own
    path.
  - Module invocations (C(invocation), the arguments of a registered result) are removed at any depth.
  - Unless O(include_sensitive), other sessions' SQL text (keys named C(query)) is replaced by a fingerprint of
    its normalised form (literals replaced by C(?)), and live session ids (keys named C(session_id), C(sessionId),
    C(sessionToken), C(sid), C(token), C(key), C(keys), C(session), C(sessions)) by a hash (C(sha256:<12 hex>), the key's prefix such as
    C(session:) kept).
  - In check mode nothing is written; the playbooks of this collection run it with C(check_mode=false)
    because a report is the output of a dry run, not a change to the system.
  - For the same reason it always reports C(changed=false), so a diagnose or drift-check run on a healthy
    system shows no change.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
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
    description:
      - Exact file to write; overrides O(dir) and O(prefix). It must not contain C(..); an existing file is
        replaced atomically.
    type: path
  include_sensitive:
    description:
      - Keep other sessions' SQL text and live session ids in the report as they are. SQL text can hold literal
        secrets and a session id is a bearer credential; the collection's roles set this from
        C(p3_report_include_sensitive) (default V(false)).
    type: bool
    default: false
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
  sample: reports/diagnose-20261128T131500123456Z-4242-a1b2c3.json
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
