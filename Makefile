# Molam Analytics: the two commands are `make run` (the whole system locally) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Sources .stack/env (written by `make stack`) into a recipe's shell.
WITH_STACK := set -a && . .stack/env && set +a &&
PYTEST_ARGS ?=

.PHONY: help venv system-deps stack stack-down image lint typecheck test run bench screenshot clean

help:
	@echo "make run         the whole system locally: the chart on the local node (else local processes)"
	@echo "make test        set everything up from a clean clone and run lint, types and the test suite"
	@echo "make stack       start (or reuse) PostgreSQL, Redis, Kafka, the control plane and, where Docker"
	@echo "                 can run, a node that runs pods (STACK_NODE=0: none); writes .stack/env"
	@echo "make stack-down  stop what 'make stack' started"
	@echo "make image       build the image into the local Docker: molam-analytics:<version> and :dev"
	@echo "make bench       run the benchmarks in bench/ (not part of the tests)"
	@echo "make screenshot  retake docs/images/dashboard.png with the e2e browser test"

# The C source too: pip install -e builds the consumer's extension in place.
$(BIN)/.installed: pyproject.toml setup.py src/molam_workloads/ingest/_summary.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,local]'
	touch $@

venv: $(BIN)/.installed

# Debian packages the tests drive and pip cannot provide (chromium, wrk, psql, redis-cli);
# installs only what is missing.
system-deps:
	bash stack/system-deps.sh

stack: venv
	$(BIN)/python stack/stack.py up $(if $(filter 0,$(STACK_KUBE)),,--kube)

stack-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python stack/stack.py down; fi

# Starts Docker if needed (stack/docker.sh); wheels are built on the host and cached.
image: venv
	PYTHON=$(abspath $(BIN)/python) bash stack/image.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy -p molam_workloads -p molam_operator

test: venv system-deps lint typecheck stack
	$(WITH_STACK) $(BIN)/pytest $(PYTEST_ARGS)

# Builds the image and helm-installs the chart where `make stack` has a node; RUN_ARGS go to
# stack/run.py (e.g. RUN_ARGS=--processes).
RUN_ARGS ?=
run: venv
	STACK_KUBE=$${STACK_KUBE:-auto} $(BIN)/python stack/run.py $(RUN_ARGS)

bench: venv stack
	$(WITH_STACK) for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The README's picture is what the e2e browser test sees of make run's dashboard.
screenshot: venv system-deps stack
	$(WITH_STACK) SCREENSHOT_DIR=docs/images $(BIN)/pytest \
		tests/e2e/test_runbook.py::test_13_dashboard_of_make_run_in_chromium

clean: stack-down
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
