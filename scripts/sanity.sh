#!/usr/bin/env bash
# ansible-test sanity, offline and without Docker.
#
# ansible-test must run from a path .../ansible_collections/<namespace>/<name>, so this keeps a copy of the
# collection's shippable files under .state/sanity/ansible_collections/p3/recovery (with its own `git init`, else
# ansible-test finds the project's .git above it, where .state is ignored, and sees no files at all).
# HOME and ANSIBLE_HOME point inside .state/sanity, so ansible-test's per-test virtualenvs and caches stay there.
# Its pip bootstrap script comes from a host that is unreachable here: a stand-in in its cache directory runs
# ensurepip and then pip install from PyPI.
#
# Usage: scripts/sanity.sh [extra ansible-test sanity args, e.g. --test validate-modules]
# Env:   P3_SANITY_TESTS="validate-modules pep8 ..." to run only those; PYTHON_VERSION (default 3.11);
#        P3_SANITY_PART=1 or 2 - one half of the tests (make test runs both side by side, each with a copy and
#        per-test venvs of its own under .state/sanity-<part>: one run alone left a core idle for about 2 minutes,
#        mostly while ansible-test installed its per-test venvs); part 1 also runs the galaxy check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
PART=${P3_SANITY_PART:-}
case "$PART" in ""|1|2) ;; *) printf '[sanity] P3_SANITY_PART must be 1 or 2 (got %s)\n' "$PART" >&2; exit 2 ;; esac
STATE=$ROOT/.state/sanity${PART:+-$PART}
COPY=$STATE/ansible_collections/p3/recovery
REAL_HOME=$HOME
export HOME=$STATE/home
export ANSIBLE_HOME=$HOME/.ansible
export LC_ALL=${LC_ALL:-C.UTF-8}
# python3.X on PATH must be the project's interpreter (ansible-test builds its per-test venvs from it).
export PATH="$VENV/bin:$PATH"
# Never leak the caller's Ansible settings into the tests.
unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS

# Every test of `ansible-test sanity --list-tests` (all run offline, without Docker; pslint passes with no PowerShell
# file). shellcheck needs the shellcheck binary (scripts/setup.sh installs it); the changelog test is
# antsibull-changelog lint. Then scripts/galaxy-check.sh: galaxy-importer and antsibull-docs lint on the built tarball
# (not when P3_SANITY_TESTS picks tests, or with P3_GALAXY_CHECK=0).
TESTS=(action-plugin-docs ansible-doc changelog compile empty-init ignores import line-endings no-assert
       no-get-exception no-illegal-filenames no-smart-quotes pep8 pslint pylint replace-urlopen runtime-metadata shebang
       shellcheck symlinks use-argspec-type-path use-compat-six validate-modules yamllint)
GALAXY_CHECK=${P3_GALAXY_CHECK:-1}
if ! command -v shellcheck >/dev/null 2>&1; then
  printf '[sanity] shellcheck is not installed (scripts/setup.sh installs it): its test is left out\n'
  TESTS=("${TESTS[@]/shellcheck}")
fi
if [ -n "${P3_SANITY_TESTS:-}" ]; then read -r -a TESTS <<<"$P3_SANITY_TESTS"; GALAXY_CHECK=0; fi
# The two halves (about the same time each, measured): part 2 is the linters that read every file, part 1 the rest
# and the galaxy check.
PART_2=(pylint validate-modules yamllint pep8 shellcheck)
if [ -n "$PART" ]; then
  picked=()
  for t in "${TESTS[@]}"; do
    [ -n "$t" ] || continue
    in2=0
    for u in "${PART_2[@]}"; do [ "$t" = "$u" ] && in2=1; done
    if { [ "$PART" = 1 ] && [ $in2 = 0 ]; } || { [ "$PART" = 2 ] && [ $in2 = 1 ]; }; then picked+=("$t"); fi
  done
  TESTS=("${picked[@]}")
  [ "$PART" = 1 ] || GALAXY_CHECK=0
