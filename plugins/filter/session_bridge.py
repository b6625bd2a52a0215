# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decisions of the session_bridge role (p3.recovery.recover_sessions): its input check, purge or not, and
restart or not. Each filter is documented in its <name>.yml."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.p3.recovery.plugins.plugin_utils.inputs import input_errors

RESTART_MODES = ["never", "auto", "always"]

# name, kind, low, low inclusive, high (plugin_utils.inputs)
NUMBER_RULES = [
    ("p3_session_max_keys", "integer", 1, True, None),
    ("p3_session_max_corrupt", "integer", 0, True, None),
    ("p3_session_verify_timeout", "number", 0, True, None),
]
CHOICES = [
    ("p3_session_purge_mode", ["corrupt", "all"]),
    ("p3_session_restart_app", RESTART_MODES),
    ("p3_session_store", ["redis", "memory"]),
]


def session_input_errors(values):
    """One line per bad variable of the session_bridge role (values: name -> value); empty when all are fine."""
    errors = input_errors(values, NUMBER_RULES, CHOICES)
    gate = boolean(values.get("p3_session_allow_purge_all"), strict=False)
    if values.get("p3_session_purge_mode") == "all" and not gate:
        errors.append("p3_session_purge_mode=all removes every session (every user is logged out): set "
                      "p3_session_allow_purge_all=true to do it")
    return errors


def _skipped(result):
    return not result or bool(result.get("skipped"))


def session_decision(probes, settings):
    """Purge or not, from the probes before the act.

    probes: handshake (session_handshake_probe result), census (session_census result; skipped when the sessions
    are in process memory). settings: store, purge_mode, max_corrupt, restart_app, pattern, backup_dir.
    Returns store, corrupt, handshake_ok, purge, clear_by_restart, acted_or_broken and why (one line).
    """
    handshake = probes.get("handshake") or {}
    census = probes.get("census") or {}
    memory = settings.get("store") == "memory"
    mode_all = settings.get("purge_mode") == "all"
    corrupt = 0 if memory else int(census.get("corrupt") or 0)
    too_many = corrupt > int(settings.get("max_corrupt") or 0)
    handshake_ok = bool(handshake.get("healthy"))
    if memory and mode_all:
        why = "sessions in process memory: mode all (p3_session_allow_purge_all): restart the app to clear every session"
        if settings.get("restart_app") == "never":
            why += " - but p3_session_restart_app=never: not restarting"
    elif memory:
        why = "sessions in process memory: nothing in Redis to purge; " + (
            "handshake ok: nothing to do" if handshake_ok else "handshake failing: %s" % handshake.get("reason"))
    elif mode_all:
        why = "mode all (p3_session_allow_purge_all): remove every %s key" % settings.get("pattern")
    elif too_many:
        why = "%d corrupt sessions > %s: purge them (backup in %s)" % (
            corrupt, settings.get("max_corrupt"), settings.get("backup_dir"))
    else:
        why = "no corrupt session (%s sessions): nothing to purge%s" % (
            census.get("keys"), "" if handshake_ok else "; handshake failing: %s" % handshake.get("reason"))
    return dict(
        store=settings.get("store"),
        corrupt=None if memory else corrupt,
        handshake_ok=handshake_ok,
        # memory: nothing in Redis to purge ("all" means a restart there, below).
        purge=not memory and (mode_all or too_many),
        # memory + mode all: clear every session the only way P3 allows, a restart (gated like the purge of all).
        clear_by_restart=memory and mode_all,
        acted_or_broken=mode_all or too_many or not handshake_ok,
        why=why,
    )


def session_restart(decision, settled, settings):
    """Restart the app or not, after the purge: wanted, why and settled (the handshake right after the purge:
    true, false or null when it was not probed).

    decision: the session_decision; settled: the session_handshake_probe result after the purge (skipped when not
    probed); settings: restart_app, check_mode.
    """
    settled = settled or {}
    ok = None if _skipped(settled) else settled.get("healthy")
    mode = settings.get("restart_app")
    check_mode = boolean(settings.get("check_mode", False), strict=False)
    acted_or_broken = bool(decision.get("acted_or_broken"))
    clear = bool(decision.get("clear_by_restart"))
    wanted = (not check_mode and mode != "never"
              and ((mode == "always" and acted_or_broken) or (mode == "auto" and ok is False) or clear))
    if mode == "never":
        why = "p3_session_restart_app=never"
    elif check_mode:
        why = "check mode"
    elif not acted_or_broken:
        why = "nothing was broken"
    elif clear:
        why = "sessions in process memory, mode all: a restart clears every session (every user logged out)"
    elif mode == "always":
        why = "p3_session_restart_app=always"
    elif ok is False:
        why = "handshake still failing after the purge: %s" % settled.get("reason", "")
    else:
        why = "handshake works without a restart"
    return dict(wanted=wanted, why=why, settled=ok)


class FilterModule(object):
    def filters(self):
        return {
            "session_decision": session_decision,
            "session_input_errors": session_input_errors,
            "session_restart": session_restart,
        }
