"""anvil (foundry) dev chain."""
import os
import shutil
import subprocess

from .common import (ANCHOR_WALLET, CHAIN_ID, REPO, LabError, live_pid, port_listening, rpc, stop_pid,
                     wait_until)


def binary():
    env = os.environ.get("P3LAB_ANVIL")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise LabError("P3LAB_ANVIL=%s is not an executable" % env)
    local = os.path.join(REPO, "node_modules", "@foundry-rs", "anvil-linux-amd64", "bin", "anvil")
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("anvil")
    if found:
        return found
    raise LabError("missing binary: anvil (run `npm install` in %s, or set P3LAB_ANVIL)" % REPO)


def chain_id(lab, timeout=1.5):
    return int(rpc(lab.rpc_url, "eth_chainId", timeout=timeout), 16)


def answering(lab):
    try:
        return chain_id(lab) == CHAIN_ID
    except Exception:  # noqa: BLE001
        return False


def start(lab):
    """Start anvil unless it runs. Returns True when it was started."""
    pid = live_pid(lab.anvil_pidfile)
    if pid and answering(lab):
        return False
    if pid:
        stop_pid(pid, 3)
    if port_listening(lab.anvil_port):
        raise LabError("port %d is in use by another process (needed by anvil)" % lab.anvil_port)
    exe = binary()
    os.makedirs(lab.anvil_dir, exist_ok=True)
    with open(lab.anvil_log, "ab") as logf:
        proc = subprocess.Popen([exe, "--host", "127.0.0.1", "--port", str(lab.anvil_port), "--chain-id", str(CHAIN_ID)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=lab.anvil_dir,
                                env=lab.child_env(), start_new_session=True, close_fds=True)
    with open(lab.anvil_pidfile, "w") as fh:
        fh.write("%d\n" % proc.pid)

    def ready():
        if proc.poll() is not None:
            raise LabError("anvil exited with %s (see %s)" % (proc.returncode, lab.anvil_log))
        return answering(lab)

    deadline_what = "anvil on port %d (see %s)" % (lab.anvil_port, lab.anvil_log)
    # ready() raises LabError itself when the process died; wait_until swallows exceptions, so check explicitly
    if not wait_until(ready, 15, 0.05):
        if proc.poll() is not None:
            raise LabError("anvil exited with %s (see %s)" % (proc.returncode, lab.anvil_log))
        raise LabError("timed out waiting for %s" % deadline_what)
    return True


def stop(lab):
    pid = live_pid(lab.anvil_pidfile)
    if pid:
        stop_pid(pid, 5)


def balance(lab, addr=ANCHOR_WALLET, timeout=1.5):
    return int(rpc(lab.rpc_url, "eth_getBalance", [addr, "latest"], timeout=timeout), 16)


def set_balance(lab, wei, addr=ANCHOR_WALLET):
    rpc(lab.rpc_url, "anvil_setBalance", [addr, hex(wei)])
    got = balance(lab, addr)
    # the app may spend gas between the two calls: allow that, not a balance that did not move
    if got > wei or got < wei // 2:
        raise LabError("anvil_setBalance did not take: %s has %d wei" % (addr, got))
