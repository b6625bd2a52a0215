# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident timeline entry for role Jinja: the same function every module uses (module_utils/common.py)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.p3.recovery.plugins.module_utils.common import timeline_entry as _timeline_entry


def timeline_entry(action, target, detail):
    """'app_restart' | p3.recovery.timeline_entry(target, detail) -> {ts, action, target, detail}."""
    return _timeline_entry(action, target, detail)


class FilterModule(object):
    def filters(self):
        return {"timeline_entry": timeline_entry}
