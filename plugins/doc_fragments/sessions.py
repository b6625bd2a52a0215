# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # The session validation rule shared by session_census and session_purge (module_utils/sessions.py).
    DOCUMENTATION = r"""
options:
  pattern:
    description:
      - C(SCAN MATCH) pattern of the session keys. Every master is walked with C(SCAN), never C(KEYS).
    type: str
    default: "session:*"
  required_fields:
    description:
      - Fields a session JSON object must have. A value missing one of them is corrupt (C(missing-fields)).
    type: list
    elements: str
    default: [sessionId, deviceId, createdAt, expiresAt]
  expiry_field:
    description:
      - Field holding the session's expiry (milliseconds or seconds since the epoch, or an ISO 8601 string).
      - A value whose expiry cannot be read is corrupt (C(bad-expiry)); one in the past is corrupt (C(expired)),
        as the app answers 401 for it. An empty string disables the check.
    type: str
    default: expiresAt
  require_ttl:
    description:
      - Count a session without a Redis TTL as corrupt (C(no-ttl)). The app writes every session with C(EX 3600);
        a key that never expires is a leak the app would honour forever. The lab's C(p3lab status) uses the same
        rule.
    type: bool
    default: true
  scan_count:
    description:
      - C(SCAN COUNT) hint, and so the most keys one page reads or removes. Bounds the server-side work per call
        (and the stall another client can see) to one page. Between 1 and 10000. With 100 a page took under 3 ms
        of server time (longest page) on a loaded 2-core machine with 1M sessions, with more keys per second than
        50 or 200 (smaller pages stay in the CPU caches; more pages cost more calls).
    type: int
    default: 100
notes:
  - A value is valid when it is a UTF-8 JSON object with every O(required_fields), a readable O(expiry_field)
    in the future and (O(require_ttl)) a TTL. Everything else - not a string (C(wrong-type)), not UTF-8
    (C(not-utf8)), not JSON (C(not-json)), not an object (C(not-object)) - is corrupt.
"""
