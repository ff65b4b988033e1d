"""The per-example gradient kernel, re-exported: it lives in train/per_example_grads.py
since the trainer takes per-example gradients for in-run TracIn (train sits above influence).
"""
from gbair_jax.train.per_example_grads import (  # noqa: F401
    DEFAULT_METHOD, METHODS, Batch, LossFn, device_batch, per_example_grads,
    per_example_grads_unjitted)
