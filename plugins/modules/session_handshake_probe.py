#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: session_handshake_probe
short_description: Test the session handshake - status, response shape, latency, and that the session reads back
version_added: 0.1.0
description:
  - The runbook's C(curl -X POST /api/protocol/session/handshake -d '{"deviceId":"test",...}'), judged.
  - POSTs O(body) as JSON to O(handshake_path). Healthy when the status is one of O(expected_status), the answer
    is a JSON object with every O(required_fields), the latency is at most O(max_latency_ms), and (when
    O(session_path) is set) C(GET) of the new session answers 200.
  - Like the runbook's curl, every run creates one session (with the app's TTL); RV(session_id) names it. This is
    the diagnostic itself, so it happens in check mode too (a probe changes no existing state; the new session
    expires by itself).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  handshake_path:
    description: Path of the handshake (C(/api/protocol/v2/session/handshake) or C(/v1/session/handshake) on P3 as
      coded).
    type: str
    default: /api/protocol/session/handshake
  body:
    description: The JSON body (the runbook's, with a device id that names the probe).
    type: dict
    default: {"deviceId": "p3-recovery-probe", "capabilities": {"encoding": ["json"]}}
  expected_status:
    description: Statuses that count as a successful handshake.
    type: list
    elements: int
    default: [200, 201]
  required_fields:
    description: Fields the JSON answer must have.
    type: list
    elements: str
    default: [sessionId]
  session_field:
    description: Field of the answer holding the new session's id.
    type: str
    default: sessionId
  session_path:
    description:
      - Path to read the new session back, with C({id}) for its id (the lab app's C(/api/protocol/session/{id})).
        Empty skips the read-back.
    type: str
    default: ""
  max_latency_ms:
    description: Slowest handshake that counts as healthy.
    type: float
    default: 2000
seealso:
  - module: p3.recovery.session_census
"""

EXAMPLES = r"""
- name: Handshake and read the session back
  p3.recovery.session_handshake_probe:
    url: "{{ p3_app_url }}"
    session_path: /api/protocol/session/{id}
  register: handshake
"""

RETURN = r"""
healthy:
  description: See the description.
  returned: always
  type: bool
reason:
  description: One line.
  returned: always
  type: str
  sample: "POST http://127.0.0.1:5000/api/protocol/session/handshake -> 201 in 4 ms; session read back (200)"
status:
  description: HTTP status of the handshake (null when there was no answer).
  returned: always
  type: int
latency_ms:
  description: Handshake round trip.
  returned: always
  type: float
session_id:
  description: The new session's id (null when none).
  returned: always
  type: str
missing_fields:
  description: O(required_fields) absent from the answer.
  returned: always
  type: list
  elements: str
body:
  description: The answer (JSON, or text cut to 2000 characters).
  returned: always
  type: raw
readback_status:
  description: Status of the read-back (null when skipped or not possible).
  returned: always
  type: int
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, exit_probe
from ansible_collections.p3.recovery.plugins.module_utils.diagnostics import HANDSHAKE_BODY, handshake_probe
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HttpTarget, http_argument_spec


def main():
    argument_spec = http_argument_spec(
        handshake_path=dict(type="str", default="/api/protocol/session/handshake"),
        body=dict(type="dict", default=HANDSHAKE_BODY),
        expected_status=dict(type="list", elements="int", default=[200, 201]),
        required_fields=dict(type="list", elements="str", default=["sessionId"]),
        session_field=dict(type="str", default="sessionId"),
        session_path=dict(type="str", default=""),
        max_latency_ms=dict(type="float", default=2000),
    )
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["max_latency_ms"] <= 0:
        module.fail_json(msg="max_latency_ms must be > 0")
    target = HttpTarget(module)
    exit_probe(module, handshake_probe(target, p["handshake_path"], p["body"], p["expected_status"],
                                       p["required_fields"], p["session_field"], p["session_path"],
                                       p["max_latency_ms"]))


if __name__ == "__main__":
    main()
