"""Issue 16 §5 / issue 18 §5: the built collection (make build: ansible-galaxy collection build, galaxy.yml
build_ignore) ships what a Galaxy user needs - plugins, roles, playbooks, meta, docs, profiles, changelogs, README,
the execution environment's requirements - and not the lab, bench, scripts, tests or dev tooling."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_the_tarball_ships_the_collection_only(tmp_path):
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    proc = subprocess.run([galaxy, "collection", "build", "--force", "--output-path", str(tmp_path), ROOT],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-1000:]
    [name] = [n for n in os.listdir(str(tmp_path)) if n.endswith(".tar.gz")]
    with tarfile.open(str(tmp_path / name)) as tar:
        files = set(m.name for m in tar.getmembers() if m.isfile())
    tops = set(f.split("/", 1)[0] for f in files)
    assert tops <= {"FILES.json", "MANIFEST.json", "README.md", "bindep.txt", "requirements.txt", "changelogs", "docs",
                    "meta", "playbooks", "plugins", "profiles", "roles", "extensions"}, sorted(tops)
    for must in ("plugins/modules/redis_probe.py", "plugins/module_utils/common.py", "meta/runtime.yml",
                 "meta/execution-environment.yml", "playbooks/recover_redis.yml", "roles/database/README.md",
                 "roles/database/meta/main.yml", "roles/database/meta/argument_specs.yml", "changelogs/changelog.yaml",
                 # Event-Driven Ansible content (docs/eda.md): the event source and both rulebooks
                 "extensions/eda/plugins/event_source/alertmanager.py", "extensions/eda/rulebooks/p3_recovery.yml",
                 "extensions/eda/rulebooks/p3_recovery_controller.yml"):
        assert must in files, must
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".tar.gz"))]
