#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: session_purge
short_description: Remove corrupt (or, gated, all) sessions from every Redis master without blocking Redis, with a backup
version_added: 0.1.0
description:
  - The runbook's C(redis-cli KEYS "session:*" | xargs redis-cli DEL), made selective, non-blocking and recoverable.
  - Walks every master (every master serving slots in a cluster) with C(SCAN MATCH O(pattern) COUNT O(scan_count));
    never C(KEYS).
  - Write-ahead, page by page. A small Lua script on the node C(SCAN)s one page itself (so the server-side work
    per call is bounded by O(scan_count) keys) and returns each key's value (C(DUMP) for a key that is not a
    string) and C(PTTL); nothing is removed by it. The keys chosen are appended to the backup file, the lines are
    fsynced (one fsync for all the pages written meanwhile), and only then a second script removes exactly those
    keys, each only if it is still exactly what was read (compare-and-delete; for C(no-ttl), still without TTL);
    a key that changed in between is left alone (RV(vanished)). So every removed key has a durable backup line,
    whenever the run stops (killed, disk full, a node failing).
  - Every master is worked at the same time, each with one C(SCAN) cursor (correct on every supported server
    version, also Redis >= 7.4 and Valkey 8, whose cluster cursors carry the slot) and two connections - the
    reader, whose next page is requested before the current one is judged and written, and the remover, with at
    most one compare-and-delete call in flight whose reply is counted before the next is sent. A
    compare-and-delete call that fails or times out is resolved before the run ends (the same idempotent call
    again on a new connection says which of its keys are gone); keys it cannot resolve are RV(unresolved).
  - O(mode=corrupt) (default) removes only the sessions that fail validation (the rule of the doc fragment below),
    judged here with the rule M(p3.recovery.session_census) uses.
  - O(mode=all) removes every matching key, as the runbook does; it logs every user out and therefore needs
    O(allow_all=true).
  - The backup is a JSON-lines file (base64 value or C(DUMP) payload, TTL, absolute expiry);
    M(p3.recovery.session_restore) puts the keys back byte for byte. A line for a key that was then left alone
    (changed meanwhile) restores nothing (the key exists).
  - Stops after O(max_keys) removals (RV(capped)). In check mode nothing is removed and no file is written; the
    counts say what would be removed. A second run on a clean keyspace removes nothing and reports C(changed=false).
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.redis
  - p3.recovery.sessions
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
options:
  mode:
    description:
      - C(corrupt) removes only sessions that fail validation; C(all) removes every key matching O(pattern).
    type: str
    choices: [corrupt, all]
    default: corrupt
  allow_all:
    description:
      - Required to be V(true) for O(mode=all), which logs every user out.
    type: bool
    default: false
  max_keys:
    description:
      - Most keys to remove in one run (across all masters). The run stops there and reports RV(capped=true).
    type: int
    default: 10000
  backup:
    description:
      - Write the removed keys to a backup file. Setting V(false) makes the removal unrecoverable.
    type: bool
    default: true
  backup_dir:
    description:
      - Directory of the backup file (created with mode 0700), named C(sessions-<mode>-<UTC timestamp>.jsonl),
        used when O(backup_path) is not set. A relative path is taken from the module's working directory on the
        target host; pass an absolute one (the role C(p3.recovery.session_bridge) passes
        C(<directory ansible-playbook was started from>/backups)). The C(path) in RV(backup) is always absolute.
    type: path
    default: backups
  backup_path:
    description:
      - Exact backup file to create (it must not exist yet). Overrides O(backup_dir).
    type: path
seealso:
  - module: p3.recovery.session_census
  - module: p3.recovery.session_restore
"""

EXAMPLES = r"""
- name: Remove the corrupt sessions, keeping a backup
  p3.recovery.session_purge:
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    backup_dir: /var/lib/p3/backups
  register: purge

- name: The runbook's behaviour (every session, every user logged out), bounded
  p3.recovery.session_purge:
    mode: all
    allow_all: true
    max_keys: 2000000
"""

RETURN = r"""
changed:
  description: True when at least one key was removed (in check mode, would be removed).
  returned: always
  type: bool
removed:
  description: Keys removed (in check mode, that would be removed).
  returned: always
  type: int
  sample: 20
scanned:
  description: Keys the SCAN pages returned.
  returned: always
  type: int
matched:
  description: Keys chosen for removal (corrupt ones, or all), before the O(max_keys) cap.
  returned: always
  type: int
vanished:
  description: Chosen (and backed-up) keys that were gone or had changed when the compare-and-delete ran (left
    alone).
  returned: always
  type: int
