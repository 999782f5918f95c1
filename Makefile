# The README's two commands: `make demo` and `make test`. Both set up what they need on a fresh machine
# (system packages, .venv, jars); everything else here is a building block of those two.

SHELL := /bin/bash
VENV ?= .venv
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

$(STAMP): pyproject.toml setup.py connector/decode/_speedups.c
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -c 'import connector.decode.native as n; n.AVAILABLE or print("warning: the decode C fast path was not built (it needs gcc and the Python headers): the Python decoder is used")'
	@touch $(STAMP)

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
