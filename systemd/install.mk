# scanfleet install/uninstall, included by the top-level Makefile:
#     include systemd/install.mk
# make install [DESTDIR=/tmp/stage] [PREFIX=/usr]   (PREFIX defaults to /usr/local)
# make uninstall [DESTDIR=...] [PREFIX=...]          (never touches /var/lib/scanfleet)
# The layout is documented in systemd/README.md, "Installed files".

PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
INSTALL_PYTHON ?= python3
INSTALL_PIP_ARGS ?=
# no: install only the example (the Debian package: the unit waits for a real config).
INSTALL_CONFIG ?= yes
# ExecStart in the unit points at $(PREFIX)/bin/scanfleet.
SF_BINDIR := $(PREFIX)/bin
SF_LIBDIR := $(PREFIX)/lib/scanfleet
SF_VENV := $(SF_LIBDIR)/venv
SF_DOCDIR := $(PREFIX)/share/doc/scanfleet
SF_UNITDIR := $(PREFIX)/lib/systemd/system
SF_SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
SF_TMPFILESDIR := $(PREFIX)/lib/tmpfiles.d
SF_UDEVDIR := $(PREFIX)/lib/udev/rules.d
SF_CONFDIR := $(SYSCONFDIR)/scanfleet
SF_SRC := $(dir $(lastword $(MAKEFILE_LIST)))..

.PHONY: install uninstall install-venv install-files

install: install-venv install-files ## install the daemon (venv), unit, udev rules, sysusers/tmpfiles, example config
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemd-sysusers $(SF_SYSUSERSDIR)/scanfleet.conf; \
	  systemd-tmpfiles --create $(SF_TMPFILESDIR)/scanfleet.conf; \
	  udevadm control --reload; \
	  systemctl daemon-reload; \
	  echo "installed: edit $(SF_CONFDIR)/scanfleet.toml, then systemctl enable --now scanfleet"; \
	fi

# The venv is made in the staging tree, then every path in it that names the staging
# tree is rewritten to the final one: venvs are not relocatable, and Debian's system
# Python refuses pip installs, so this is how the package gets a Python of its own.
install-venv:
	rm -rf "$(DESTDIR)$(SF_VENV)"
	$(INSTALL_PYTHON) -m venv "$(DESTDIR)$(SF_VENV)"
	"$(DESTDIR)$(SF_VENV)/bin/python" -m pip install --quiet --no-compile $(INSTALL_PIP_ARGS) "$(SF_SRC)[terminal]"
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlI --null -F "$(DESTDIR)$(SF_VENV)" "$(DESTDIR)$(SF_VENV)/bin" "$(DESTDIR)$(SF_VENV)/pyvenv.cfg" \
	    | xargs -0 -r sed -i "s|$(DESTDIR)$(SF_VENV)|$(SF_VENV)|g"; \
	fi
	# Byte-code now (the tree is read-only at run time), naming the final paths.
	"$(DESTDIR)$(SF_VENV)/bin/python" -m compileall -q -j0 \
	  $(if $(DESTDIR),-s "$(DESTDIR)" -p /) "$(DESTDIR)$(SF_VENV)/lib" >/dev/null
	install -d "$(DESTDIR)$(SF_BINDIR)"
	printf '#!/bin/sh\nexec %s/bin/scanfleet "$$@"\n' "$(SF_VENV)" > "$(DESTDIR)$(SF_BINDIR)/scanfleet"
	chmod 0755 "$(DESTDIR)$(SF_BINDIR)/scanfleet"

install-files:
	install -d "$(DESTDIR)$(SF_UNITDIR)" "$(DESTDIR)$(SF_SYSUSERSDIR)" "$(DESTDIR)$(SF_TMPFILESDIR)" \
	  "$(DESTDIR)$(SF_UDEVDIR)" "$(DESTDIR)$(SF_DOCDIR)" "$(DESTDIR)$(SF_CONFDIR)"
	sed -e 's|@BINDIR@|$(SF_BINDIR)|g' -e 's|@DOCDIR@|$(SF_DOCDIR)|g' \
	  "$(SF_SRC)/systemd/scanfleet.service.in" > "$(DESTDIR)$(SF_UNITDIR)/scanfleet.service"
	chmod 0644 "$(DESTDIR)$(SF_UNITDIR)/scanfleet.service"
	install -m 0644 "$(SF_SRC)/systemd/scanfleet.sysusers" "$(DESTDIR)$(SF_SYSUSERSDIR)/scanfleet.conf"
	install -m 0644 "$(SF_SRC)/systemd/scanfleet.tmpfiles" "$(DESTDIR)$(SF_TMPFILESDIR)/scanfleet.conf"
	install -m 0644 "$(SF_SRC)/systemd/70-scanfleet.rules" "$(DESTDIR)$(SF_UDEVDIR)/70-scanfleet.rules"
	install -m 0644 "$(SF_SRC)/systemd/README.md" "$(DESTDIR)$(SF_DOCDIR)/README.systemd.md"
	install -m 0644 "$(SF_SRC)/daemon/scanfleet.example.toml" "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml.example"
	# An existing configuration is the site's: never overwritten.
	test "$(INSTALL_CONFIG)" != yes || test -e "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml" || \
	  install -m 0640 "$(SF_SRC)/daemon/scanfleet.example.toml" "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml"

uninstall: ## remove what `make install` installed (keeps /var/lib/scanfleet and an edited config)
	rm -rf "$(DESTDIR)$(SF_LIBDIR)"
	rm -f "$(DESTDIR)$(SF_BINDIR)/scanfleet" \
	  "$(DESTDIR)$(SF_UNITDIR)/scanfleet.service" \
	  "$(DESTDIR)$(SF_SYSUSERSDIR)/scanfleet.conf" \
	  "$(DESTDIR)$(SF_TMPFILESDIR)/scanfleet.conf" \
	  "$(DESTDIR)$(SF_UDEVDIR)/70-scanfleet.rules"
	rm -rf "$(DESTDIR)$(SF_DOCDIR)"
	# The config goes only while it is still the untouched example.
	if cmp -s "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml" "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml.example"; then \
	  rm -f "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml"; fi
	rm -f "$(DESTDIR)$(SF_CONFDIR)/scanfleet.toml.example"
	-rmdir "$(DESTDIR)$(SF_CONFDIR)" 2>/dev/null
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; udevadm control --reload; fi
