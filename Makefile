# hepvol — the two entry points are `make run` (the main job) and `make test`.
# Both install what they need on a Debian machine; they must run as root
# (FUSE servers, mount(2) and bind mounts need CAP_SYS_ADMIN).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv autofs \
                util-linux procps iproute2 docker.io busybox-static debootstrap
PYTEST_ARGS ?=

.PHONY: all setup root apt venv run test lint bench clean tools manifests image managed-plugin

# Pinned tools for the chart checks (tests/e2e/test_helm.py), built with `go install`
# into .tools/ (ignored). Go's module and build caches (~/go, ~/.cache/go-build)
# are kept between runs; the stamps make a second run a no-op.
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
test: setup lint tools
	CSI_SANITY=$(TOOLS)/bin/csi-sanity unshare --mount --propagation private -- $(PY) -m pytest $(PYTEST_ARGS)
	unshare --mount --propagation private -- $(PY) -m bench --quick

bench: setup
	unshare --mount --propagation private -- $(PY) -m bench

tools: $(TOOLS)/.helm-$(HELM_VERSION) $(TOOLS)/.kubeconform-$(KUBECONFORM_VERSION) \
       $(TOOLS)/k8s-schemas/$(K8S_VERSION)/.done $(TOOLS)/.csi-sanity-$(CSI_SANITY_VERSION)
$(TOOLS)/.helm-%:
	GOBIN=$(TOOLS)/bin go install helm.sh/helm/v3/cmd/helm@$*
	@touch $@
$(TOOLS)/.kubeconform-%:
	GOBIN=$(TOOLS)/bin go install github.com/yannh/kubeconform/cmd/kubeconform@$*
	@touch $@
$(TOOLS)/.csi-sanity-%:
	GOBIN=$(TOOLS)/bin go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$*
	@touch $@
# The k8s.io/kubernetes module zip ships api/openapi-spec; turn it into strict schemas.
$(TOOLS)/k8s-schemas/$(K8S_VERSION)/.done: deploy/helm/openapi2jsonschema.py
	@set -e; start=$$(date +%s); \
	dir=$$(cd /tmp && go mod download -json k8s.io/kubernetes@$(K8S_VERSION) | \
	       $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'); \
	$(PYTHON) deploy/helm/openapi2jsonschema.py $$dir/api/openapi-spec/swagger.json $(@D); \
	echo "k8s.io/kubernetes@$(K8S_VERSION) schemas ready in $$(( $$(date +%s) - start )) s"
	@touch $@

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
