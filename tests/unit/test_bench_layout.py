"""Issue 16 §5: the bench entries share their helpers through bench/benchlib.py (no import through
sys.modules['__main__']), and every entry finds the collection where scripts/setup.sh puts it (make bench on a
fresh clone, before any test created .state/unit-path)."""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH = os.path.join(ROOT, "bench")
ENTRIES = ("alert_loop", "anchor_retry", "recover_redis", "run", "session_purge")


def _fresh(code):
    return subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=""))


def test_each_entry_imports_alone_and_shares_benchlib():
    for name in ENTRIES:
        proc = _fresh("import sys; sys.path.insert(0, '.'); import %s, benchlib; print('ok')" % name)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (name, proc.stderr[-500:])
    proc = _fresh("import sys; sys.path.insert(0, '.'); import recover_redis, benchlib; "
                  "print(recover_redis.lab is benchlib.lab and recover_redis.lab_vars is benchlib.lab_vars)")
    assert proc.stdout.strip() == "True", proc.stderr[-500:]
    for name in ENTRIES + ("benchlib",):
        assert "sys.modules" not in open(os.path.join(BENCH, name + ".py")).read(), name


def test_the_collection_path_of_the_bench_is_the_one_setup_makes():
    setup = open(os.path.join(ROOT, "scripts", "setup.sh")).read()
    assert 'ln -sfn "$ROOT" "$STATE/collections/ansible_collections/p3/recovery"' in setup
    for name in ENTRIES:
        assert "unit-path" not in open(os.path.join(BENCH, name + ".py")).read(), name
    # What anchor_retry's RSS child and session_purge import, in a fresh interpreter.
    proc = _fresh("import sys; sys.path.insert(0, '.'); import benchlib; sys.path.insert(0, benchlib.COLLECTIONS); "
                  "from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue; print('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
