# Volant developer entry points. Every target installs what it needs and is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
GUEST := .cache/guest
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev \
	qemu-system-x86 qemu-utils busybox-static iproute2 curl socat dbus polkitd \
	systemd systemd-container util-linux

.PHONY: deps apt venv guest demo test test-fast lint bench clean

deps: apt venv guest

apt: .cache/apt.stamp
.cache/apt.stamp:
	@mkdir -p .cache
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml agent/pyproject.toml .cache/apt.stamp
	@test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	@echo "installing the virtualenv $(VENV) (log: .cache/pip.log)"
	@($(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[dev]' && $(PY) -m pip install -e ./agent) \
		> .cache/pip.log 2>&1 || { tail -n 30 .cache/pip.log; exit 1; }
	@touch $@

guest: $(GUEST)/.stamp
$(GUEST)/.stamp: scripts/build_guest.py $(wildcard scripts/guest/*.py agent/volant_agent/*) $(filter-out %.cpio,$(wildcard examples/plugins/*/*)) .cache/apt.stamp $(VENV)/.stamp
	@$(PY) scripts/build_guest.py --out $(GUEST)
	@touch $@

demo: deps
	@$(PY) -m scripts.demo

lint: venv
	@$(PY) -m pytest -q -m lint

test-fast: deps
	@$(PY) -m pytest -q -m "unit or lint"

test: deps
	@$(PY) -m pytest -q -ra --durations=10

bench: deps
	@$(PY) -m bench.create_latency
	@$(PY) -m bench.agent_boot
	@$(PY) -m bench.api_list
	@$(PY) -m bench.events_latency

clean:
	rm -rf $(VENV) .cache examples/plugins/*/*.cpio
