#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: app_log_scan
short_description: Count the log lines matching a pattern on the app host and show the last ones
version_added: 0.1.0
description:
  - The runbook's C(grep "sessionBridge" /var/log/p3/*.log | tail -100), read-only and bounded - runs on the app
    host.
  - Reads at most the last O(max_bytes) of each file matching O(paths) (globs), counts the lines matching the
    regular expression O(pattern) and keeps the last O(last_lines) of them (each cut to 500 characters).
  - Healthy when at most O(max_matches) lines match. A missing file or a glob that matches nothing is reported in
    RV(missing), and is not unhealthy.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  paths:
    description: Log files or globs.
    type: list
    elements: path
    default: ["/var/log/p3/*.log"]
  pattern:
    description: Python regular expression a line must match (search, not full match).
    type: str
    default: sessionBridge
  ignore_case:
    description: Match case-insensitively.
    type: bool
    default: false
  max_matches:
    description: Most matching lines that still count as healthy.
    type: int
    default: 0
  last_lines:
    description: How many of the last matching lines to return.
    type: int
    default: 20
  max_bytes:
    description: Read at most this many bytes from the end of each file.
    type: int
    default: 10485760
  timeout:
    description:
      - Total deadline in seconds for the whole scan, matching included. An operator's pattern can backtrack
        catastrophically (C((a+\)+$) against a long line takes hours with Python's C(re)); with the C(regex)
        package installed on the host (see C(requirements.txt)) every match gets the time left and the module
        fails with one line naming the file and line when the deadline passes.
      - Without the C(regex) package the deadline is checked between lines only.
    type: float
    default: 30
requirements:
  - regex (recommended, bounds every match by O(timeout))
"""

EXAMPLES = r"""
- name: Session bridge errors in the app logs
  p3.recovery.app_log_scan:
    paths: ["/srv/p3/logs/*.log"]
    pattern: "(?i)session.*(error|fail|could not)"
  register: logs
"""

RETURN = r"""
healthy:
  description: Matches <= O(max_matches).
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "3 lines match 'session' in 1 file (max 0)"
matches:
  description: Matching lines over all files (within the bytes read).
  returned: always
  type: int
files:
  description: Per file - C(path), C(size), C(read), C(matches).
  returned: always
  type: list
  elements: dict
missing:
  description: Paths or globs that matched no readable file.
  returned: always
  type: list
  elements: str
last:
  description: The last O(last_lines) matching lines (C(path), C(line)).
  returned: always
  type: list
  elements: dict
"""

import glob
import os
import re
import time

try:
    import regex as regex_lib  # matches take a timeout; the stdlib re cannot be interrupted
    HAS_REGEX = True
except ImportError:  # pragma: no cover - depends on the host
    regex_lib = None
    HAS_REGEX = False

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe, num_text, one_line, probe_result


class ScanTimeout(Exception):
    pass


def scan_file(path, regex, max_bytes, keep, deadline):
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if size > max_bytes:
            fh.seek(size - max_bytes)
            fh.readline()  # drop the partial first line
        data = fh.read(max_bytes)
    count = 0
    last = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.decode("utf-8", "replace")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScanTimeout("%s line %d" % (path, number))
        try:
            found = regex.search(line, timeout=remaining) if HAS_REGEX else regex.search(line)
        except TimeoutError:
            raise ScanTimeout("%s line %d" % (path, number))
        if found:
            count += 1
            last.append(dict(path=path, line=one_line(line, 500)))
            if len(last) > keep:
                last.pop(0)
    return dict(path=path, size=size, read=len(data), matches=count), last


def main():
    argument_spec = dict(
        paths=dict(type="list", elements="path", default=["/var/log/p3/*.log"]),
        pattern=dict(type="str", default="sessionBridge"),
        ignore_case=dict(type="bool", default=False),
        max_matches=dict(type="int", default=0),
        last_lines=dict(type="int", default=20),
        max_bytes=dict(type="int", default=10 * 1024 * 1024),
        timeout=dict(type="float", default=30.0),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    deadline = time.monotonic() + (p["timeout"] or 0)
    lib = regex_lib if HAS_REGEX else re
    try:
        regex = lib.compile(p["pattern"], lib.IGNORECASE if p["ignore_case"] else 0)
    except (re.error, lib.error) as e:
        module.fail_json(msg="invalid pattern %r: %s" % (p["pattern"], one_line(e, 200)))
    if p["max_matches"] < 0 or p["last_lines"] < 0 or p["max_bytes"] < 1 or not p["timeout"] or p["timeout"] <= 0:
        module.fail_json(msg="max_matches and last_lines must be >= 0, max_bytes >= 1, timeout > 0")
    files, last, missing, errors = [], [], [], []
    for spec in p["paths"]:
        found = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not found:
            missing.append(spec)
        for path in found:
            try:
                rec, tail = scan_file(path, regex, p["max_bytes"], p["last_lines"], deadline)
            except ScanTimeout as e:
                module.fail_json(msg="pattern %r: scan timed out after %ss at %s" % (
                    p["pattern"], num_text(p["timeout"]), e), matches=sum(f["matches"] for f in files), files=files)
            except (IOError, OSError) as e:
                errors.append("%s: %s" % (path, one_line(e.strerror or e, 160)))
                missing.append(path)
                continue
            files.append(rec)
            last.extend(tail)
    last = last[-p["last_lines"]:] if p["last_lines"] else []
    matches = sum(f["matches"] for f in files)
    healthy = matches <= p["max_matches"]
    reason = "%d line%s match %r in %d file%s (max %d)%s" % (
        matches, "" if matches == 1 else "s", p["pattern"], len(files), "" if len(files) == 1 else "s",
        p["max_matches"], ("; not read: %s" % ", ".join(errors or missing)) if (errors or missing) else "")
    exit_probe(module, probe_result(healthy, reason, matches=matches, files=files, missing=missing, last=last))


if __name__ == "__main__":
    main()
