# p3.recovery: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(PY) lab/p3lab
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup lab-up lab-down lab-status demo test unit sanity lint integration bench build clean

setup:
	scripts/setup.sh

lab-up: setup
	$(LAB) up

lab-down:
	@if [ -x $(PY) ] && [ -f lab/p3lab ]; then $(LAB) down; fi

lab-status: setup
	$(LAB) status

demo: lab-up
	scripts/demo.sh

# The whole suite: unit tests, ansible-test sanity, ansible-lint, then the integration tests against the real lab
# (they start it once per session and leave it down afterwards unless P3_KEEP_LAB=1).
test: setup
	$(PY) -m pytest -q tests/unit
	scripts/sanity.sh
	$(VENV)/bin/ansible-lint -q
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

unit: setup
	$(PY) -m pytest -q tests/unit

sanity: setup
	scripts/sanity.sh

lint: setup
	$(VENV)/bin/ansible-lint

integration: setup
	$(PY) -m pytest -q tests/integration

bench: lab-up
	$(PY) bench/run.py

build: setup
	mkdir -p .state/dist
	$(VENV)/bin/ansible-galaxy collection build --force --output-path .state/dist .

clean: lab-down
	rm -rf .state reports bench/out
