#!/usr/bin/env bash
# What Galaxy / Automation Hub checks on import, run on the built tarball (issue 18 §5), offline:
#   1. make build's tarball (ansible-galaxy collection build, galaxy.yml build_ignore);
#   2. galaxy-importer on it - the checks of an import (docs of every plugin through ansible-doc, role READMEs and
#      metadata, changelog, file list); its own ansible-lint run is off (make test runs ansible-lint on the
#      same files, and the importer's 180 s cap on it is too short on a busy 2-core machine);
#   3. antsibull-docs lint-collection-docs --plugin-docs: every plugin's and role's docs parse, every O()/RV()
#      reference points at an existing option / return value.
# (The changelog lint, antsibull-changelog lint, is ansible-test sanity's `changelog` test in scripts/sanity.sh.)
# Any error or warning fails. The tools live in a venv of their own, .state/galaxy-venv (galaxy-importer pins
# versions the project's .venv must not get, attrs < 24), with the project's ansible-core version.
# Usage: scripts/galaxy-check.sh   (scripts/sanity.sh runs it after ansible-test sanity; P3_GALAXY_CHECK=0 skips)
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
TOOLS=$ROOT/.state/galaxy-venv
GALAXY_IMPORTER=galaxy-importer==0.4.44
ANTSIBULL_DOCS=antsibull-docs==2.28.0
log() { printf '[galaxy] %s\n' "$*"; }

core=$("$VENV/bin/python" -c 'import ansible.release as r; print(r.__version__)')
want="ansible-core==$core $GALAXY_IMPORTER $ANTSIBULL_DOCS"
if [ ! -x "$TOOLS/bin/python" ] || [ "$(cat "$TOOLS/.p3-stamp" 2>/dev/null)" != "$want" ]; then
  log "tools venv: $want"
  "$VENV/bin/python" -m venv --clear "$TOOLS"
  # shellcheck disable=SC2086
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check $want
  echo "$want" > "$TOOLS/.p3-stamp"
fi

version=$("$VENV/bin/python" -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
dist=$ROOT/.state/dist
mkdir -p "$dist"
"$VENV/bin/ansible-galaxy" collection build --force --output-path "$dist" . >/dev/null 2>&1
tarball=$dist/p3-recovery-$version.tar.gz
log "built $tarball"

work=$ROOT/.state/galaxy-importer
mkdir -p "$work"
out=$work/import.log
start=$SECONDS
(cd "$work" && HOME=$work PATH="$TOOLS/bin:$PATH" GALAXY_IMPORTER_RUN_ANSIBLE_LINT=false \
  "$TOOLS/bin/python" -m galaxy_importer.main "$tarball") >"$out" 2>&1 || { cat "$out"; log "galaxy-importer failed"; exit 1; }
# Its messages: ERROR: / WARNING: lines (a filter named database_input_errors is no error).
if grep -E '^(ERROR|WARNING)' "$out"; then
  log "galaxy-importer reported the errors/warnings above (log: $out)"
  exit 1
fi
grep -q 'Importer processing completed successfully' "$out" || { cat "$out"; exit 1; }
log "galaxy-importer: no error, no warning ($((SECONDS - start)) s)"

start=$SECONDS
unpacked=$work/unpacked
rm -rf "$unpacked"
mkdir -p "$unpacked/ansible_collections/p3/recovery"
tar -xzf "$tarball" -C "$unpacked/ansible_collections/p3/recovery"
(cd "$unpacked/ansible_collections/p3/recovery" && PATH="$TOOLS/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$unpacked" \
  "$TOOLS/bin/antsibull-docs" lint-collection-docs --plugin-docs .) || { log "antsibull-docs lint-collection-docs failed"; exit 1; }
log "antsibull-docs lint-collection-docs: clean ($((SECONDS - start)) s)"
