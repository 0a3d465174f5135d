# kube-testenv developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
CLUSTER ?= testenv
KIND_CLUSTER ?= testenv-kind
CRD := crds/testenv.dev_testenvironments.yaml
CRD_COPIES := operator/testenv_api/crd.yaml charts/testenv-operator/crds/testenv.dev_testenvironments.yaml
POOL_CRD := crds/testenv.dev_testenvironmentpools.yaml
POOL_CRD_COPIES := operator/testenv_api/pool_crd.yaml charts/testenv-operator/crds/testenv.dev_testenvironmentpools.yaml
PYTEST_ARGS ?=
# `make test` runs the tiers in this many pytest-xdist workers: the local cluster's tiers in one,
# the kind tier in another, the unit tests wherever there is room (tests/conftest.py). 1: in turn.
TEST_PROCS ?= 2
# helm built from source assumes Kubernetes v1.20 unless told; the chart needs 1.28+.
KUBE_VERSION := v1.36.3

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# uv installs the locked dev environment in seconds where pip took minutes; it comes from PyPI too.
# Unlike pip, uv writes no bytecode unless told (--compile-bytecode), and our own packages are
# editable, so compileall does theirs: where PYTHONDONTWRITEBYTECODE is set (as in many CI images)
# every process would otherwise compile every module it imports, each time it starts (the operator
# 3.2 CPU s instead of 1.4, a worker with moto and the plugin 1.6 s instead of 0.6).
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
LOCK := requirements-dev.lock

$(INSTALLED): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip install --quiet --python $(PY) --require-hashes --compile-bytecode -r $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -m compileall -q -j 0 harness/testenv_harness operator
	touch $@

.PHONY: venv
venv: $(INSTALLED) ## Create .venv with the package and its locked dev tools (uv, requirements-dev.lock).

.PHONY: lock
lock: $(INSTALLED) ## Re-pin requirements-dev.lock from pyproject.toml (after changing a dependency).
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --quiet --no-header -o $(LOCK)
	@sed -i '1i # The dev environment, pinned with hashes: `make lock` writes it from pyproject.toml (uv pip compile).' $(LOCK)

# The images that install from PyPI do it from hashed lists, each for the image's own Python:
# Debian trixie's 3.13 (localstack, moto), bookworm's 3.11.2 (our python base: runner, operator).
IMAGE_RECIPES := harness/testenv_harness/provision/images
IMAGE_LOCK := $(UV) pip compile --generate-hashes --python-platform x86_64-unknown-linux-gnu \
  --no-python-downloads --quiet --no-header

# $(1): the file to write; $(2): the image's Python; $(3): what it is compiled from.
define image_lock
	$(IMAGE_LOCK) --python-version $(2) $(3) -o $(1)
	@sed -i '1i # Pinned with hashes for the image: `make image-locks` writes it (uv pip compile).' $(1)

endef

.PHONY: image-locks
image-locks: $(INSTALLED) ## Re-pin the images' hashed requirements.txt from their constraints (after changing a pin).
	$(call image_lock,$(IMAGE_RECIPES)/localstack/requirements.txt,3.13,\
	  $(IMAGE_RECIPES)/localstack/requirements.in -c $(IMAGE_RECIPES)/localstack/constraints.txt)
	$(call image_lock,$(IMAGE_RECIPES)/localstack/requirements-build.txt,3.13,\
	  $(IMAGE_RECIPES)/localstack/requirements-build.in -c $(IMAGE_RECIPES)/localstack/requirements.txt --no-deps)
	$(call image_lock,$(IMAGE_RECIPES)/moto/requirements.txt,3.13,\
	  $(IMAGE_RECIPES)/moto/requirements.in -c $(IMAGE_RECIPES)/moto/constraints.txt)
	$(call image_lock,$(IMAGE_RECIPES)/runner/requirements.txt,3.11.2,\
	  pyproject.toml $(IMAGE_RECIPES)/runner/requirements.in -c $(IMAGE_RECIPES)/runner/constraints.txt)
	$(call image_lock,operator/requirements.txt,3.11.2,pyproject.toml operator/requirements.in -c $(LOCK))

