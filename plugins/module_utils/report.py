# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing a JSON run report: shared by the write_report module (remote hosts) and its action plugin (which
writes in-process when the task runs on the controller's local connection)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os
import tempfile

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

REPORT_ARGUMENT_SPEC = dict(
    data=dict(type="dict", required=True),
    dir=dict(type="path", default="reports"),
    prefix=dict(type="str", default="report"),
    path=dict(type="path"),
    mode=dict(type="raw", default="0640"),
)


def file_mode(mode):
    """'0640' / '640' / 0o640 -> int; raises P3Error for anything else."""
    try:
        value = int(mode, 8) if isinstance(mode, str) else int(mode)
    except (TypeError, ValueError):
        raise P3Error("mode must be an octal file mode like '0640', got %r" % (mode,))
    if not 0 <= value <= 0o7777:
        raise P3Error("mode must be an octal file mode like '0640', got %r" % (mode,))
    return value


def write_report(params, check_mode=False, now=None):
    """Write params['data'] as pretty JSON (atomically); return {changed: false, path, generated_at}.

    A report is output, not state: changed is always false. In check mode nothing is written.
    """
    now = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    generated_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = params.get("path") or os.path.join(
        params.get("dir") or "reports", "%s-%s.json" % (params.get("prefix") or "report", now.strftime("%Y%m%dT%H%M%SZ"))
    )
    data = dict(params["data"])
    data.setdefault("generated_at", generated_at)
    result = dict(changed=False, path=path, generated_at=data["generated_at"])
    mode = file_mode(params.get("mode", "0640"))
    if check_mode:
        return result
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".report-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        tmp = None
    except (OSError, ValueError, TypeError) as e:
        raise P3Error("cannot write report %s: %s" % (path, e), path=path)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return result
