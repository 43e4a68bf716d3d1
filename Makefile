# One entry point for developer commands. Every target installs what it needs into .venv first.
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# The newest Python 3.11+ on the machine creates the venv.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& echo $$p && break; done)
# llama-cpp-python compiles llama.cpp from source on first install (minutes, cached by pip).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
ARGS ?=

.PHONY: serve test lint typecheck unit bench soak clean browser web-vendor

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Hearth needs Python 3.11 or newer"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The bench extra (llama-cpp-python's server, the peer) on top of dev; the wheel is already built.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

serve: $(STAMP)  ## Serve the embedded model on 127.0.0.1:8642 (make serve ARGS="--port 9000")
	$(BIN)/hearth serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)  ## The fast tier: no model, no server
	$(BIN)/pytest tests/unit

# tests/web drive Debian's Chromium (Playwright's own browser download is not used): installed
# here when missing and the machine allows it (root, apt-get); otherwise a stop that says what to do.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for tests/web"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "tests/web need Chromium at $(CHROMIUM), which is missing. Install Debian's chromium"; \
	    echo "package (sudo apt-get install chromium), or run make test as root to install it."; \
	    exit 1; \
	  fi; }
	@test -x $(CHROMIUM) || { echo "apt-get did not install $(CHROMIUM)"; exit 1; }

web-vendor:  ## Refresh the web page's vendored libraries from npm (pins in scripts/vendor_web.sh)
	scripts/vendor_web.sh

test: lint typecheck browser  ## Everything CI runs: lint, types, unit, real-server and browser tests
	HEARTH_TEST_CHROMIUM=$(CHROMIUM) $(BIN)/pytest $(ARGS)

bench: $(BENCH_STAMP)  ## Hearth vs llama-cpp-python's server and bare llama.cpp (ARGS="--quick")
	$(BIN)/python bench/bench.py $(ARGS)

soak: $(STAMP)  ## Mixed load for 15 minutes; checks no 5xx, nothing left in use, flat memory (ARGS="--seconds 60")
	$(BIN)/python bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
