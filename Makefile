# The README's two commands are `make up` and `make test`; both install first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: install up demo test test-fast test-unit test-kernel test-cluster test-docker-api test-vm test-vm-smoke test-vagrant soak lint bench protos

# A test whose call takes longer than this without the `slow` marker fails the run (tests/conftest.py).
SLOW_LIMIT ?= 2
PYTEST_RUN := $(PYTEST) -q -p no:cacheprovider --max-unmarked-seconds=$(SLOW_LIMIT)
# What make test-fast leaves out: anything slow, or needing root, etcd, CRIU or netns hosts.
HEAVY := slow or root or etcd or criu or multinode

install:
	bash deploy/install.sh

up: install
	$(VENV)/bin/dockyard up

test: install
	$(MAKE) lint
	$(PYTEST_RUN) --durations=30 tests --ignore=tests/bench
	$(MAKE) test-docker-api

# docker-py's own integration suite against a test agent's Docker API (tests/dockerpy_suite.py)
test-docker-api:
	$(PY) -m tests.dockerpy_suite

# The quick ones, in every directory (a pure test beside kernel tests in one file runs too): ~25 s.
test-fast:
	$(PYTEST_RUN) -m "not ($(HEAVY))" tests --ignore=tests/bench

test-unit:
	$(PYTEST_RUN) tests/unit

test-kernel:
	$(PYTEST_RUN) tests/kernel

test-cluster:
	$(PYTEST_RUN) tests/cluster

# Two Debian 12 VMs under qemu (TCG): cluster up over SSH, cgroup v2 limits, live and cold migration
# VM to VM, a VM killed (tests/vm). The box is built once into /var/cache/dockyard-vm (~5 min).
# `make test-vm-smoke` runs only the one-VM smoke (tests/vm/test_vm_smoke.py; not yet in `make test`).
test-vm:
	DOCKYARD_TEST_VM=full $(PYTEST_RUN) -s tests/vm

test-vm-smoke:
	DOCKYARD_TEST_VM=smoke $(PYTEST_RUN) -s tests/vm/test_vm_smoke.py

# `vagrant up` of vagrant/ on libvirt (2 nodes, the cached box), then `cluster up -i` on the inventory
# it writes; libvirtd runs in a netns and mount namespace of the test (tests/vm/test_vagrant_libvirt.py).
test-vagrant:
	DOCKYARD_TEST_VM=vagrant $(PYTEST_RUN) -s tests/vm/test_vagrant_libvirt.py

# Faults from a seeded schedule on 3 netns hosts, 2 schedulers and a 3-member etcd, the invariants
# checked all along (tests/soak.py): SOAK_S seconds (default 600), SOAK_SEED to replay a run.
SOAK_S ?= 600
soak:
	SOAK_S=$(SOAK_S) $(PY) -m tests.soak

lint:
	$(VENV)/bin/ruff check agent scheduler deploy protos tests common
	@# pytest imports test modules by basename (rootdir-relative, no packages): two files with one
	@# name stop collection, so name them apart here, before the long run starts.
	@dups=$$(find tests -name 'test_*.py' -printf '%f\n' | sort | uniq -d); \
	  if [ -n "$$dups" ]; then echo "test files share a basename: $$dups" >&2; exit 1; fi
	$(VENV)/bin/mypy

bench: install
	$(PY) -m tests.bench

protos:
	$(PY) -m protos.generate