fi

log() { printf '[sanity] %s\n' "$*"; }

# 1. pip bootstrap stand-in, for every pip version this ansible-test may ask for.
mkdir -p "$ANSIBLE_HOME/test/cache"
pip_versions=$("$VENV/bin/python" - <<'EOF'
import re, ansible_test, os
path = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
print(" ".join(sorted(set(re.findall(r"pip='([0-9.]+)'", open(path).read()))) or ["24.2"]))
EOF
)
for v in $pip_versions; do
  stub=$ANSIBLE_HOME/test/cache/get_pip_${v//./_}.py
  if [ ! -f "$stub" ]; then
    cat >"$stub" <<'EOF'
"""Offline stand-in for ansible-test's get-pip bootstrap: ensurepip, then pip install what it was asked for."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + args)
EOF
  fi
done

# 2. Sync the shippable files into the copy (git's view of the work tree: tracked + untracked-not-ignored),
#    leaving out what galaxy.yml's build_ignore leaves out of the built collection.
mkdir -p "$COPY"
"$VENV/bin/python" - "$ROOT" "$COPY" <<'EOF'
import fnmatch, os, shutil, subprocess, sys

root, copy = sys.argv[1], sys.argv[2]
# Not shipped (see galaxy.yml build_ignore) and owned by tooling that ansible-test does not understand.
skip_prefixes = ("lab/", "bench/", "tests/integration/", "tests/output/", ".ci/", ".lab/", ".venv/", ".state/",
                 "node_modules/", "reports/", ".cache/", ".ansible/")
skip_globs = ("package.json", "package-lock.json", "*.tar.gz", "*.pyc")
try:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
except (OSError, subprocess.CalledProcessError):
    files = []
    for d, dirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = [x for x in dirs if x != ".git" and not (os.path.join(rel, x) + "/").lstrip("./").startswith(skip_prefixes)]
        files += [os.path.normpath(os.path.join(rel, n)) for n in names]
wanted = set()
for f in files:
    if f.startswith(skip_prefixes) or any(fnmatch.fnmatch(os.path.basename(f), g) for g in skip_globs):
        continue
    if os.path.isfile(os.path.join(root, f)) or os.path.islink(os.path.join(root, f)):
        wanted.add(f)
changed = 0
for f in sorted(wanted):
    src, dst = os.path.join(root, f), os.path.join(copy, f)
    st = os.lstat(src)
    try:
        dt = os.lstat(dst)
        if dt.st_size == st.st_size and int(dt.st_mtime) == int(st.st_mtime) and dt.st_mode == st.st_mode:
            continue
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)
    changed += 1
removed = 0
for d, dirs, names in os.walk(copy, topdown=False):
    rel = os.path.relpath(d, copy)
    if rel == ".git" or rel.startswith(".git" + os.sep) or rel.startswith("tests/output"):
        continue
    for n in names:
        f = os.path.normpath(os.path.join(rel, n))
        if f not in wanted:
            os.remove(os.path.join(d, n))
            removed += 1
    if d != copy and not os.listdir(d):
        os.rmdir(d)
print("[sanity] %d files, %d updated, %d removed" % (len(wanted), changed, removed))
EOF
[ -d "$COPY/.git" ] || git -C "$COPY" init -q

# 3. Run.
args=()
for t in "${TESTS[@]}"; do [ -n "$t" ] && args+=(--test "$t"); done
if [ ${#args[@]} -eq 0 ]; then log "no test selected"; exit 2; fi
log "ansible-test sanity --python $PYTHON_VERSION ($(( ${#args[@]} / 2 )) tests) in $COPY"
(cd "$COPY" && "$VENV/bin/ansible-test" sanity --python "$PYTHON_VERSION" --color no "${args[@]}" "$@")
if [ "$GALAXY_CHECK" != 0 ]; then
  HOME=$REAL_HOME "$ROOT/scripts/galaxy-check.sh"
fi
