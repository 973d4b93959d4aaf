# The README's two commands are `make up` and `make test`; both install first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: install up demo test test-fast test-docker-api lint bench protos

install:
	bash deploy/install.sh

up: install
	$(VENV)/bin/dockyard up

test: install
	$(MAKE) lint
	$(PYTEST) -q -p no:cacheprovider tests --ignore=tests/bench
	$(MAKE) test-docker-api

# docker-py's own integration suite against a test agent's Docker API (tests/dockerpy_suite.py)
test-docker-api:
	$(PY) -m tests.dockerpy_suite

test-fast:
	$(PYTEST) -q -m "not slow" tests --ignore=tests/bench

lint:
	$(VENV)/bin/ruff check agent scheduler deploy protos tests
	$(VENV)/bin/mypy

bench: install
	$(PY) -m tests.bench

protos:
	$(PY) -m protos.generate
