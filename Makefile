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

hil: $(STAMP) ## only the QEMU hardware-in-the-loop tests, with the Debian package's boot (~10 min)
	./.ci/sysdeps hil deb
	SCANFLEET_DEB_GUEST=1 $(BIN)/pytest -m hil $(PYTEST_ARGS)

lint: $(STAMP) ## import contracts + ruff + mypy --strict on daemon/, drivers/, provisioning/, hub/; mypy on tests/
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p .typecheck/scanfleet
	@for d in daemon drivers provisioning hub; do ln -sfn ../../$$d .typecheck/scanfleet/$$d; done
	$(BIN)/mypy -p scanfleet.daemon -p scanfleet.drivers -p scanfleet.provisioning -p scanfleet.hub
	MYPYPATH=tests:tests/bench $(BIN)/mypy tests

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

# -- Debian package (debian/, docs/debian.md) ---------------------------------------------
DEB_VERSION ?=
DEB_DIR ?= build/deb
MAN_COMMANDS = $(shell $(BIN)/python -c "from scanfleet.daemon.cli import build_parser as b; \
  import argparse; p = b(); print(' '.join(sorted(next(a for a in p._actions \
  if isinstance(a, argparse._SubParsersAction)).choices)))")

.PHONY: deb lintian

deb: $(STAMP) ## scanfleet_VERSION_all.deb (and scanfleet-hub when hub/ exists) in build/deb/
	rm -rf $(DEB_DIR)/src && mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard | \
	  grep -zv '^tests/' | xargs -0 cp --parents -t $(DEB_DIR)/src
	@if [ -n "$(DEB_VERSION)" ]; then \
	  { printf 'scanfleet (%s) trixie; urgency=medium\n\n  * Build %s.\n\n -- %s  %s\n\n' \
	    "$(DEB_VERSION)" "$(DEB_VERSION)" "scanfleet maintainers <packaging@scanfleet.invalid>" \
	    "$$(date -R)"; cat debian/changelog; } > $(DEB_DIR)/src/debian/changelog; fi
	mkdir -p $(DEB_DIR)/src/debian/generated/man $(DEB_DIR)/src/debian/generated/vendor
	# What Debian 13 lacks (biip), from PyPI, with its licence in the dist-info.
	$(BIN)/python -m pip install --quiet --no-deps --no-compile \
	  --target $(DEB_DIR)/src/debian/generated/vendor "biip==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("biip"))')"
	rm -rf $(DEB_DIR)/src/debian/generated/vendor/bin
	find $(DEB_DIR)/src/debian/generated/vendor -name RECORD -o -name INSTALLER -o -name REQUESTED \
	  -o -name direct_url.json | xargs rm -f
	# Man pages from --help: scanfleet(1) and one scanfleet-COMMAND(1) per command.
	version=$$(sed -n '1s/^scanfleet (\([^)]*\)).*/\1/p' $(DEB_DIR)/src/debian/changelog); \
	help2man --no-info --no-discard-stderr --version-string="$$version" \
	  --name="drug-traceability scanning terminal daemon and fleet tooling" \
	  -o $(DEB_DIR)/src/debian/generated/man/scanfleet.1 $(BIN)/scanfleet; \
	for cmd in $(MAN_COMMANDS); do \
	  printf '#!/bin/sh\nexec %s %s "$$@"\n' "$(abspath $(BIN))/scanfleet" "$$cmd" > $(DEB_DIR)/scanfleet-$$cmd; \
	  chmod +x $(DEB_DIR)/scanfleet-$$cmd; \
	  help2man --no-info --no-discard-stderr --version-string="$$version" \
	    --name="scanfleet $$cmd" -o $(DEB_DIR)/src/debian/generated/man/scanfleet-$$cmd.1 \
	    $(DEB_DIR)/scanfleet-$$cmd || exit 1; \
	  rm -f $(DEB_DIR)/scanfleet-$$cmd; \
	done
	cd $(DEB_DIR)/src && SF_PIP="$(abspath $(BIN))/pip" dpkg-buildpackage -b -us -uc --no-sign \
	  >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	@ls -l $(DEB_DIR)/*.deb

lintian: ## lintian on the packages `make deb` built (overrides in debian/*.lintian-overrides)
	lintian --info --fail-on error,warning $(DEB_DIR)/*.deb
