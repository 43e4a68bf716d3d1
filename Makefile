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
# The llama-cpp-python pin, for rebuild-llama.
LLAMA_CPP := $(shell sed -n 's/^ *"\(llama-cpp-python==[^"]*\)",.*/\1/p' pyproject.toml | head -n 1)

.PHONY: serve test lint typecheck cycles unit bench soak clean browser web-vendor fit rebuild-llama clients

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

serve: fit  ## Serve the embedded model on 127.0.0.1:8642 (make serve ARGS="--port 9000")
	$(BIN)/hearth serve $(ARGS)

# llama.cpp is compiled for the build machine's CPU (-march=native) and pip caches that wheel: a
# venv or cache from another machine can die with SIGILL here. Checked in a child process.
fit: $(STAMP)
	@$(BIN)/python -m hearth.engine.build_check >/dev/null 2>&1 || { \
	  echo "llama.cpp in $(VENV) was built for another CPU: rebuilding it for this one"; \
	  $(MAKE) --no-print-directory rebuild-llama; }

rebuild-llama: $(STAMP)  ## Compile llama.cpp again for this CPU (minutes), replacing pip's cached wheel
	$(BIN)/python -m pip cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps --no-binary llama-cpp-python '$(LLAMA_CPP)'
	$(BIN)/python -m hearth.engine.build_check >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

cycles: $(STAMP)  ## Import cycles in src/hearth, counting imports in functions and under TYPE_CHECKING
	$(BIN)/python scripts/import_cycles.py

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

# tests/smoke first and alone: one server, one chat, so a native crash is one clear failure.
test: lint typecheck browser fit  ## Everything CI runs: lint, types, unit, real-server and browser tests
	$(BIN)/pytest tests/smoke
	HEARTH_TEST_CHROMIUM=$(CHROMIUM) $(BIN)/pytest --ignore=tests/smoke $(ARGS)

bench: $(BENCH_STAMP)  ## Hearth vs llama-cpp-python's server and bare llama.cpp (ARGS="--quick")
	$(BIN)/python bench/bench.py $(ARGS)

soak: $(STAMP)  ## Mixed load for 15 minutes; checks no 5xx, nothing left in use, flat memory (ARGS="--seconds 60")
	$(BIN)/python bench/soak.py $(ARGS)

# Opt-in, not part of test: needs npm and the registry, and minutes per agent on a CPU.
clients: fit  ## Claude Code and Codex from npm, each run to a clean exit against hearth serve
	$(BIN)/python scripts/run_clients.py $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
