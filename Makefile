# hepvol — the two entry points are `make run` (the main job) and `make test`.
# Both install what they need on a Debian machine; they must run as root
# (FUSE servers, mount(2) and bind mounts need CAP_SYS_ADMIN).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv autofs \
                util-linux procps iproute2 docker.io busybox-static debootstrap golang-go \
                containerd runc openssl
PYTEST_ARGS ?=

.PHONY: all setup root apt venv go run test lint bench clean tools manifests image managed-plugin \
        cvmfs-client install k8s-binaries

# Long builds and downloads are cached outside the clone, keyed by version, so a
# second run on the same machine (CI right after a session) skips them.
CACHE := /var/cache/hepvol
# Go: Debian 12's go (1.19) is too old for the pinned tools; it only fetches the
# pinned toolchain, which is a module on the Go module proxy.
GO_VERSION := 1.26.8
GO_ROOT := $(CACHE)/go$(GO_VERSION)
GO := $(GO_ROOT)/bin/go
export GOPATH := $(CACHE)/gopath
export GOCACHE := $(CACHE)/go-build
export GOTOOLCHAIN := local

# Pinned tools for the chart checks (tests/e2e/test_helm.py), built with `go install`
# into .tools/ (ignored). Go's module and build caches (GOPATH, GOCACHE above, under
# $(CACHE)) are kept between runs; the stamps make a second run a no-op.
TOOLS := $(CURDIR)/.tools
HELM_VERSION := v3.22.0
KUBECONFORM_VERSION := v0.7.0
# csi-sanity for tests/e2e/test_csi_sanity.py (CSI conformance of csi_driver/).
CSI_SANITY_VERSION := v5.6.0
# The Kubernetes release whose OpenAPI schema every rendered object must match.
K8S_VERSION := v1.35.4

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
.stamp-venv: pyproject.toml setup.py $(wildcard proto/*.proto) | .stamp-apt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: root apt venv

# The main job: serve a sample repository through the core and show it.
DEMO_ARGS ?=
run: setup
	$(VENV)/bin/hepvol demo $(DEMO_ARGS)

# `hepvol` on PATH: a link to this checkout's venv (`make clean` leaves it dangling).
install: setup
	ln -sfn $(CURDIR)/$(VENV)/bin/hepvol /usr/local/bin/hepvol
	@echo "hepvol -> $$(readlink /usr/local/bin/hepvol)"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mount_core hepvol docker_plugin flexvolume csi_driver
	$(VENV)/bin/lint-imports

# The real CernVM-FS client and a local stratum 0 serving demo.hepvol.org (from
# ../shared/tools/cvmfs), for tests/realclient/ and bench/: a fast no-op when it
# already answers; without ../shared an installed client is used, or the suite skips.
cvmfs-client: root
	tests/realclient/cvmfs-client-setup

# The whole suite, in a private mount namespace so that nothing a test mounts can
# outlive the run on this machine. pytest exits 5 when no test ran: that fails too.
test: setup lint tools cvmfs-client k8s-binaries
	CSI_SANITY=$(TOOLS)/bin/csi-sanity HEPVOL_K8S_BIN=$(K8S_BIN) unshare --mount --propagation private -- $(PY) -m pytest --durations=15 $(PYTEST_ARGS)
	unshare --mount --propagation private -- $(PY) -m bench --quick

bench: setup cvmfs-client
	unshare --mount --propagation private -- $(PY) -m bench

go: $(GO_ROOT)/.done
$(GO_ROOT)/.done: | .stamp-apt
	@set -e; dir=$$(cd /tmp && GOFLAGS=-mod=mod /usr/lib/go-1.19/bin/go mod download -json \
	  golang.org/toolchain@v0.0.1-go$(GO_VERSION).linux-amd64 | \
	  $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'); \
	rm -rf $(GO_ROOT).tmp && cp -a $$dir $(GO_ROOT).tmp && chmod -R u+w $(GO_ROOT).tmp && \
	chmod +x $(GO_ROOT).tmp/bin/* $(GO_ROOT).tmp/pkg/tool/*/* && \
	rm -rf $(GO_ROOT) && mv $(GO_ROOT).tmp $(GO_ROOT) && $(GO) version
	@touch $@

tools: $(TOOLS)/.helm-$(HELM_VERSION) $(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION) \
       $(TOOLS)/k8s-schemas/$(K8S_VERSION)/.done $(TOOLS)/.csi-sanity-$(CSI_SANITY_VERSION)
$(TOOLS)/.helm-%: $(GO_ROOT)/.done
	GOBIN=$(TOOLS)/bin $(GO) install helm.sh/helm/v3/cmd/helm@$*
	@touch $@
$(TOOLS)/.kubeconform-%: $(GO_ROOT)/.done
	GOBIN=$(TOOLS)/bin $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$*
	@touch $@
$(TOOLS)/.csi-sanity-%: $(GO_ROOT)/.done
	GOBIN=$(TOOLS)/bin $(GO) install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$*
	@touch $@
# The k8s.io/kubernetes module zip ships api/openapi-spec; turn it into strict schemas.
$(TOOLS)/k8s-schemas/$(K8S_VERSION)/.done: deploy/helm/openapi2jsonschema.py $(GO_ROOT)/.done
	@set -e; start=$$(date +%s); \
	dir=$$(cd /tmp && $(GO) mod download -json k8s.io/kubernetes@$(K8S_VERSION) | \
	       $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'); \
	$(PYTHON) deploy/helm/openapi2jsonschema.py $$dir/api/openapi-spec/swagger.json $(@D); \
	echo "k8s.io/kubernetes@$(K8S_VERSION) schemas ready in $$(( $$(date +%s) - start )) s"
	@touch $@

# The real Kubernetes node of tests/k8s (kubelet, API server, controller manager,
# scheduler, kubectl, etcd, the CSI sidecars), built with $(GO) into a cache keyed
# by version from the kit in ../shared/tools/k8s: ~25 min once, then a no-op.
# containerd and runc are Debian's (APT_PACKAGES).
K8S_CACHE := $(CACHE)/k8s-$(K8S_VERSION)
K8S_BIN := $(K8S_CACHE)/bin
k8s-binaries: $(GO_ROOT)/.done
	tests/k8s/build-binaries $(K8S_CACHE) $(GO) $(abspath ../shared/tools/k8s)

# Re-render deploy/kubernetes/ after changing the chart.
manifests: tools
	deploy/helm/render-manifests

# The node image, built with no registry (Debian base by debootstrap, cached in
# .tools/), in the engine at $DOCKER_HOST; then the Docker managed plugin from it.
image: setup
	images/local/build hepvol-node:local
managed-plugin: image
	deploy/docker/managed/create hepvol:local hepvol-node:local

clean:
	rm -rf $(VENV) .stamp-apt .stamp-venv build *.egg-info
