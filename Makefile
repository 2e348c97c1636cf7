# Two commands matter on a fresh machine: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo lint typecheck unit venv system-deps proto bench bench-exporter bench-scaler bench-prometheus-cost bench-policy bench-hostile clean help rules-manifest

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The runtime is what the binaries import; demo.png and eo-sim --plot need [plot], `make demo` [demo],
	@# `make proto` and the tests [dev] (which includes the other two).
	$(BIN)/python -m pip install --quiet -e '.[dev,demo,plot]'
	@touch $@

venv: $(STAMP) ## create .venv and install the project with its dev tools

system-deps: ## install Debian's prometheus and prometheus-alertmanager when missing
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
	    || ! command -v prometheus-alertmanager >/dev/null; then \
	  echo "installing Debian packages prometheus prometheus-alertmanager"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	fi
	@# Debian starts the services on install; our tests start their own on loopback ports.
	@-command -v systemctl >/dev/null && systemctl stop prometheus prometheus-alertmanager 2>/dev/null || true

lint: $(STAMP) ## ruff, mypy and the import-layer contract
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: system-deps $(STAMP) lint ## lint, type-check and run every test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: system-deps $(STAMP) ## the whole loop on simulated GPUs with a real Prometheus
	$(BIN)/python -m demo

proto: $(STAMP) ## regenerate the committed gRPC code from proto/
	$(BIN)/python -m scaler.proto_gen

bench: bench-exporter bench-scaler bench-prometheus-cost bench-policy bench-hostile ## every benchmark; each prints its figures

bench-exporter: $(STAMP)
	$(BIN)/python bench/exporter_scrape.py

bench-scaler: system-deps $(STAMP)
	$(BIN)/python bench/scaler_polls.py

bench-prometheus-cost: system-deps $(STAMP) ## what the trigger's queries cost a real Prometheus (200 workloads x 8 pods, 1 h backfilled)
	$(BIN)/python bench/prometheus_cost.py

bench-policy: $(STAMP) ## the simulator's policy comparison on the Azure and synthetic traces (~2 min)
	$(BIN)/python bench/policy.py

bench-hostile: system-deps $(STAMP) ## the worst inputs of the hardening issue against the scaler, the sidecar and the exporter
	$(BIN)/python bench/hostile_scaler.py
	$(BIN)/python bench/hostile_sidecar.py
	$(BIN)/python bench/hostile_exporter.py

rules-manifest: $(STAMP) ## regenerate the PrometheusRule and dashboard ConfigMap from their sources
	$(BIN)/python -m tools.gen_prometheusrule

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
