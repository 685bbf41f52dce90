# hepvol — the two entry points are `make run` (the main job) and `make test`.
# Both install what they need on a Debian machine; they must run as root
# (FUSE servers, mount(2) and bind mounts need CAP_SYS_ADMIN).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv autofs \
                util-linux procps iproute2 docker.io busybox-static
PYTEST_ARGS ?=

.PHONY: all setup root apt venv run test lint bench clean

all: test

root:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "hepvol must run as root: it starts FUSE servers and makes bind mounts." >&2; exit 1; fi

apt: root .stamp-apt
.stamp-apt:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)
	@touch $@

venv: .stamp-venv
.stamp-venv: pyproject.toml | .stamp-apt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[docker,csi,test]'
	@touch $@

setup: root apt venv

# The main job: serve a sample repository through the core and show it.
run: setup
	$(VENV)/bin/hepvol demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mount_core

# The whole suite, in a private mount namespace so that nothing a test mounts can
# outlive the run on this machine. pytest exits 5 when no test ran: that fails too.
test: setup lint
	unshare --mount --propagation private -- $(PY) -m pytest $(PYTEST_ARGS)
	unshare --mount --propagation private -- $(PY) -m bench --quick

bench: setup
	unshare --mount --propagation private -- $(PY) -m bench

clean:
	rm -rf $(VENV) .stamp-apt .stamp-venv build *.egg-info
