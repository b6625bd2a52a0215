# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Descriptions of the standard attributes (p3.recovery.attributes); a module states its support level with one of
    # the sub-fragments below (p3.recovery.attributes.check_full_diff_none), or in its own attributes block when
    # it has details to add.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
"""

    # Runs fully in check mode (selects what the real run would, changes nothing) and returns no diff: every probe,
    # and every action whose change is in its result and timeline rather than in a before/after file.
    CHECK_FULL_DIFF_NONE = r"""
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""
