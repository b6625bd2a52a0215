#!/usr/bin/env bash
# Install everything the lab, the tests and the demo need on a fresh Debian 12 machine.
# Idempotent: each step is skipped when its result is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# The venv's interpreter (PYTHON overrides): Debian's own python3.11 - built with PGO and LTO, it spends about 18%
# less CPU on the same ansible-playbook runs than the pyenv build (no --enable-optimizations) that this machine kind
# puts first on PATH, and make test is CPU-bound (README, "The two commands").
DEBIAN_PY=/usr/bin/python3.11
PYTHON=${PYTHON:-$DEBIAN_PY}
STATE=$ROOT/.state
mkdir -p "$STATE"

log() { printf '[setup] %s\n' "$*"; }

# 1. System packages (bindep.txt lists them for ansible-builder too).
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v curl >/dev/null || need_apt+=(curl)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)   # ansible-test sanity's shellcheck test
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v haproxy >/dev/null || need_apt+=(haproxy)
# the lab's monitoring (p3lab up --monitoring) and promtool for the rule tests
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v prometheus-redis-exporter >/dev/null || need_apt+=(prometheus-redis-exporter)
command -v prometheus-postgres-exporter >/dev/null || need_apt+=(prometheus-postgres-exporter)
if [ "$PYTHON" = "$DEBIAN_PY" ]; then
  [ -x "$DEBIAN_PY" ] || need_apt+=(python3.11)
  [ -f /usr/lib/python3.11/ensurepip/__init__.py ] || need_apt+=(python3.11-venv)
fi
# ansible-rulebook's rule engine (Drools, through jpy) needs a Java 17 runtime (docs/eda.md)
[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ] || need_apt+=(openjdk-17-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi
# The Debian packages start their own servers on the standard ports when an init system runs;
# the lab never uses them, and we leave them alone.

# 2. Node tools (anvil, cast) into ./node_modules.
if [ ! -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || [ ! -x node_modules/@foundry-rs/cast-linux-amd64/bin/cast ] \
   || [ package.json -nt node_modules/.p3-stamp ]; then
  log "npm install (anvil, cast)"
  npm install --no-audit --no-fund --loglevel=error >/dev/null
  touch node_modules/.p3-stamp
fi

# 3. Python venv with the collection's, the lab's and the test tooling's requirements.
stamp=$STATE/pip.stamp
want=$(readlink -f "$(command -v "$PYTHON")")
if [ -x .venv/bin/python ] && [ "$(readlink -f .venv/bin/python)" != "$want" ]; then
  # made with another interpreter (before: the pyenv build): made again, with the ansible-test venvs built from it
  log "recreate .venv with $want (was $(readlink -f .venv/bin/python))"
  rm -rf .venv "$stamp" "$STATE"/sanity*/home/.ansible/test/venv
fi
if [ ! -x .venv/bin/python ]; then
  log "create .venv ($want)"
  "$PYTHON" -m venv .venv
fi
sum=$(cat requirements.txt requirements-dev.txt lab/requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
  log "pip install -r requirements-dev.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$sum" > "$stamp"
fi

# 4. Make the collection resolvable as p3.recovery (ansible.cfg points collections_path here).
mkdir -p "$STATE/collections/ansible_collections/p3"
ln -sfn "$ROOT" "$STATE/collections/ansible_collections/p3/recovery"
# 5. Optional: P3 Protocol's own server's npm dependencies for `lab/p3lab up --app upstream` (docs/lab.md), both BullMQ
# variants, into the cache (.state/upstream-cache or $P3LAB_UPSTREAM_CACHE). Only when asked: about 4 min, 2.6 GB.
if [ "${P3_SETUP_UPSTREAM:-0}" = 1 ]; then
  log "P3 upstream npm cache (lockfile + working BullMQ)"
  .venv/bin/python lab/p3lab prepare-upstream
fi
log "ok"
