"""plugins/filter/session_bridge.py: the session_bridge role's input check, purge decision and restart decision
(golden cases from the Jinja they replaced, checked against it over 324 combinations, and 108 in check mode, before the move)."""
import pytest

from ansible_collections.p3.recovery.plugins.filter.session_bridge import (
    FilterModule, session_decision, session_input_errors, session_restart)

OK = {"healthy": True, "reason": "handshake 200 in 12 ms"}
BROKEN = {"healthy": False, "reason": "handshake 500: bridge error"}
SETTINGS = dict(store="redis", purge_mode="corrupt", max_corrupt=0, restart_app="auto", pattern="session:*",
                backup_dir="backups")
GOOD = dict(p3_session_purge_mode="corrupt", p3_session_allow_purge_all=False, p3_session_restart_app="auto",
            p3_session_max_keys=10000, p3_session_max_corrupt=0, p3_session_verify_timeout=20, p3_session_store="redis")


def decide(handshake=None, census=None, **settings):
    return session_decision(dict(handshake=handshake or OK, census=census if census is not None else {"keys": 40, "corrupt": 0}),
                            dict(SETTINGS, **settings))


def test_healthy_nothing_to_purge():
    d = decide()
    assert d == dict(store="redis", corrupt=0, handshake_ok=True, purge=False, clear_by_restart=False,
                     acted_or_broken=False, why="no corrupt session (40 sessions): nothing to purge")


def test_no_corrupt_session_but_the_handshake_fails():
    d = decide(BROKEN)
    assert d["purge"] is False and d["acted_or_broken"] is True
    assert d["why"] == "no corrupt session (40 sessions): nothing to purge; handshake failing: handshake 500: bridge error"


def test_more_corrupt_sessions_than_tolerated_are_purged():
    d = decide(census={"keys": 42, "corrupt": 3}, max_corrupt="2")
    assert d["purge"] is True and d["corrupt"] == 3 and d["acted_or_broken"] is True
    assert d["why"] == "3 corrupt sessions > 2: purge them (backup in backups)"


def test_corrupt_sessions_within_the_tolerance_are_left():
    d = decide(census={"keys": 42, "corrupt": 3}, max_corrupt=5)
    assert d["purge"] is False and d["acted_or_broken"] is False
    assert d["why"] == "no corrupt session (42 sessions): nothing to purge"


def test_mode_all_purges_every_key():
    d = decide(purge_mode="all")
    assert d["purge"] is True and d["clear_by_restart"] is False and d["acted_or_broken"] is True
    assert d["why"] == "mode all (p3_session_allow_purge_all): remove every session:* key"


@pytest.mark.parametrize("handshake,why", [
    (OK, "sessions in process memory: nothing in Redis to purge; handshake ok: nothing to do"),
    (BROKEN, "sessions in process memory: nothing in Redis to purge; handshake failing: handshake 500: bridge error"),
])
def test_memory_store_has_nothing_to_purge(handshake, why):
    d = decide(handshake, census={"skipped": True}, store="memory")
    assert d["purge"] is False and d["corrupt"] is None and d["clear_by_restart"] is False and d["why"] == why


@pytest.mark.parametrize("restart,suffix", [("auto", ""), ("never", " - but p3_session_restart_app=never: not restarting")])
def test_memory_store_mode_all_clears_by_restart(restart, suffix):
    d = decide(census={"skipped": True}, store="memory", purge_mode="all", restart_app=restart)
    assert d["purge"] is False and d["clear_by_restart"] is True and d["acted_or_broken"] is True
    assert d["why"] == ("sessions in process memory: mode all (p3_session_allow_purge_all): restart the app to "
                        "clear every session" + suffix)


SKIPPED = {"skipped": True}


@pytest.mark.parametrize("decision,settled,mode,check,wanted,why", [
    (dict(acted_or_broken=True), SKIPPED, "never", False, False, "p3_session_restart_app=never"),
    (dict(acted_or_broken=True), {"healthy": False, "reason": "x"}, "auto", True, False, "check mode"),
    (dict(acted_or_broken=False), SKIPPED, "always", False, False, "nothing was broken"),
    (dict(acted_or_broken=True, clear_by_restart=True), SKIPPED, "auto", False, True,
     "sessions in process memory, mode all: a restart clears every session (every user logged out)"),
    (dict(acted_or_broken=True), SKIPPED, "always", False, True, "p3_session_restart_app=always"),
    (dict(acted_or_broken=True), {"healthy": False, "reason": "still 500"}, "auto", False, True,
     "handshake still failing after the purge: still 500"),
    (dict(acted_or_broken=True), {"healthy": True, "reason": "ok"}, "auto", False, False,
     "handshake works without a restart"),
    (dict(acted_or_broken=True), SKIPPED, "auto", False, False, "handshake works without a restart"),
])
def test_restart(decision, settled, mode, check, wanted, why):
    r = session_restart(decision, settled, dict(restart_app=mode, check_mode=check))
    assert (r["wanted"], r["why"]) == (wanted, why)
    assert r["settled"] == (None if settled.get("skipped") else settled["healthy"])


def test_good_input_has_no_error():
    assert session_input_errors(GOOD) == []
    assert session_input_errors(dict(GOOD, p3_session_purge_mode="all", p3_session_allow_purge_all="yes")) == []


@pytest.mark.parametrize("name,value,msg", [
    ("p3_session_purge_mode", "some", "p3_session_purge_mode must be corrupt or all, got 'some'"),
    ("p3_session_restart_app", "maybe", "p3_session_restart_app must be never, auto or always, got 'maybe'"),
    ("p3_session_max_keys", 0, "p3_session_max_keys must be an integer >= 1, got 0"),
    ("p3_session_max_keys", "lots", "p3_session_max_keys must be an integer >= 1, got 'lots'"),
    ("p3_session_max_corrupt", -1, "p3_session_max_corrupt must be an integer >= 0, got -1"),
    ("p3_session_verify_timeout", "a while", "p3_session_verify_timeout must be a number >= 0, got 'a while'"),
    ("p3_session_store", "disk", "p3_session_store must be redis or memory, got 'disk'"),
    ("p3_session_purge_mode", "all", "p3_session_purge_mode=all removes every session (every user is logged out): "
                                     "set p3_session_allow_purge_all=true to do it"),
])
def test_bad_input_is_one_line_naming_the_variable(name, value, msg):
    assert session_input_errors(dict(GOOD, **{name: value})) == [msg]


def test_registered():
    f = FilterModule().filters()
    assert (f["session_decision"], f["session_restart"], f["session_input_errors"]) == (
        session_decision, session_restart, session_input_errors)
