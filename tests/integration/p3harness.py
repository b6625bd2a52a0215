"""Integration harness (helpers; the fixtures are in conftest.py): the real lab and playbook runs through ansible-runner.

Tests import from here (`from p3harness import ...`), never from conftest, so the unit and integration trees can
run in one pytest session.

Tests drive playbooks against the lab's real services and assert on real state read straight from them
(`lab/p3lab status --json`, redis-py, psycopg2), not only on what the playbook printed.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PY = sys.executable
LAB = os.path.join(ROOT, "lab", "p3lab")
LAB_DIR = os.environ.get("P3LAB_DIR", os.path.join(ROOT, ".lab"))
INVENTORY = os.path.join(ROOT, "lab", "inventory.yml") if "P3LAB_DIR" not in os.environ else os.path.join(LAB_DIR, "inventory.yml")
BIN = os.path.dirname(PY)
LAB_SECRETS_HINT = ("p3admin-lab-secret", "p3redis-lab-secret", "p3app-lab-pw")
HANG_GUARD = 300  # seconds: a run that takes longer than this is a hang, not a slow probe


def lab(*args, check=True, timeout=180):
    """Run the lab CLI; returns its stdout."""
    proc = subprocess.run([PY, LAB] + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("p3lab %s failed (%d):\n%s\n%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def lab_status():
    return json.loads(lab("status", "--json"))


def lab_fault(name):
    """Inject a fault; returns the JSON the lab printed about what it did."""
    out = lab("fault", name)
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def base_env(extra=None):
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    # the incident callback (enabled in ansible.cfg) writes here unless a test says otherwise
    env["P3_INCIDENT_DIR"] = os.path.join(ROOT, ".state", "incidents")
    env.pop("P3_INCIDENT_ID", None)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("REDIS_PASSWORD", None)
    if extra:
        env.update(extra)
    return env


class Run(object):
    """The outcome of one playbook run: rc, full stdout, per-task results, set_stats data."""

    def __init__(self, rc, stdout, events):
        self.rc = rc
        self.stdout = stdout
        self.events = events

    def results(self, task):
        """Every result (all hosts) of the task whose name is `task`."""
        out = []
        for ev in self.events:
            data = ev.get("event_data", {})
            if ev.get("event", "").startswith("runner_on_") and data.get("task") == task and "res" in data:
                out.append(data["res"])
        return out

    def result(self, task):
        res = self.results(task)
        assert res, "task %r did not run; output:\n%s" % (task, self.stdout[-3000:])
        return res[-1]

    def failed(self, task):
        """Whether the (last) result of the task is a failure (ignore_errors keeps the run going)."""
        evs = [ev for ev in self.events if ev.get("event", "").startswith("runner_on_")
               and ev.get("event_data", {}).get("task") == task and "res" in ev.get("event_data", {})]
        return bool(evs) and evs[-1]["event"] == "runner_on_failed"

    def _stats_event(self):
        for ev in self.events:
            if ev.get("event") == "playbook_on_stats":
                return ev.get("event_data", {})
        return {}

    @property
    def stats(self):
        return self._stats_event().get("artifact_data", {})

    @property
    def changed(self):
        return self._stats_event().get("changed", {})

    def changed_tasks(self):
        """(host, task, reason or msg) of every result that reported changed: what an assertion on changed says."""
        out = []
        for ev in self.events:
            data = ev.get("event_data", {})
            res = data.get("res") or {}
            if ev.get("event", "").startswith("runner_on_") and isinstance(res, dict) and res.get("changed"):
                out.append((data.get("host"), data.get("task"), res.get("reason") or res.get("msg")))
        return out


def run_playbook(playbook, extravars=None, check=False, verbosity=0, inventory=None, env=None, limit=None,
                 timeout=HANG_GUARD, extravars_file=None, on_start=None):
    """timeout: hang guard (runner status 'timeout', rc 254). extravars_file: passed as -e @file, the way
    secrets should be. on_start(): called in this thread while the run goes on (the run is async then)."""
    import ansible_runner

    path = playbook if os.path.isabs(playbook) else os.path.join(ROOT, "playbooks", playbook)
    tmp = tempfile.mkdtemp(prefix="p3run-")
    cmdline = []
    if check:
        cmdline.append("--check")
    if extravars_file:
        cmdline += ["-e", "@" + extravars_file]
    try:
        start = ansible_runner.run_async if on_start else ansible_runner.run
        r = start(
            private_data_dir=tmp,
            playbook=path,
            inventory=inventory or INVENTORY,
            extravars=extravars or {},
            cmdline=" ".join(cmdline) or None,
            limit=limit,
            verbosity=verbosity or None,
            envvars=base_env(env),
            quiet=True,
            timeout=timeout,
            project_dir=ROOT,
        )
        if on_start:
            thread, r = r
            try:
                on_start()
            finally:
                thread.join()
        stdout = r.stdout.read()
        events = list(r.events)
        run = Run(r.rc, stdout, events)
        run.status = r.status
        return run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_collection_importable():
    """Make ansible_collections.p3.recovery importable in this process (a symlink <state>/unit-path/.../recovery ->
    the repository root, as the unit tests do), for tests that call module_utils directly."""
    base = os.path.join(ROOT, ".state", "unit-path")
    link = os.path.join(base, "ansible_collections", "p3", "recovery")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
    if base not in sys.path:
        sys.path.insert(0, base)



def throwaway_redis(prefix="p3test-redis-", decode_responses=False, **kw):
    """A standalone redis-server without persistence on a free loopback port in a temporary dir, for tests that
    need a Redis of their own (not the lab's cluster): bench/benchlib.StandaloneRedis (.port, .client, stop());
    kw: binary, cluster (see there)."""
    bench = os.path.join(ROOT, "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from benchlib import StandaloneRedis
    return StandaloneRedis(prefix=prefix, socket_timeout=30, decode_responses=decode_responses, **kw)
