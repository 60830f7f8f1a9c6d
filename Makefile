# scanfleet — `make` prints this help. `make run` and `make test` set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scanfleet-installed
PYTEST_ARGS ?=

.PHONY: help setup test unit lint typecheck bench run schema hil clean screenshots

# make install DESTDIR=… PREFIX=… / make uninstall (systemd/README.md)
include systemd/install.mk

help: ## print this help
	@echo "scanfleet make targets:"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml .ci/sysdeps
	./.ci/sysdeps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP) ## venv + editable install + dev tools (apt-installs system packages when root)

test: $(STAMP) ## run the whole test suite (unit, broker, pty; HIL when QEMU is present)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP) ## run only the fast tests (no broker, no QEMU)
	$(BIN)/pytest -m 'not integration and not hil' $(PYTEST_ARGS)

hil: $(STAMP) ## only the QEMU hardware-in-the-loop tests (apt-installs QEMU and a kernel when root)
	./.ci/sysdeps hil
	$(BIN)/pytest -m hil $(PYTEST_ARGS)

lint: $(STAMP) ## ruff + mypy --strict on daemon/, provisioning/ and hub/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p .typecheck/scanfleet
	@for d in daemon drivers provisioning hub; do ln -sfn ../../$$d .typecheck/scanfleet/$$d; done
	$(BIN)/mypy -p scanfleet.daemon -p scanfleet.provisioning -p scanfleet.hub

typecheck: lint

bench: $(STAMP) ## benchmarks; one JSON line per benchmark on stdout
	$(BIN)/python tests/bench/run.py $(BENCH)

screenshots: $(STAMP) ## regenerate the console screenshots in docs/console/ (Debian's Chromium)
	./.ci/sysdeps docs
	$(BIN)/python tests/console_screenshots.py docs/console

schema: $(STAMP) ## regenerate the committed JSON Schemas in docs/schema/
	$(BIN)/scanfleet schema --write docs/schema

run: $(STAMP) ## run the daemon on the embedded demo (simulated scanner, local journal)
	$(BIN)/scanfleet run --demo

clean: ## remove the venv and caches (never the journal of a running daemon)
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
