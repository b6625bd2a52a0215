# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for p3.recovery.write_report.

When the task runs on the controller's own local connection without become (the collection's playbooks
run there by default), the report is written in this process: the same code as the module
(module_utils/report.py), without shipping and starting a module, which is most of a short task's cost.
Anywhere else (a remote host, become, another connection) it runs the module as usual.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error
from ansible_collections.p3.recovery.plugins.module_utils.report import REPORT_ARGUMENT_SPEC, write_report


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(REPORT_ARGUMENT_SPEC)

    def _writes_here(self):
        transport = getattr(self._connection, "transport", None) or getattr(self._connection, "_load_name", "")
        local = str(transport).rsplit(".", maxsplit=1)[-1] == "local"
        return local and not self._play_context.become

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        if not self._writes_here():
            result.update(self._execute_module(task_vars=task_vars))
            return result
        _validation, args = self.validate_argument_spec(argument_spec=REPORT_ARGUMENT_SPEC)
        try:
            result.update(write_report(args, check_mode=bool(self._task.check_mode)))
        except P3Error as e:
            raise AnsibleActionFail(e.msg, result=dict(path=e.details.get("path")))
        return result
