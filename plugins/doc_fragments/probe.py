# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # The option and the result fields every probe module shares.
    DOCUMENTATION = r"""
options:
  fail_on_unhealthy:
    description:
      - Fail the task (with RV(reason) as the message and the full result) when the target is unhealthy.
      - By default a probe reports an unhealthy target with RV(healthy=false) and does not fail, so playbooks can
        decide what to do; malformed input (a bad URL or DSN, a missing library) always fails.
    type: bool
    default: false
notes:
  - Probes are read-only. They never report C(changed) and run the same in check mode.
"""
