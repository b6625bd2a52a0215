"""plugins/filter/mesh_relay.py: the mesh_relay role's input check, reconnect decision and restart decision
(golden cases from the Jinja they replaced, checked against it over 300 sampled combinations, and 60 in check mode, before the move)."""
import pytest

from ansible_collections.p3.recovery.plugins.filter.mesh_relay import (
    FilterModule, mesh_decision, mesh_input_errors, mesh_restart)

PEERS_OK = {"healthy": True, "reason": "12 peers >= 10"}
PEERS_LOW = {"healthy": False, "reason": "2 peers < 10"}
PUBSUB_OK = {"healthy": True, "reason": "ok", "channels": {"mesh:control": 2}}
PUBSUB_NONE = {"healthy": False, "reason": "no subscriber", "channels": {}}
NO_STORM = {"results": [{"healthy": True, "reason": "20 connections"}, {"skipped": True}]}
STORM = {"results": [{"healthy": False, "reason": "1500 connections > 1000 on app1"},
                     {"healthy": False, "reason": "1200 connections > 1000 on app2"}]}
SETTINGS = dict(store="redis", reconnect=True, control_channel="mesh:control", control_message={"action": "reconnect"})
GOOD = dict(p3_mesh_restart_app="auto", p3_mesh_min_peers=10, p3_mesh_storm_threshold=1000, p3_mesh_app_port=5000,
            p3_mesh_control_channel="mesh:control", p3_mesh_settle_timeout=10, p3_mesh_verify_timeout=30,
            p3_mesh_subscriber_wait=10, p3_mesh_store="redis")


def decide(peers=None, pubsub=None, storm=None, **settings):
    return mesh_decision(dict(peers=peers or PEERS_OK, pubsub=pubsub or PUBSUB_OK, storm=storm or NO_STORM),
                         dict(SETTINGS, **settings))


def test_healthy_mesh_nothing_to_do():
    d = decide()
    assert d == dict(store="redis", broken=False, storm=False, storms=[], control_subscribers=2, reconnect=False,
                     why="mesh healthy (12 peers >= 10): nothing to do")


def test_low_peers_with_a_listener_publish_the_reconnect():
    d = decide(PEERS_LOW)
    assert d["broken"] is True and d["reconnect"] is True
    assert d["why"] == 'mesh unhealthy (2 peers < 10): publish {"action": "reconnect"} on mesh:control (2 subscribers)'


def test_nobody_listens_restart():
    d = decide(PEERS_LOW, PUBSUB_NONE)
    assert d["reconnect"] is False and d["control_subscribers"] == 0
    assert d["why"] == "mesh unhealthy (2 peers < 10; no subscriber): nobody listens on mesh:control: restart the app"


def test_reconnect_off():
    d = decide(PEERS_LOW, reconnect="no")
    assert d["reconnect"] is False
    assert d["why"] == "mesh unhealthy (2 peers < 10): p3_mesh_reconnect=false: restart the app"


def test_pubsub_alone_unhealthy_is_broken():
    d = decide(PEERS_OK, dict(PUBSUB_NONE, channels={"mesh:control": 1}))
    assert d["broken"] is True and d["reconnect"] is True
    assert d["why"].startswith("mesh unhealthy (no subscriber): publish")


def test_memory_store_restart_only():
    d = decide(PEERS_LOW, {"skipped": True}, store="memory")
    assert d["broken"] is True and d["reconnect"] is False and d["control_subscribers"] == 0
    assert d["why"] == ("mesh unhealthy (2 peers < 10): peers in process memory, no reconnect message exists: "
                        "restart the app")
    assert decide(PEERS_OK, {"skipped": True}, store="memory")["broken"] is False


def test_connection_storm_on_a_healthy_mesh():
    d = decide(storm=STORM)
    assert d["broken"] is False and d["storm"] is True
    assert d["storms"] == ["1500 connections > 1000 on app1", "1200 connections > 1000 on app2"]
    assert d["why"] == "connection storm: 1500 connections > 1000 on app1; 1200 connections > 1000 on app2"


def test_broken_mesh_during_a_storm_says_broken():
    d = decide(PEERS_LOW, storm=STORM)
    assert d["storm"] is True and d["why"].startswith("mesh unhealthy (2 peers < 10)")


SKIPPED = {"skipped": True}
BROKEN = dict(broken=True, storm=False, storms=[], why="mesh unhealthy (x): nobody listens on mesh:control: restart the app")
HEALTHY = dict(broken=False, storm=False, storms=[], why="mesh healthy")
STORMY = dict(broken=False, storm=True, storms=["1500 > 1000"], why="connection storm: 1500 > 1000")


@pytest.mark.parametrize("decision,settled,mode,on_storm,check,wanted,why", [
    (BROKEN, SKIPPED, "never", True, False, False, "p3_mesh_restart_app=never"),
    (BROKEN, SKIPPED, "auto", True, True, False, "check mode"),
    (STORMY, SKIPPED, "auto", True, False, True, "connection storm: 1500 > 1000"),
    (STORMY, SKIPPED, "auto", False, False, False, "mesh was healthy"),
    (HEALTHY, SKIPPED, "always", True, False, False, "mesh was healthy"),
    (BROKEN, SKIPPED, "always", False, False, True, "p3_mesh_restart_app=always"),
    (BROKEN, {"healthy": True, "reason": "ok"}, "auto", False, False, False, "peers came back after the reconnect"),
    (BROKEN, {"healthy": False, "reason": "3 peers < 10"}, "auto", False, False, True,
     "peers still low 10 s after the reconnect: 3 peers < 10"),
    (BROKEN, SKIPPED, "auto", False, False, True,
     "no reconnect was possible: mesh unhealthy (x): nobody listens on mesh:control: restart the app"),
])
def test_restart(decision, settled, mode, on_storm, check, wanted, why):
    r = mesh_restart(decision, settled, dict(restart_app=mode, restart_on_storm=on_storm, settle_timeout=10,
                                             check_mode=check))
    assert (r["wanted"], r["why"]) == (wanted, why)


def test_good_input_has_no_error():
    assert mesh_input_errors(GOOD) == []
    assert mesh_input_errors(dict(GOOD, p3_mesh_app_port="5000", p3_mesh_settle_timeout="1.5")) == []


@pytest.mark.parametrize("name,value,msg", [
    ("p3_mesh_restart_app", "maybe", "p3_mesh_restart_app must be never, auto or always, got 'maybe'"),
    ("p3_mesh_min_peers", "lots", "p3_mesh_min_peers must be an integer >= 0, got 'lots'"),
    ("p3_mesh_storm_threshold", -1, "p3_mesh_storm_threshold must be an integer >= 0, got -1"),
    ("p3_mesh_app_port", 0, "p3_mesh_app_port must be an integer > 0 and <= 65535, got 0"),
    ("p3_mesh_app_port", 70000, "p3_mesh_app_port must be an integer > 0 and <= 65535, got 70000"),
    ("p3_mesh_control_channel", "", "p3_mesh_control_channel must not be empty"),
    ("p3_mesh_subscriber_wait", "a while", "p3_mesh_subscriber_wait must be a number >= 0, got 'a while'"),
    ("p3_mesh_store", "disk", "p3_mesh_store must be redis or memory, got 'disk'"),
])
def test_bad_input_is_one_line_naming_the_variable(name, value, msg):
    assert mesh_input_errors(dict(GOOD, **{name: value})) == [msg]


def test_registered():
    f = FilterModule().filters()
    assert (f["mesh_decision"], f["mesh_restart"], f["mesh_input_errors"]) == (mesh_decision, mesh_restart,
                                                                               mesh_input_errors)
