# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/proxy.yaml

.PHONY: run test lint typecheck bench bench-paired bench-geo bench-pipeline bench-detectors bench-tag clean

$(BIN)/analytics-proxy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/analytics-proxy
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/analytics-proxy
	$(BIN)/analytics-proxy serve --config $(CONFIG)

# The consent manager the browser tests drive (tests/tag/test_tag_browser.py,
# tests/tag/test_tracker_browser.py) and terser, which builds /t.js, as locked; reinstalled only
# when the lock file is newer than what is installed.
tests/browser/node_modules: tests/browser/package-lock.json
	npm ci --prefix tests/browser
	touch $@

test: $(VENV)/.test-deps tests/browser/node_modules
	$(BIN)/ruff check proxy tests
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.test-deps
	$(BIN)/ruff check proxy tests

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy

# Throughput against a naive pass-through baseline; needs wrk (apt-get install wrk).
bench: $(VENV)/.test-deps
	$(BIN)/python bench/run.py

# The same two targets at once, sharing one core: a ratio that drift between runs does not skew.
bench-paired: $(VENV)/.test-deps
	$(BIN)/python bench/run.py --paired

# What placing a visitor costs per beacon (geo lookup + location mode), GeoLite2 City.
bench-geo: $(VENV)/.test-deps
	$(BIN)/python bench/location.py

# The privacy pipeline's cost per beacon on the shared captures, in a tight loop on one core.
bench-pipeline: $(VENV)/.test-deps
	taskset -c 0 $(BIN)/python bench/pipeline.py

# Per personal-data detector, the share of the utility corpus it leaves unchanged.
bench-detectors: $(VENV)/.test-deps
	$(BIN)/python bench/detectors.py

# Serving the first-party tag from memory against a static file server; needs wrk.
bench-tag: $(VENV)/.test-deps
	$(BIN)/python bench/tag.py

# The rate limiter's memory and Redis commands per second under 100k distinct client networks.
.PHONY: bench-limiter
bench-limiter: $(VENV)/.test-deps
	$(BIN)/python bench/limiter.py

# After editing proxy/tag/t.js: the minified build the proxy serves (a test checks they agree).
.PHONY: tracker
tracker: tests/browser/node_modules
	tests/browser/node_modules/.bin/terser proxy/tag/t.js -c -m --comments '/^!/' -o proxy/tag/t.min.js

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
