# Volant developer entry points. Every target installs what it needs and is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
GUEST := .cache/guest
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
	qemu-system-x86 qemu-utils busybox-static iproute2 curl socat dbus polkitd \
	systemd systemd-container util-linux nftables dnsmasq-base dnsmasq-utils \
	skopeo umoci erofs-utils squashfs-tools e2fsprogs docker-registry mmdebstrap
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
DEB := dist/volant_$(VERSION)_amd64.deb
# What the package is built from (the guest's own inputs are checked by build_guest.py).
DEB_INPUTS := pyproject.toml constraints.txt README.md $(shell find volant agent units polkit packaging examples \
	debian scripts/build_guest.py scripts/guest_init.sh scripts/guest \( -name __pycache__ \
	-o -name '*.cpio' -o -path debian/volant -o -path debian/.debhelper -o -path debian/generated \
	\) -prune -o -type f -print)

.PHONY: deps apt venv constraints guest deb demo test test-fast lint bench soak clean

deps: apt venv guest

apt: .cache/apt.stamp
# The stamp holds the package list it was made for, so adding a package re-runs the check.
ifneq ($(file <.cache/apt.stamp),$(strip $(APT_PACKAGES)))
.PHONY: .cache/apt.stamp
endif
.cache/apt.stamp:
	@mkdir -p .cache
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@echo '$(strip $(APT_PACKAGES))' > $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml agent/pyproject.toml constraints.txt .cache/apt.stamp
	@test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	@echo "installing the virtualenv $(VENV) (log: .cache/pip.log)"
	@($(PY) -m pip install --upgrade pip && $(PY) -m pip install -c constraints.txt -e '.[dev]' \
		&& $(PY) -m pip install -c constraints.txt -e ./agent) \
		> .cache/pip.log 2>&1 || { tail -n 30 .cache/pip.log; exit 1; }
	@touch $@

# Newest versions PyPI serves, in a throwaway virtualenv, written to constraints.txt.
constraints: .cache/apt.stamp
	@rm -rf .cache/constraints-venv && /usr/bin/python3 -m venv .cache/constraints-venv
	@.cache/constraints-venv/bin/python -m pip install -q --upgrade pip
	@.cache/constraints-venv/bin/python -m pip install -q '.[dev]' ./agent
	@{ sed -n '/^#/p' constraints.txt; .cache/constraints-venv/bin/python -m pip freeze \
		--exclude volant --exclude volant-agent; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && rm -rf .cache/constraints-venv
	@git diff --stat constraints.txt

guest: $(GUEST)/.stamp
$(GUEST)/.stamp: scripts/build_guest.py scripts/guest_init.sh $(wildcard scripts/guest/*.py scripts/guest/*.sh agent/volant_agent/*) $(filter-out %.cpio,$(wildcard examples/plugins/*/*)) .cache/apt.stamp $(VENV)/.stamp
	@$(PY) scripts/build_guest.py --out $(GUEST)
	@touch $@

# The Debian package (dpkg-buildpackage on this checkout, build dependencies from apt), checked
# by lintian; dist/ gets the .deb, .buildinfo and .changes.
deb: $(DEB)
$(DEB): .cache/deb-apt.stamp $(DEB_INPUTS)
	@echo "building $(DEB) (log: .cache/deb-build.log)"
	@rm -f ../volant_$(VERSION)_amd64.*
	@dpkg-buildpackage -us -uc -b -tc > .cache/deb-build.log 2>&1 \
		|| { tail -n 40 .cache/deb-build.log; exit 1; }
	@mkdir -p dist
	@mv ../volant_$(VERSION)_amd64.deb ../volant_$(VERSION)_amd64.buildinfo \
		../volant_$(VERSION)_amd64.changes dist/
	@lintian --fail-on error $@ 2>&1 | grep -v 'running with root privileges' \
		| tee .cache/lintian.log; test "$${PIPESTATUS[0]}" = 0 || { rm -f $@; exit 1; }
	@touch $@

.cache/deb-apt.stamp: debian/control .cache/apt.stamp
	@if ! dpkg-checkbuilddeps >/dev/null 2>&1 || ! command -v lintian >/dev/null; then \
		echo "installing the package's build dependencies"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			lintian dpkg-dev >/dev/null && DEBIAN_FRONTEND=noninteractive \
			apt-get build-dep -y -qq ./ >/dev/null; \
	fi
	@touch $@

demo: deps
	@$(PY) -m scripts.demo

lint: venv
	@$(PY) -m pytest -q -m lint

test-fast: deps
	@$(PY) -m pytest -q -m "unit or lint"

test: deps deb
	@$(PY) -m pytest -q -ra --durations=10

bench: deps
	@$(PY) -m bench.create_latency
	@$(PY) -m bench.agent_boot
	@$(PY) -m bench.api_list
	@$(PY) -m bench.events_latency
	@$(PY) -m bench.volar_startup
	@$(PY) -m bench.oci_import
	@$(PY) -m bench.plugin_build
	@$(PY) -m bench.rootfs_boot
	@$(PY) -m bench.agent_channel
	@$(PY) -m bench.passthrough

# Random SIGKILLs of volantd.service during random verbs, with full host checks (15-20 min).
soak: deps
	@$(PY) -m bench.soak_kills

clean:
	rm -rf $(VENV) .cache dist examples/plugins/*/*.cpio