.PHONY: tools
tools: venv ## Build the pinned Kubernetes/etcd/kwok/helm/kind binaries (cached; a rerun is a no-op).
	$(PY) -m testenv_harness tools

.PHONY: ginkgo
ginkgo: venv ## Build the pinned ginkgo CLI into the cache and fetch the Ginkgo example's Go modules.
	$(PY) -m testenv_harness tools --group runners
	cd examples/ginkgo && go mod download

.PHONY: cluster-up
cluster-up: tools ## Start (or reuse) the local kwokctl cluster and print the lines to use it.
	@$(PY) -m testenv_harness cluster up --name $(CLUSTER)

.PHONY: cluster-down
cluster-down: venv ## Delete the local cluster and stop its processes.
	$(PY) -m testenv_harness cluster down --name $(CLUSTER)

.PHONY: sync-crds
sync-crds: venv ## Copy the CRD from crds/ into every place that ships it; make the pool CRD from it.
	for copy in $(CRD_COPIES); do cp $(CRD) $$copy; done
	$(PY) -c 'import sys, yaml; from testenv_api.crd import pool_crd_text; sys.stdout.write(pool_crd_text(yaml.safe_load(open("$(CRD)"))))' > $(POOL_CRD)
	for copy in $(POOL_CRD_COPIES); do cp $(POOL_CRD) $$copy; done

.PHONY: chart-lint
chart-lint: tools ## helm lint --strict the operator chart (charts/testenv-operator).
	"$$($(PY) -m testenv_harness tools --print-bin-dir)/helm" lint --strict charts/testenv-operator --kube-version $(KUBE_VERSION)

.PHONY: chart-template
chart-template: tools ## Render the operator chart with its default values to stdout.
	"$$($(PY) -m testenv_harness tools --print-bin-dir)/helm" template testenv-operator charts/testenv-operator --namespace testenv-system --kube-version $(KUBE_VERSION)

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

.PHONY: test-e2e
test-e2e: local-deps tools ginkgo ## End-to-end: the pytest plugin, operator and real services on the local cluster.
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

.PHONY: test-chaos
test-chaos: local-deps tools ## Faults at load: kill -9 mid-provisioning and mid-deletion, churn with restarts, leader takeover, crashed runs.
	$(PY) -m pytest tests -m chaos $(PYTEST_ARGS)

.PHONY: test-kind
test-kind: system-deps tools kind-images ## The kind tier: e2e scenarios, every service type and the Helm path on a real kind cluster.
	$(PY) -m pytest tests/kind $(PYTEST_ARGS)

.PHONY: test
test: system-deps tools ginkgo kind-images ## Every tier, as CI runs it (kind's only where a Docker engine answers).
	$(PY) -m pytest tests $(if $(filter-out 0 1,$(TEST_PROCS)),-n $(TEST_PROCS) --dist loadgroup) $(PYTEST_ARGS)

.PHONY: system-deps
system-deps: local-deps docker-engine ## Install what every tier runs: the local data plane's packages and a Docker engine.

.PHONY: local-deps
local-deps: ## Install the Debian packages the local data plane runs (redis-server, mosquitto, postgresql, rabbitmq-server, Java, Maven).
	hack/install-system-deps.sh

.PHONY: docker-engine
docker-engine: ## Make a Docker engine answer: install Debian's docker.io and start dockerd if none does (root).
	@if [ "$$(id -u)" -eq 0 ] || command -v sudo >/dev/null; then hack/install-docker.sh; \
	else echo "docker-engine: not root and no sudo: the kind tier will say it was not run"; fi

.PHONY: kind-images
kind-images: tools ## Build the kind node, service and operator images offline (cached by content; needs an engine).
	@if docker info >/dev/null 2>&1; then $(PY) -m testenv_harness images build; \
	else echo "kind-images: no Docker engine answers; skipped (run make docker-engine)"; fi

.PHONY: demo
demo: local-deps tools cluster-up ## The main job: the example suite, 4 workers, each with its own Redis/Kafka/S3.
	cd examples/suite && ../../$(PY) -m pytest -n 4 --testenv-cluster local --testenv-cluster-name $(CLUSTER)