unresolved:
  description: Keys of a compare-and-delete call that failed and could not be checked again before the deadline
    (each has its backup line; they may or may not be gone). Non-zero only with an error in RV(errors).
  returned: always
  type: int
by_reason:
  description: Removed keys per reason (C(all) in O(mode=all)).
  returned: always
  type: dict
capped:
  description: The run stopped at O(max_keys); run again to continue.
  returned: always
  type: bool
mode:
  description: The mode used.
  returned: always
  type: str
pattern:
  description: The pattern scanned.
  returned: always
  type: str
cluster:
  description: Whether the target is a Redis Cluster.
  returned: always
  type: bool
max_keys:
  description: The cap in force.
  returned: always
  type: int
pages:
  description: SCAN pages processed.
  returned: always
  type: int
seconds:
  description: Wall time of the purge.
  returned: always
  type: float
keys_per_second:
  description: RV(removed) / RV(seconds).
  returned: always
  type: float
max_page_ms:
  description: Longest time Redis spent on one page script (the script reads the server clock at its start and
    end) - how long other clients of that node had to wait at most because of the purge.
  returned: always
  type: float
nodes:
  description: Per master - C(address), C(scanned), C(matched), C(removed), C(seconds), C(error).
  returned: always
  type: list
  elements: dict
unreadable:
  description: Masters that own slots but could not be reached (not purged).
  returned: always
  type: list
  elements: str
errors:
  description:
    - One line per master that failed mid-run (the run continues with the other masters), and a C(backup:) line
      when the backup file could not be written (nothing more is removed anywhere).
  returned: always
  type: list
  elements: str
backup:
  description:
    - C(path) (absolute), C(entries) (lines written, each fsynced before its key was removed) and C(fsyncs) of the
      backup file.
    - Null in check mode, with O(backup=false), or when no key was chosen (no file is left behind then).
  returned: always
  type: dict
  sample: {"path": "/srv/ops/backups/sessions-corrupt-20261128T140303.123456Z.jsonl", "entries": 20, "fsyncs": 1}
timeline:
  description: What was done, for the incident timeline - C(ts), C(action), C(target), C(detail).
  returned: always
  type: list
  elements: dict
"""

import os

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Module
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, fail_clean, timeline_entry
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisTarget, redis_argument_spec
from ansible_collections.p3.recovery.plugins.module_utils.sessions import (
    SESSION_ARGUMENT_SPEC,
    backup_path,
    purge,
)


def main():
    argument_spec = redis_argument_spec(
        mode=dict(type="str", choices=["corrupt", "all"], default="corrupt"),
        allow_all=dict(type="bool", default=False),
        max_keys=dict(type="int", default=10000, no_log=False),
        backup=dict(type="bool", default=True),
        backup_dir=dict(type="path", default="backups"),
        backup_path=dict(type="path"),
    )
    argument_spec.update(SESSION_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p["mode"] == "all" and not p["allow_all"]:
        module.fail_json(msg="mode=all removes every session (every user is logged out): set allow_all=true to do it")
    if p["max_keys"] is None or p["max_keys"] < 1:
        module.fail_json(msg="max_keys must be >= 1, got %s" % p["max_keys"])
    path = None
    if p["backup"]:
        path = p["backup_path"] or backup_path(p["backup_dir"], p["mode"])
        if os.path.exists(path):
            module.fail_json(msg="backup file %s already exists; refusing to overwrite it" % path)
    target = RedisTarget(module)
    try:
        result = purge(target.settings, p, mode=p["mode"], max_keys=p["max_keys"], backup_file=path,
                       check_mode=module.check_mode)
    except P3Error as e:
        fail_clean(module, e)
    where = ",".join(n["address"] for n in result["nodes"]) or "no master"
    verb = "would remove" if module.check_mode else "removed"
    reasons = ", ".join("%s %d" % kv for kv in sorted(result["by_reason"].items()))
    detail = "%s %d %s keys matching %s of %d scanned%s%s%s" % (
        verb, result["removed"], "corrupt" if p["mode"] == "corrupt" else "(all)", result["pattern"],
        result["scanned"], (" (%s)" % reasons) if reasons else "",
        "; capped at %d" % p["max_keys"] if result["capped"] else "",
        "; backup %s" % result["backup"]["path"] if result["backup"] else "")
    result["timeline"] = [timeline_entry("session_purge", where, detail)]
    result["changed"] = result["removed"] > 0
    if result["errors"] or result["unreadable"]:
        problems = result["errors"] + ["%s unreachable" % a for a in result["unreadable"]]
        module.fail_json(msg="session purge incomplete: %s (%s)" % ("; ".join(problems), detail), **result)
    result["msg"] = detail
    module.exit_json(**result)


if __name__ == "__main__":
    main()
