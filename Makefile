# kube-testenv developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
CLUSTER ?= testenv
CRD := crds/testenv.dev_testenvironments.yaml
CRD_COPIES := operator/testenv_api/crd.yaml
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(INSTALLED) ## Create .venv with the package and its dev tools.

.PHONY: tools
tools: venv ## Build the pinned Kubernetes/etcd/kwok/helm/kind binaries (cached; a rerun is a no-op).
	$(PY) -m testenv_harness.cli tools

.PHONY: cluster-up
cluster-up: tools ## Start (or reuse) the local kwokctl cluster and print the lines to use it.
	@$(PY) -m testenv_harness.cli cluster up --name $(CLUSTER)

.PHONY: cluster-down
cluster-down: venv ## Delete the local cluster and stop its processes.
	$(PY) -m testenv_harness.cli cluster down --name $(CLUSTER)

.PHONY: sync-crds
sync-crds: ## Copy the CRD from crds/ into every place that ships it.
	for copy in $(CRD_COPIES); do cp $(CRD) $$copy; done

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: venv ## Apply ruff's fixes and formatting.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: test-unit
test-unit: venv ## Unit tests: no cluster.
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: tools ## Integration tests against a real API server (a throwaway local cluster).
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

.PHONY: test
test: tools ## Every tier, as CI runs it.
	$(PY) -m pytest tests $(PYTEST_ARGS)

.PHONY: demo
demo: cluster-up ## The main job: local cluster up, CRD installed, example TestEnvironment applied.
	eval "$$($(PY) -m testenv_harness.cli cluster env --name $(CLUSTER))"
	kubectl apply --server-side -f $(CRD)
	kubectl wait --for=condition=Established --timeout=60s crd/testenvironments.testenv.dev
	kubectl apply -f examples/testenvironment.yaml
	kubectl get testenvironments --all-namespaces
