# screener: `make run` sets up and starts it; `make test` installs what the tests need and runs them all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
APT_PACKAGES := kamailio sip-tester postgresql chromium
export SCREENER_CONFIG := $(abspath $(CONFIG))

.PHONY: run setup test system-deps bench demo lint clean

# `make run` installs what running needs; the test tools (pytest, playwright, hypothesis, mypy, ruff) and the
# Debian test packages come with `make test`, `make bench`, `make demo` and `make lint` only.
$(BIN)/screener: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/screener
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/screener
	$(BIN)/screener --config $(CONFIG) init

run: setup
	$(BIN)/screener --config $(CONFIG) run

# Debian packages for the real-peer and browser tests; installed when running as root and missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# two pytest workers: most tests wait on real peers and timers; each worker has its own block of ports
test: system-deps $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2

bench: system-deps $(VENV)/.test-deps
	$(BIN)/python -m tests.bench

demo: system-deps $(VENV)/.test-deps
	$(BIN)/python tests/e2e/demo.py

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
