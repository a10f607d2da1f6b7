# Health Mate. Quick start: `make run` (serve on http://127.0.0.1:8080) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the test suite drives for real (Redis; compose validation; Chromium for the dashboard's and
# the calls' browser tests; the MQTT broker).
TEST_DEBS := redis-server:redis-server docker-compose:docker-compose chromium:chromium mosquitto:mosquitto
# Browser libraries from npm (package.json): the dashboard's and the app's, served under /vendor/, the
# socket.io client the call browser tests load, and axe-core the app's browser test checks each screen with;
# and the tests' tools: @asyncapi/parser (docs/asyncapi.yaml checked by the official parser),
# json-schema-to-typescript and typescript (the typed client in clients/typescript).
NPM_STAMP := node_modules/.package-lock.json
# The official socket.io client and server, for bench/events.py and bench/scale.py (and their smoke test).
BENCH_NPM_STAMP := bench/node/node_modules/.package-lock.json

.PHONY: run test lint bench system-deps clean messages app-screenshots

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is required; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "error: $(PYTHON) lacks venv/ensurepip (Debian: apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: npm not found; install Node.js 18 or newer (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --no-audit --no-fund
	@touch $@

$(BENCH_NPM_STAMP): bench/node/package.json bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund --silent
	@touch $@

run: $(STAMP) $(NPM_STAMP)
	$(BIN)/healthmate serve --demo

# Installs what the tests start for real when it is missing (needs root or sudo on Debian).
system-deps:
	@missing=""; for pair in $(TEST_DEBS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  { command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ]; } || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: lint $(NPM_STAMP) $(BENCH_NPM_STAMP) system-deps
	$(BIN)/python -m pytest -q

# ruff, and the layer contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The message catalogs of notifications and pushes (docs/operations.md, "Languages"): every Text("id", ...) of the
# code into server/locale/healthmate.pot, then into each language's .po (new ids untranslated: fill them in).
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg --no-location --sort-output --omit-header -o server/locale/healthmate.pot \
	  server signaling devices media
	$(BIN)/pybabel update -i server/locale/healthmate.pot -d server/locale -D healthmate -w 120 --no-fuzzy-matching --ignore-obsolete

bench: $(STAMP) $(NPM_STAMP) $(BENCH_NPM_STAMP) system-deps
	$(BIN)/python -m bench

# The app's screens at phone size into docs/app/ (the browser story test, saving each screen it checks).
app-screenshots: $(STAMP) $(NPM_STAMP) system-deps
	HEALTHMATE_APP_SCREENSHOTS=docs/app $(BIN)/python -m pytest -q tests/test_app_browser.py -k story

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache node_modules bench/node/node_modules
