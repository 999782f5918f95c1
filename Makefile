# The README's two commands: `make demo` and `make test`. Both set up what they need on a fresh machine
# (system packages, .venv, jars); everything else here is a building block of those two.

SHELL := /bin/bash
VENV ?= .venv
# the first Python >= 3.11 on PATH (evaluated when used: `system-deps` may have just installed it)
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo demo-down setup system-deps venv jars lint typecheck unit integration stack-up stack-down stack-status

## test: ruff + mypy + the whole pytest suite (unit and integration; a real broker is started if needed)
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	@rc=0; $(BIN)/pytest tests || rc=$$?; \
	if [[ $$rc == 5 ]]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

## demo: the whole chain on this machine: PostgreSQL -> Debezium -> Kafka -> connector -> Yespo stand-in
## (sample customers, catch-up progress, live changes, contacts next to rows). Ports: YESPO_STACK_*_PORT.
demo: setup
	$(BIN)/yespo-connector demo

## demo-down: stop everything the demo started (connector, stand-in, Connect, PostgreSQL, Kafka)
demo-down: venv
	$(BIN)/yespo-connector demo --down

setup: system-deps venv jars

system-deps:
	@deploy/local/system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py connector/decode/_speedups.c
	@py="$(PYTHON)"; if [ -z "$$py" ]; then echo "no Python >= 3.11 on PATH (deploy/local/system-deps.sh installs one)" >&2; exit 1; fi; \
	if ! { test -x $(PY) && $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; }; then $$py -m venv --clear $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@# without the C fast path no stamp: the next run builds it once gcc and the headers are there
	@if $(PY) -c 'import sys, connector.decode.native as n; sys.exit(not n.AVAILABLE)'; then touch $(STAMP); \
	else echo "warning: the decode C fast path was not built (it needs gcc and the Python headers): the Python decoder is used"; fi

jars: venv
	$(BIN)/yespo-connector stack fetch --with connect

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration -m integration

stack-up: setup
	$(BIN)/yespo-connector stack up --with postgres,connect

stack-down: venv
	$(BIN)/yespo-connector stack down

stack-status: venv
	$(BIN)/yespo-connector stack status
