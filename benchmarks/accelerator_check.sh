#!/usr/bin/env bash
# One check for a machine with a GPU or TPU: under 5 minutes, one JSON line on stdout with
# the device kind and count, training examples/s, per-example gradients/s and their ratio,
# float32 against bfloat16, and the achieved fraction of the devices' peak FLOP/s in the
# per-example gradient (forward + backward) pass. Every device is used (one data mesh).
#
#   make venv JAX_EXTRA=cuda12        # or JAX_EXTRA=tpu, once
#   benchmarks/accelerator_check.sh   # MiniLM (real weights), 64 examples per device, 128 tokens
#   benchmarks/accelerator_check.sh --quick               # tiny random BERT: seconds, any machine
#   benchmarks/accelerator_check.sh --peak_tflops=312     # a device the peak table lacks
#
# Expect on CPU (tested by tests/test_accelerator_check.py): peak fraction null (no table
# entry) unless --peak_tflops is given.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec timeout "${CHECK_TIMEOUT_S:-290}" "$PYTHON" benchmarks/accelerator_check.py "$@"