.PHONY: demo-ginkgo
demo-ginkgo: local-deps tools ginkgo ## The Ginkgo example suite, 4 parallel processes, each with its own Redis and Kafka (testenv run).
	cd examples/ginkgo && PATH="$$(../../$(PY) -m testenv_harness tools --group runners --print-bin-dir):$$PATH" \
	  ../../$(VENV)/bin/testenv run -f testenvironment.yaml --workers 4 --cluster local --cluster-name $(CLUSTER) \
	  -- ginkgo -p --procs 4

.PHONY: demo-kind
demo-kind: system-deps tools kind-images ## The example suite with 4 workers on a real kind cluster (real pods, real images).
	cd examples/suite && ../../$(PY) -m pytest -n 4 --testenv-cluster kind --testenv-cluster-name $(KIND_CLUSTER)

.PHONY: kind-down
kind-down: venv ## Delete the kind cluster made by demo-kind (and its Docker network).
	$(PY) -m testenv_harness cluster down --cluster kind --name $(KIND_CLUSTER)

.PHONY: bench-operator
bench-operator: tools ## Benchmark time-to-Ready: operator vs. direct creation (own cluster testenv-bench; ~25 min).
	$(PY) bench/operator_ready.py $(BENCH_ARGS)

.PHONY: bench-portforward
bench-portforward: local-deps tools ## Benchmark Redis via the harness's port-forward vs. kubectl port-forward vs. direct (cluster testenv-bench; ~5 min).
	$(PY) bench/portforward_redis.py $(BENCH_ARGS)

.PHONY: bench-flood
bench-flood: tools ## Benchmark another tenant's time to Ready under a flood of 150 invalid environments (cluster testenv-bench-flood; ~5 min).
	$(PY) bench/flood.py $(BENCH_ARGS)

.PHONY: bench-suite
bench-suite: local-deps tools ## Benchmark the example suite's wall time with -n 1, 2, 4, 3 runs each (cluster testenv-bench; ~4-5 min).
	$(PY) bench/suite_wall_time.py $(BENCH_ARGS)

.PHONY: bench-rerun
bench-rerun: local-deps tools ## Benchmark time to the first test and after the last: fresh vs reused environment, -n 1, 2, 4 (cluster testenv-bench; ~10 min).
	$(PY) bench/rerun.py $(BENCH_ARGS)

.PHONY: bench-pool
bench-pool: tools ## Benchmark a 4-worker claim from a warm pool against a fresh environment (cluster testenv-bench; ~3 min).
	$(PY) bench/pool_claim.py $(BENCH_ARGS)

.PHONY: bench-start
bench-start: venv ## Benchmark the CPU a run's Python processes spend on their imports, with and without bytecode (~3 min).
	$(PY) bench/process_start.py $(BENCH_ARGS)

.PHONY: bench-kafka
bench-kafka: local-deps venv ## Benchmark a Kafka broker's cold start, alone and 4 at once, before/after issue 12 (~3 min; images via BENCH_ARGS).
	$(PY) bench/kafka_start.py $(BENCH_ARGS)

.PHONY: bench-scale
bench-scale: tools ## Benchmark one operator holding 0, 100 and 500 environments of 4 workers (own cluster testenv-scale; simulated pods).
	$(PY) bench/scale_hold.py $(BENCH_ARGS)

.PHONY: bench-io
bench-io: local-deps tools ## Benchmark an I/O-bound suite (60 tests of 1 s) at -n 1, 2, 4, start-up included (cluster testenv-bench; ~10 min).
	$(PY) bench/io_parallel.py $(BENCH_ARGS)

.PHONY: bench-suite-kind
bench-suite-kind: system-deps tools kind-images ## The same suite benchmark on a kind cluster: real pods (cluster testenv-bench; ~10 min).
	$(PY) bench/suite_wall_time.py --cluster kind $(BENCH_ARGS)

.PHONY: bench-readiness
bench-readiness: system-deps tools kind-images ## Benchmark how soon a worker sees its services serve, on kind (cluster testenv-bench; ~5 min).
	$(PY) bench/readiness_lag.py $(BENCH_ARGS)
