# Visage — every entry point a developer or CI needs. `make run` and `make test`
# set up everything they need themselves (venv, generated code, Cassandra, Chromium, grpcurl).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(VENV)/bin/pip
SITE     := $(VENV)/lib/python3.11/site-packages
TOOLS    := $(CURDIR)/.tools
PROTOS   := $(shell find protos -name '*.proto')
GEN_DIR  := lib/visage/v1
DESC     := build/visage.pb
THIRD    := build/third_party/google/api
STAMP    := $(VENV)/.installed
# Quiet setup: a line per long step on the terminal, the rest in a log (runs before any venv).
LOGGED   := python3 scripts/logged.py

# Each part's own targets (cassandra, chromium, grpcurl, deploy, ...).
-include mk/*.mk

.PHONY: help run test test-setup gen lint breaking bench cassandra-start cassandra-stop chromium h2load grpcurl deploy deploy-plan undeploy clean

help:
	@echo "make run        start the whole mesh on embedded defaults (SQLite, local models, Envoy, UI)"
	@echo "make test       run every test (starts a real Cassandra and a real Envoy)"
	@echo "make bench      run the benchmarks in bench/: tables, and a report with plots in build/bench/"
	@echo "make deploy     create or update the AKS deployment (deploy-plan: dry run; undeploy: tear down)"

$(STAMP): pyproject.toml requirements.lock
	@echo "==> Python packages into $(VENV) (pinned in requirements.lock; ~3 min the first time)"
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip==25.3 setuptools==80.9.0 wheel==0.45.1
	mkdir -p $(GEN_DIR) && touch $(GEN_DIR)/__init__.py  # the package `make gen` fills
	$(PIP) install -q -c requirements.lock -e '.[dev,deploy]'
	touch $@

# Generated code: Python messages + gRPC stubs + type stubs, a descriptor set for
# Envoy/grpcurl, and the OpenAPI document. Never edited by hand; not committed.
gen: $(STAMP) $(DESC)
$(DESC): $(PROTOS) $(STAMP)
	mkdir -p $(GEN_DIR) $(THIRD) build
	cp $(SITE)/google/api/{annotations,http,httpbody,field_behavior}.proto $(THIRD)/
	PATH=$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos -Ibuild/third_party \
	  --python_out=lib --grpc_python_out=lib --mypy_out=lib --mypy_grpc_out=lib \
	  --descriptor_set_out=$(DESC) --include_imports --include_source_info $(PROTOS)
	touch $(GEN_DIR)/__init__.py

lint: gen
	$(VENV)/bin/buf lint

# Checks the protos against main's (or BASE's) for wire/source-breaking changes:
# both sides compiled to descriptor sets the same way, then compared by buf.
BASE ?= $(shell git rev-parse --verify -q main >/dev/null && echo main || echo HEAD)
breaking: gen
	rm -rf build/against && mkdir -p build/against
	git archive $(BASE) protos | tar -x -C build/against
	$(PY) -m grpc_tools.protoc -Ibuild/against/protos -Ibuild/third_party --include_imports --include_source_info \
	  --descriptor_set_out=build/against.pb $$(find build/against/protos -name '*.proto')
	$(VENV)/bin/buf breaking $(DESC)#format=binpb --against build/against.pb#format=binpb \
	  --config '{"version":"v2","breaking":{"use":["FILE"]}}'

# Setup prints a line per long step (its whole output: build/run-setup.log), then the mesh
# prints a line per service and the sign-in link (VISAGE_RUN_SHOW_LOGS=1: every log too).
run:
	@$(LOGGED) --log build/run-setup.log --title "make run: checking the venv, generated code and OpenAPI" -- \
	  $(MAKE) --no-print-directory gen openapi
	@$(PY) -m visage.mesh

# Cassandra runs for the whole test session and is always stopped afterwards.
# PYTEST_ARGS narrows a run, e.g. make test PYTEST_ARGS='tests/store -x'.
PYTEST_ARGS ?=
# Setup steps run side by side: on a new machine the kube-apiserver build (CPU, ~20 min)
# then overlaps the downloads (pip, apt, Maven, Go modules) instead of following them.
# Setup's thousands of lines go to build/setup.log; the terminal gets a line per long step
# and, on failure, the log's tail (CI shows it too).
test:
	@$(LOGGED) --log build/setup.log --title "make test: setting up what the tests need" -- \
	  $(MAKE) --no-print-directory -j4 --output-sync=line test-setup
	@$(MAKE) --no-print-directory cassandra-start
	@status=0; VISAGE_TESTS_REQUIRE_ALL=1 $(PY) -m pytest -q $(PYTEST_ARGS) || status=$$?; \
	  $(MAKE) --no-print-directory cassandra-stop; exit $$status

test-setup: gen lint breaking openapi clients chromium grpcurl deploy-tools cassandra-fetch keycloak

# Starts the Cassandra node the benches use (and stops it after, unless its process was there
# before: a node that is running, or still starting for a test run, is used and left running).
# BENCH_ARGS narrows a run, e.g. make bench BENCH_ARGS='vs_fr classifier'.
BENCH_ARGS ?=
bench: gen openapi h2load bench-setup
	running=$$($(CASSANDRA) status 2>/dev/null | grep -qv '(pid None' && echo yes); \
	  $(MAKE) --no-print-directory cassandra-start || exit 1; \
	  status=0; $(PY) -m bench $(BENCH_ARGS) || status=$$?; \
	  [ -n "$$running" ] || $(MAKE) --no-print-directory cassandra-stop; exit $$status

clean:
	rm -rf build $(GEN_DIR) .pytest_cache
