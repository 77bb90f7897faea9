# vmaild: `make demo` brings the whole stack up and shows it working; `make test` runs every
# test. Both install what they need (Debian packages, a virtualenv) and are safe to re-run.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
# Tests that need the real stack fail instead of skipping when this is set (as in CI).
export VMAILD_REQUIRE_STACK ?= 1

.PHONY: all deps venv test unit integration systemtest lint demo bench install clean

all: test

deps:
	bash scripts/install-deps.sh

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# ruff (lint and format), then mypy in strict mode (pyproject.toml [tool.mypy]).
lint: venv
	$(VENV)/bin/ruff check daemons tests harness bench
	$(VENV)/bin/ruff format --check daemons tests harness bench
	$(VENV)/bin/mypy daemons/vmaild harness bench

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: deps venv
	$(VENV)/bin/pytest -q tests/integration

test: deps venv lint
	$(VENV)/bin/pytest -q tests/unit tests/integration

# The booted-host tier: the README's install on Debian 12 under systemd (systemd-nspawn), a
# live seed migration with mail flowing, reboot, upgrade, rollback. About 5 minutes, plus
# about a minute the first time for the cached base image. Needs the ports of a mail host
# (25, 110, 143, 587, 993, 995, 3306, ...) free on this machine.
systemtest: venv
	bash scripts/install-systemtest-deps.sh
	$(VENV)/bin/pytest -q -s -p no:cacheprovider tests/system

demo: deps venv
	$(PY) -m harness.demo

bench: deps venv
	$(PY) -m bench.run $(BENCH_ARGS)

# Put vmaild and the seed setup's files in place on this Debian system (as root); safe to
# re-run. ROOT=/some/dir installs into a staging tree instead (scripts/install.sh).
install:
	bash scripts/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
