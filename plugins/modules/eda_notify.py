#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: eda_notify
short_description: Post a Slack-compatible notification of what the EDA loop did or refused to do
version_added: 0.1.0
description:
  - POSTs O(body) as JSON to a generic webhook that takes Slack's incoming-webhook format - C(text), optional
    C(attachments) (filter C(p3.recovery.eda_notification) builds it, with Alertmanager-style C(annotations)).
  - The URL is treated as a secret (Slack's carries its token in the path) - it never appears in the result or
    a message. A webhook that cannot be reached or answers other than 2xx gives RV(delivered=false) and one line in
    RV(reason) naming the host and the cause; the module fails only with O(fail_on_error).
  - O(timeout) is a total deadline over connect, send and answer.
  - In check mode nothing is posted (RV(delivered=false)), as a notification is a side effect.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Nothing is posted in check mode.
  diff_mode:
    support: none
options:
  url:
    description: The webhook (http or https). Its path and query are not shown anywhere.
    type: str
    required: true
  body:
    description: The JSON body - at least C(text).
    type: dict
    required: true
  timeout:
    description: Total seconds for the request.
    type: float
    default: 5
  validate_certs:
    description: Verify the TLS certificate of an https webhook.
    type: bool
    default: true
  fail_on_error:
    description: Fail when the notification could not be delivered.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Tell the on-call channel
  p3.recovery.eda_notify:
    url: "{{ p3_alert_eda_notify_url }}"
    body: "{{ p3_eda_outcome | p3.recovery.eda_notification }}"
"""

RETURN = r"""
delivered:
  description: The webhook answered 2xx.
  returned: always
  type: bool
status:
  description: The HTTP status (null without an answer).
  returned: always
  type: int
reason:
  description: One line - delivered, or why not (host and cause).
  returned: always
  type: str
"""

import json

from urllib.parse import urlsplit

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, P3Module, fail_clean, register_secrets
from ansible_collections.p3.recovery.plugins.module_utils.http_client import check_url, request


def main():
    module = P3Module(
        argument_spec=dict(
            url=dict(type="str", required=True, no_log=True),
            body=dict(type="dict", required=True),
            timeout=dict(type="float", default=5.0),
            validate_certs=dict(type="bool", default=True),
            fail_on_error=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        url = check_url(p["url"])
    except P3Error as e:
        fail_clean(module, P3Error("notification webhook: %s" % e.msg.split(" '")[0]))
    parts = urlsplit(url)
    secrets = [s for s in (parts.path, parts.query, parts.password) if s and len(s) > 1]
    register_secrets(module, secrets)
    where = "%s://%s" % (parts.scheme, parts.netloc.rpartition("@")[2])
    if not str(p["body"].get("text") or "").strip():
        module.fail_json(msg="body must have a non-empty text (Slack-compatible webhook)")
    if module.check_mode:
        module.exit_json(changed=False, delivered=False, status=None, reason="check mode: nothing posted to %s" % where)
    if p["timeout"] <= 0:
        module.fail_json(msg="timeout must be above 0, got %s" % p["timeout"])
    res = request(url, method="POST", timeout=p["timeout"], validate_certs=p["validate_certs"],
                  headers={"Content-Type": "application/json"},
                  data=json.dumps(p["body"], sort_keys=True).encode("utf-8"), secrets=secrets, max_body=65536)
    if res["ok"]:
        reason = "notification delivered to %s (HTTP %s)" % (where, res["status"])
    elif res["status"] is not None:
        reason = "notification webhook %s answered HTTP %s" % (where, res["status"])
    else:
        reason = "notification webhook %s: %s" % (where, res["error"])
    result = dict(changed=bool(res["ok"]), delivered=bool(res["ok"]), status=res["status"], reason=reason)
    if not res["ok"] and p["fail_on_error"]:
        module.fail_json(msg=reason, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
