"""module_utils/haproxy.py: parsing of the runtime API's answers, the drain refusal, the total deadline."""
import os
import socket
import threading
import time

import pytest

from ansible_collections.p3.recovery.plugins.module_utils import haproxy as hp
from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline

HEAD = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
        "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
        "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
        "srv_check_addr srv_agent_addr srv_agent_port")
STATE = "1\n" + HEAD + """
3 p3_app 1 app1 127.0.0.1 2 0 1 1 7 15 3 3 6 0 0 0 - 14030 - 0 0 - - 0
3 p3_app 2 app2 127.0.0.1 2 8 1 1 1 15 3 3 6 0 0 0 - 14031 - 0 0 - - 0
3 p3_app 3 app3 127.0.0.1 0 0 1 1 0 15 3 3 6 0 0 0 - 14032 - 0 0 - - 0
"""
STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status
p3_front,FRONTEND,,,1,2,2000,10,,,,,,,,,,OPEN
p3_app,app1,0,0,2,3,,50,,,,,,,,0,0,UP
p3_app,app2,0,0,1,3,,50,,,,,,,,0,0,DRAIN
p3_app,app3,0,0,0,3,,50,,,,,,,,0,0,DOWN
p3_app,BACKEND,0,0,3,5,,150,,,,,,,,0,0,UP
"""


def view():
    st = hp.parse_servers_state(STATE)
    stats = {(r["pxname"], r["svname"]): r for r in hp.parse_stat(STAT)}
    return {n: hp.server_view(s, stats[("p3_app", n)]) for n, s in st.items()}


def test_server_view_reads_admin_op_status_and_sessions():
    v = view()
    assert v["app1"] == {"admin": "ready", "op": "running", "status": "UP", "scur": 2, "up": True, "healthy": True}
    assert v["app2"]["admin"] == "drain" and v["app2"]["scur"] == 1 and v["app2"]["up"]
    assert v["app3"]["op"] == "stopped" and not v["app3"]["up"]
    assert hp.serving(v) == ["app1"]


def test_drain_refusal_never_takes_the_last_serving_server():
    v = view()
    assert "refusing to drain app1" in hp.drain_refusal(v, "app1")
    # app3 is down and app2 drained: app1 is the last one serving; draining app3 leaves app1
    assert hp.drain_refusal(v, "app3") is None
    assert hp.drain_refusal(v, "app3", min_serving=2).startswith("refusing")
    assert "no server app9" in hp.drain_refusal(v, "app9")


def test_parsers_reject_garbage():
    with pytest.raises(hp.HAProxyError):
        hp.parse_stat("Unknown command\n")
    with pytest.raises(hp.HAProxyError):
        hp.parse_servers_state("Permission denied\n")


def _server(path, answer, delay=0.0):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve():
        while True:
            try:
                c = srv.accept()[0]
            except OSError:
                return
            c.recv(1024)
            time.sleep(delay)
            try:
                c.sendall(answer)
                c.close()
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_command_and_set_state_error(tmp_path):
    path = str(tmp_path / "a.sock")
    srv = _server(path, b"No such server.\n")
    try:
        api = hp.RuntimeAPI(path, timeout=2)
        assert api.command("help") == "No such server.\n"
        with pytest.raises(hp.HAProxyError, match="set server be/x state drain: No such server"):
            api.set_state("be", "x", "drain")
    finally:
        srv.close()


def test_a_silent_socket_is_cut_by_the_total_deadline(tmp_path):
    path = str(tmp_path / "s.sock")
    srv = _server(path, b"late\n", delay=5)
    try:
        api = hp.RuntimeAPI(path, timeout=10, deadline=Deadline(0.5))
        # the server would answer after 5 s: an answer would return "late" instead of raising
        with pytest.raises(hp.HAProxyError, match="timed out"):
            api.command("show stat")
    finally:
        srv.close()


def test_missing_socket_is_one_line(tmp_path):
    with pytest.raises(hp.HAProxyError) as e:
        hp.RuntimeAPI(os.path.join(str(tmp_path), "none.sock"), timeout=1).command("show stat")
    assert "none.sock" in str(e.value) and "\n" not in str(e.value)
