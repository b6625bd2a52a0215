"""recover_mesh.yml against the real lab: mesh-down -> recover -> peers back above the threshold and the relay
PSUBSCRIBEd again (read from every Redis node); the restart path; connection-storm detection against psutil's own
count; check mode publishes nothing; a second run changes nothing; bad input fails cleanly; no secret at -vvvv.
mesh_publish waits for a subscriber that is (re)connecting; the lab relay's idle subscription stays up.
"""
import glob
import json
import os
import tempfile
import threading
import time
import uuid

import psutil
import pytest
import redis

from p3harness import LAB_SECRETS, lab_fault, lab_info, lab_status, run_playbook
from p3harness import recover_mesh as recover

MIN_PEERS = 10  # the runbook's alert mesh_peer_count_low


def node_clients(**kw):
    """[(address, client)] of every lab Redis node."""
    info = lab_info()["redis"]
    opts = dict(socket_timeout=3, password=info["password"])
    opts.update(kw)
    out = []
    for address in info["nodes"]:
        host, port = address.split(":")
        out.append((address, redis.Redis(host=host, port=int(port), **opts)))
    return out


def pubsub_everywhere(channel="mesh:control"):
    """(NUMPAT summed over every node, subscribers of channel summed over every node), asked of each node."""
    numpat, subs = 0, 0
    for _address, c in node_clients():
        numpat += int(c.execute_command("PUBSUB", "NUMPAT"))
        subs += dict(c.pubsub_numsub(channel)).get(channel.encode(), 0)
    return numpat, subs


