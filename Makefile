# pairline: `make run` starts the server on the embedded store with a demo tenant;
# `make test` sets everything up (venv, package, Redis binary) and runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
PYTEST_ARGS ?=

.PHONY: all venv run test fuzz faults bench demo proto check-proto redis-server node-example docs clean

all: test

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/pairline serve --demo --listen $(LISTEN)

# The tests start (and stop) their own redis-server processes on free ports;
# this only makes sure the binary is there.
redis-server:
	@scripts/ensure-redis.sh

# The Node.js example (examples/node) runs in the suite when Node.js is installed
# (tests/test_node_example.py does `npm ci`); without it the test is skipped.
test: $(STAMP) redis-server
	$(BIN)/python scripts/gen_protos.py --check
	@command -v node >/dev/null && command -v npm >/dev/null \
	  && echo "make test: Node.js $$(node --version) found: examples/node runs in the suite" \
	  || echo "make test: Node.js NOT found: examples/node is skipped (install Node.js 18+ to run it)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

node-example:
	cd examples/node && npm ci --no-audit --no-fund

# docs/configuration.md is generated from pairline.config (a test fails if it is stale).
docs: $(STAMP)
	$(BIN)/python scripts/gen_config_doc.py

# The fuzz suite (part of `make test` at 10,000+ cases) longer and with random seeds.
FUZZ_SCALE ?= 10
fuzz: $(STAMP)
	PAIRLINE_FUZZ_SCALE=$(FUZZ_SCALE) PAIRLINE_FUZZ_RANDOM=1 \
		$(BIN)/python -m pytest tests/test_fuzz.py -p no:cacheprovider -s $(PYTEST_ARGS)

# Faults under steady load (Redis restarted, Redis slowed, a replica SIGKILLed, one
# SIGTERMed) against three replicas: prints the figures table (about 1.5 minutes;
# tests/test_faults.py runs the same in the suite). FAULTS_ARGS="--rate 60 --fault-s 8".
faults: $(STAMP) redis-server
	$(BIN)/python tests/faults.py $(FAULTS_ARGS)

# Simulate a history, train a model, run ON/OFF traffic through a real server,
# print the benchmark report (about two minutes).
demo: $(STAMP)
	$(BIN)/python -m pairline.demo $(DEMO_ARGS)

bench: $(STAMP) redis-server
	$(BIN)/python -m pytest benchmarks -p no:cacheprovider --benchmark-only $(PYTEST_ARGS)

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .benchmarks
