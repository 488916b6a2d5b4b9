# The front door. `make serve` and `make test` set up everything they need on first run.
SHELL := /bin/bash
VENV = $(shell infra/python_env.sh)
PY = $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
PORT ?= 3000

.PHONY: serve test test-chaos test-fast lint fmt lock demo-model quality bench bench-kafka bench-cold-start bento image prove-loop env help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

env:  ## create the cached Python environment and print its path
	@echo $(VENV)

serve:  ## start the service on the demo model at http://127.0.0.1:$(PORT)
	$(PY) -m snap2caption_service serve --port $(PORT)

test: lint  ## make lint, then the whole test suite (starts Kafka, S3, Chromium and the service itself)
	@# The demo model (cached; 15-30 min to build on 2 CPU cores on first run) is built up front, with its
	@# progress bar, rather than inside a test fixture under pytest's per-test timeout.
	$(PY) -m snap2caption_service demo-model > /dev/null
	$(PY) -m pytest -p no:cacheprovider -ra --durations=25 $(PYTEST_ARGS)

test-chaos:  ## only the exactly-once chaos run (1,000 events, consumer SIGKILLs, broker restart)
	$(PY) -m pytest -p no:cacheprovider -ra -m chaos $(PYTEST_ARGS)

test-fast:  ## unit tests only (no service, broker, MLflow server, Prometheus, browser or demo model)
	$(PY) -m pytest -p no:cacheprovider -m "not service and not quality and not kafka and not mlflow and not chaos and not prometheus" $(PYTEST_ARGS)

# Every check runs, then the target fails if any did. Config: pyproject.toml ([tool.ruff],
# [tool.importlinter], [tool.vulture] with infra/lint/vulture_whitelist.py, [tool.deptry]).
LINTERS = "ruff check" "ruff format --check" "lint-imports" "vulture" "deptry ."
lint:  ## ruff check, ruff format --check, lint-imports (layers), vulture (dead code), deptry (declared deps)
	@bin="$(VENV)/bin"; failed=""; \
	for check in $(LINTERS); do \
	  echo "== $$check"; "$$bin"/$$check || failed="$$failed, $$check"; \
	done; \
	if [ -n "$$failed" ]; then echo "make lint: failed: $${failed#, }" >&2; exit 1; fi

fmt:  ## fix what ruff can (ruff check --fix), then ruff format
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

# The lock the Python environment installs (infra/python_env.sh): every package, hashed, for the
# Linux x86_64 / Python 3.11 machines CI and the image run on. Versions already locked are kept
# unless pyproject.toml no longer allows them; UPGRADE=1 moves everything to the newest allowed.
lock:  ## regenerate requirements.lock from pyproject.toml (UPGRADE=1: newest versions allowed)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --custom-compile-command "make lock" \
	  $(if $(UPGRADE),--upgrade) --quiet -o requirements.lock

demo-model:  ## build (or find cached) the embedded demo model
	$(PY) -m snap2caption_service demo-model

quality:  ## the demo model's quality bar on 300 held-out scenes
	$(PY) -m snap2caption_service evaluate-demo

bench:  ## serving benchmark: service vs seed-style server vs raw batched generate
	$(PY) benchmarks/serving.py

bench-kafka:  ## 1,000 upload events through Kafka vs HTTP at saturation, same service, one run
	$(PY) -m snap2caption_service demo-model > /dev/null
	$(PY) benchmarks/kafka_vs_http.py $(BENCH_ARGS)

# The release path (README "The Bento"). MODEL/ADAPTER pick the weights (default: the demo
# model); BENTOML_HOME (default ~/bentoml) holds the model store and the built Bentos.
bento:  ## import the model into BentoML's store, bentoml build, export the archive to bentos/
	$(PY) -m snap2caption_service import-model $(if $(MODEL),--model $(MODEL)) $(if $(ADAPTER),--adapter $(ADAPTER))
	BENTOML_DO_NOT_TRACK=true $(PY) -m bentoml build
	BENTOML_DO_NOT_TRACK=true $(PY) -m bentoml export snap2caption:latest $(CURDIR)/bentos/

IMAGE ?= snap2caption:latest
image:  ## bentoml containerize the latest Bento as $(IMAGE) (needs a Docker engine)
	BENTOML_DO_NOT_TRACK=true $(PY) -m bentoml containerize snap2caption:latest --image-tag $(IMAGE)

bench-cold-start:  ## cold start: process start -> /readyz, repo vs built Bento (demo model)
	$(PY) benchmarks/cold_start.py

prove-loop:  ## feedback -> retrain -> promoted champion that adopts the edits; a degraded run refused
	$(PY) -m training.prove_loop