def app_connections():
    port = lab_info()["app"]["port"]
    return sum(1 for c in psutil.net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")


def control_subscribers():
    """{address: [client id]} of the connections subscribed to mesh:control, asked of every node."""
    out = {}
    for address, c in node_clients(decode_responses=True):
        for cl in c.client_list(_type="pubsub"):
            if int(cl.get("sub", 0)) > 0:
                out.setdefault(address, []).append(cl["id"])
    return out


@pytest.mark.valkey
def test_lab_relay_keeps_an_idle_subscription(healthy_lab):
    """The lab app's keepalive must count the PONG of its subscribed PING: with the relay down no message flows, and
    a relay that dropped and re-made its subscription every 25 s left windows where nobody listened on mesh:control
    (a recovery publishing then was refused)."""
    lab_fault("mesh-down")
    before = control_subscribers()
    assert sum(len(v) for v in before.values()) == 1, before
    time.sleep(32)  # > the relay's 25 s no-reply limit, with its 10 s keepalive PINGs in between
    assert control_subscribers() == before


def publish_playbook(tmp, channel, wait):
    path = os.path.join(tmp, "publish.yml")
    with open(path, "w") as f:
        json.dump([{"name": "publish", "hosts": "localhost", "gather_facts": False, "tasks": [{
            "name": "mesh_publish", "register": "out",
            "p3.recovery.mesh_publish": {"redis_nodes": "{{ p3_redis_nodes }}", "redis_password": "{{ p3_redis_password }}",
                                         "channel": channel, "payload": {"action": "test"}, "subscriber_wait": wait}}]}], f)
    return run_playbook(path)


def numsub_calls(c):
    return int(c.info("commandstats").get("cmdstat_pubsub|numsub", {}).get("calls", 0))


def late_subscriber(channel, got):
    """Subscribe to channel on the last lab node once somebody has counted its subscribers there (PUBSUB NUMSUB,
    read from INFO commandstats) and found none; put the first message's data into got."""
    c = node_clients(socket_timeout=30)[-1][1]
    calls = numsub_calls(c)

    def run():
        deadline = time.monotonic() + 60
        while numsub_calls(c) == calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        ps = c.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(channel)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = ps.get_message(timeout=1.0)
            if m and m["type"] == "message":
                got.append(m["data"])
                break
        ps.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.valkey
def test_publish_waits_for_a_subscriber_that_is_connecting(lab_up):
    channel = "mesh:test-%s" % uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        run = publish_playbook(tmp, channel, 1)  # nobody listens: refused after counting for 1 s
        assert run.rc != 0
        res = run.result("mesh_publish")
        assert res["published"] is False and res["subscribers"] == 0 and res["waited"] >= 1
        assert "nobody listens, counted for " in res["msg"] and "\n" not in res["msg"], res["msg"]

        got = []
        t = late_subscriber(channel, got)  # subscribes after the module's first count found nobody
        run = publish_playbook(tmp, channel, 20)
        t.join(35)
        assert run.rc == 0, run.stdout[-3000:]
        res = run.result("mesh_publish")
        assert res["published"] is True and res["subscribers"] == 1 and res["waited"] > 0, res
        assert res["subscribers_by_node"] == {lab_info()["redis"]["nodes"][-1]: 1}
        assert got == [b'{"action":"test"}']  # the subscriber really received it


@pytest.mark.valkey
def test_mesh_down_reconnected_peers_back(healthy_lab, report_dir):
    fault = lab_fault("mesh-down")
    assert fault["peers"] == 0
    assert pubsub_everywhere()[0] == 0  # the relay dropped its mesh:* pattern subscription
    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["healthy"] is True and report["changed"] is True, report["reason"]
    assert report["before"]["peers"]["peers"] == 0
    reconnect = report["actions"]["reconnect"]
    assert reconnect["published"] is True and reconnect["subscribers"] == 1
    assert json.loads(reconnect["payload"]) == {"action": "reconnect"}
    assert report["actions"]["restart"]["hosts"] == []  # the reconnect sufficed
    assert report["timeline"][0]["action"] == "mesh_publish"
    # real state: the peers are back and the relay is subscribed again
    st = lab_status()
    assert st["mesh"]["peers"] >= MIN_PEERS and st["mesh"]["relay"] == "up", st["mesh"]
    numpat, subs = pubsub_everywhere()
    assert numpat >= 1 and subs == 1


def test_check_mode_publishes_nothing(healthy_lab, report_dir):
    lab_fault("mesh-down")
    run, report = recover(report_dir, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["actions"]["reconnect"]["published"] is False
    assert report["actions"]["reconnect"]["subscribers"] == 1  # who would receive it
    time.sleep(2)
    st = lab_status()
    assert st["mesh"]["peers"] == 0 and st["mesh"]["relay"] == "down"
    assert pubsub_everywhere()[0] == 0


def test_second_run_changes_nothing(healthy_lab, report_dir):
    run, report = recover(report_dir)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["changed"] is False and report["actions"]["reconnect"] == {"skipped": True}
    assert run.changed.get("localhost", 0) == 0, run.changed
    assert lab_status()["mesh"]["peers"] >= MIN_PEERS


def test_restart_when_reconnect_is_not_allowed(healthy_lab, report_dir):
    pid_before = lab_status()["services"]["app"]["pid"]
    lab_fault("mesh-down")
    run, report = recover(report_dir, p3_mesh_reconnect=False)
    assert run.rc == 0, run.stdout[-3000:]
    assert report["healthy"] is True
    assert report["actions"]["restart"]["hosts"] == ["p3-lab-app"]
    st = lab_status()
    assert st["services"]["app"]["pid"] != pid_before
    assert st["mesh"]["peers"] >= MIN_PEERS


@pytest.mark.valkey
def test_connection_storm_detected(healthy_lab, report_dir):
    # a threshold below the peers' own connections: psutil on the app host must see them
    run, report = recover(report_dir, p3_mesh_storm_threshold=5, p3_mesh_restart_on_storm=False)
    assert run.rc == 0, run.stdout[-3000:]
    storm = report["before"]["storm"]
    assert len(storm) == 1 and storm[0]["healthy"] is False
    real = app_connections()
    assert abs(storm[0]["connections"] - real) <= 2 and storm[0]["connections"] >= 12, (storm[0], real)
    assert "storm" in storm[0]["reason"]
    assert report["actions"]["restart"]["hosts"] == []


BAD_INPUT = {
    "unreachable redis": ({"p3_redis_nodes": ["127.0.0.1:1"]}, "127.0.0.1:1"),
    "bad restart": ({"p3_mesh_restart_app": "maybe"}, "p3_mesh_restart_app must be never, auto or always"),
    "bad threshold": ({"p3_mesh_min_peers": "lots"}, "p3_mesh_min_peers must be an integer"),
    "bad subscriber wait": ({"p3_mesh_subscriber_wait": "a while"}, "p3_mesh_subscriber_wait must be a number >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_cleanly(lab_up, report_dir, case):
    extra, expected = BAD_INPUT[case]
    t0 = time.monotonic()
    run, report = recover(report_dir, p3_mesh_verify_timeout=2, **extra)
    assert time.monotonic() - t0 < 60
    assert run.rc != 0, run.stdout[-3000:]
    assert "Traceback" not in run.stdout
    failed = [ev["event_data"]["res"] for ev in run.events if ev.get("event") == "runner_on_failed"]
    msg = failed[-1]["msg"]
    assert "\n" not in msg and expected in msg, msg
    assert report is not None and report["healthy"] is False and report["changed"] is False


@pytest.mark.server_agnostic
def test_no_secret_in_output_at_vvvv(healthy_lab, report_dir):
    lab_fault("mesh-down")
    run, report = recover(report_dir, verbosity=4)
    assert run.rc == 0 and report["changed"] is True, run.stdout[-3000:]
    for secret in LAB_SECRETS:
        assert secret not in run.stdout, secret
    for path in glob.glob(os.path.join(report_dir, "*.json")):
        with open(path) as f:
            text = f.read()
        for secret in LAB_SECRETS:
            assert secret not in text, (secret, path)
