#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: session_restore
short_description: Put back the keys a session_purge backup file holds, byte for byte
version_added: 0.1.0
description:
  - Reads a backup file written by M(p3.recovery.session_purge) and writes every key back on the master that owns
    its slot now - strings with C(SET key value PXAT <expire_at_ms>), other types with
    C(RESTORE key <expire_at_ms> <payload> ABSTTL) - so a key keeps the expiry it had, not a fresh TTL; keys
    without a TTL come back without one.
  - A key that exists with the same value (or C(DUMP) payload) counts as RV(identical) and is left alone, so running the
    restore twice changes nothing the second time. A key that exists with another value is a RV(conflicts) entry
    and is kept unless O(replace=true). A key whose expiry passed since the backup is skipped (RV(expired)).
  - A last line cut short (the purge was killed or the disk filled up while writing it; none of its keys was
    removed) is reported in RV(truncated); every complete line is restored. A malformed complete line fails the
    run before anything is written.
  - In check mode nothing is written; the counts say what would be restored.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  path:
    description: The backup file (JSON lines, format C(p3.recovery.redis-dump) version 1).
    type: path
    required: true
  replace:
    description: Overwrite keys that exist with another value (C(SET) without C(NX), C(RESTORE ... REPLACE)).
    type: bool
    default: false
seealso:
  - module: p3.recovery.session_purge
"""

EXAMPLES = r"""
- name: Undo a purge
  p3.recovery.session_restore:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    path: "{{ purge.backup.path }}"
"""

RETURN = r"""
changed:
  description: True when at least one key was restored (in check mode, would be).
  returned: always
  type: bool
entries:
  description: Complete entries (keys) in the backup file.
  returned: always
  type: int
truncated:
  description: The cut-short last line - C(line) number, byte C(offset) and C(bytes) - or null.
  returned: always
  type: dict
  sample: {"line": 1202, "offset": 262144, "bytes": 97}
restored:
  description: Keys restored (in check mode, that would be).
  returned: always
  type: int
identical:
  description: Keys already present with the same payload (nothing to do).
  returned: always
  type: int
conflicts:
  description: Keys present with another value and left alone (O(replace=false)).
  returned: always
  type: int
conflict_keys:
  description: Up to 20 of the conflicting keys.
  returned: always
  type: list
  elements: str
expired:
  description: Keys whose expiry passed since the backup (not restored).
  returned: always
  type: int
unroutable:
  description: Keys whose slot no reachable master serves now (not restored).
  returned: always
  type: int
errors:
  description: Up to 20 per-key or per-node errors.
  returned: always
  type: list
  elements: str
unreadable:
  description: Masters that own slots but could not be reached.
  returned: always
  type: list
  elements: str
pattern:
  description: The pattern the purge used (from the file's header).
  returned: always
  type: str
mode:
  description: The purge mode (from the file's header).
  returned: always
  type: str
created:
  description: When the backup was written (from the file's header).
  returned: always
  type: str
timeline:
  description: What was done - C(ts), C(action), C(target), C(detail).
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.sessions import restore


def main():
    argument_spec = redis_argument_spec(
        path=dict(type="path", required=True),
        replace=dict(type="bool", default=False),
    )
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    target = RedisTarget(module)
    try:
        result = restore(target.settings, module.params["path"], replace=module.params["replace"],
                         check_mode=module.check_mode)
    except P3Error as e:
        fail_clean(module, e)
    verb = "would restore" if module.check_mode else "restored"
    detail = "%s %d of %d keys from %s (identical %d, conflicts %d, expired %d, unroutable %d)%s" % (
        verb, result["restored"], result["entries"], module.params["path"], result["identical"],
        result["conflicts"], result["expired"], result["unroutable"],
        "; last line %d cut short at byte %d (%d bytes, none of its keys was removed)" % (
            result["truncated"]["line"], result["truncated"]["offset"], result["truncated"]["bytes"])
        if result["truncated"] else "")
    result["timeline"] = [timeline_entry("session_restore", ",".join(target.settings.seed_addresses), detail)]
    result["changed"] = result["restored"] > 0
    result["msg"] = detail
    if result["errors"] or result["unroutable"]:
        module.fail_json(msg="session restore incomplete: %s (%s)" % (
            "; ".join(result["errors"][:3]) or "%d keys unroutable" % result["unroutable"], detail), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
