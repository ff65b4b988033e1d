"""Byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3) as a `seqio.Vocabulary`.

Built from a GGUF file's `tokenizer.ggml.*` metadata or from a Hugging Face `tokenizer.json`,
on the `tokenizers` library so that pre-splitting and merges match the reference tokenizer.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Sequence

import gguf
import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from gbair_jax.data.vocabularies import python_encode_tf
from gbair_jax.errors import UserError

# llama.cpp's GGUF token types (gguf.TokenType): CONTROL tokens are the chat/special markers.
_TOKEN_TYPE_CONTROL = 3

# Llama 3's split pattern, as in its tokenizer.json (llama.cpp: pre = "llama-bpe").
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map that byte-level BPE vocabularies use."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars = list(printable)
  extra = 0
  for byte in range(256):
    if byte not in printable:
      printable.append(byte)
      chars.append(256 + extra)
      extra += 1
  return {byte: chr(char) for byte, char in zip(printable, chars)}


def _pre_tokenizer(pre: str) -> tuple[Any, bool]:
  """HF pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name, and BPE's ignore_merges."""
  if pre in ("smollm", "starcoder", "refact", "codeshell"):
    # StarCoder-family tokenizers split digits one by one before the GPT-2 regex.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), False
  if pre in ("default", "gpt2", "gpt-2"):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
  if pre in ("llama-bpe", "llama3"):
    # Llama 3 looks whole words up before merging (llama.cpp and HF both set ignore_merges).
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True
  raise UserError(f"GGUF tokenizer.ggml.pre = {pre!r} is not supported; supported: smollm, "
                  "starcoder, gpt2, default, llama-bpe")


class BpeVocabulary(seqio.Vocabulary):
  """A byte-level BPE `tokenizers.Tokenizer` with the model's special ids, for seqio.

  `encode` never adds special tokens (seqio's convention); `add_bos` tells callers that
  build model inputs (the backbone's `TextFeature.add_bos`) whether the model expects BOS first.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, eos_id: int | None,
               bos_id: int | None = None, pad_id: int = 0, unk_id: int | None = None,
               add_bos: bool = False):
    super().__init__(extra_ids=0)
    self._tokenizer = tokenizer
    self._eos_id = eos_id
    self._bos_id = bos_id
    self._pad_id = pad_id
    self._unk_id = unk_id
    self.add_bos = add_bos
    self._fingerprint = hashlib.sha256(
        f"{tokenizer.to_str()}|{eos_id}|{bos_id}|{pad_id}|{unk_id}|{add_bos}".encode()).hexdigest()

  # ---- constructors ---------------------------------------------------------------------

  @classmethod
  def from_tokens_and_merges(cls, tokens: Sequence[str], merges: Sequence[str], *,
                             pre: str = "default", special_ids: Iterable[int] = (),
                             eos_id: int | None = None, bos_id: int | None = None,
                             pad_id: int = 0, unk_id: int | None = None,
                             add_bos: bool = False) -> "BpeVocabulary":
    """From a GGUF-style vocabulary: tokens in id order and "left right" merge strings."""
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise UserError("BPE vocabulary has duplicate tokens")
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    pre_tokenizer, ignore_merges = _pre_tokenizer(pre)
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                                                ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens are matched whole in text, as the reference (HF) tokenizers do.
    specials = [tokenizers.AddedToken(tokens[i], special=True, normalized=False)
                for i in special_ids]
    if specials:
      tokenizer.add_special_tokens(specials)
    return cls(tokenizer, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id, unk_id=unk_id,
               add_bos=add_bos)

  @classmethod
  def from_gguf(cls, path_or_reader: Any) -> "BpeVocabulary":
    """From the tokenizer metadata of a GGUF file (path or `gguf.GGUFReader`)."""
    reader = (gguf.GGUFReader(os.fspath(path_or_reader))
              if isinstance(path_or_reader, (str, os.PathLike)) else path_or_reader)
    fields = reader.fields

    def get(key, default=None):
      return fields[key].contents() if key in fields else default

    model = get("tokenizer.ggml.model")
    if model != "gpt2":
      raise UserError(f"GGUF tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') "
                      "tokenizers are supported")
    tokens = get("tokenizer.ggml.tokens")
    token_types = get("tokenizer.ggml.token_type", [])
    return cls.from_tokens_and_merges(
        tokens, get("tokenizer.ggml.merges", []), pre=get("tokenizer.ggml.pre", "default"),
        special_ids=[i for i, kind in enumerate(token_types) if kind == _TOKEN_TYPE_CONTROL],
        eos_id=get("tokenizer.ggml.eos_token_id"), bos_id=get("tokenizer.ggml.bos_token_id"),
        pad_id=get("tokenizer.ggml.padding_token_id", get("tokenizer.ggml.eos_token_id", 0)),
        unk_id=get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(get("tokenizer.ggml.add_bos_token", False)))

  @classmethod
  def from_tokenizer_json(cls, path: str, *, eos_id: int | None = None,
                          bos_id: int | None = None, pad_id: int | None = None,
                          add_bos: bool | None = None) -> "BpeVocabulary":
    """From a Hugging Face `tokenizer.json` (its own pre-tokenizer and decoder are kept).

    `add_bos=None` follows the file's post-processor, as `transformers` would: Llama 2/3
    files template BOS in, GPT-2-style ones (SmolLM) do not.
    """
    tokenizer = tokenizers.Tokenizer.from_file(os.fspath(path))
    if add_bos is None:
      templated = tokenizer.encode("", add_special_tokens=True).ids
      add_bos = bos_id is not None and templated[:1] == [bos_id]
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    return cls(tokenizer, eos_id=eos_id, bos_id=bos_id, pad_id=pad, add_bos=add_bos)

  @classmethod
  def byte_level(cls, special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>",
                                                       "<|im_end|>")) -> "BpeVocabulary":
    """No merges: specials then one token per byte (ids len(specials) + byte), for tests."""
    alphabet = bytes_to_unicode()
    tokens = list(special_tokens) + [alphabet[byte] for byte in range(256)]
    return cls.from_tokens_and_merges(tokens, [], pre="default",
                                      special_ids=range(len(special_tokens)),
                                      eos_id=0, bos_id=0, pad_id=0)

  # ---- seqio.Vocabulary -----------------------------------------------------------------

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def eos_id(self) -> int | None:
    return self._eos_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes many strings at once (the Rust tokenizer parallelises the batch)."""
    return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return python_encode_tf(self._encode, s)  # the Rust tokenizer, called from tf.data

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    ids = tf.convert_to_tensor(ids)

    def decode_rows(rows):
      rows = rows.numpy()
      flat = rows.reshape(-1, rows.shape[-1])
      texts = [self._decode(row).encode("utf-8") for row in flat]
      return np.asarray(texts, dtype=object).reshape(rows.shape[:-1])

    texts = tf.py_function(decode_rows, [ids], tf.string)
    texts.set_shape(ids.shape[:-1])
    return texts

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, BpeVocabulary) and self._fingerprint == other._fingerprint

  def __hash__(self) -> int:
    return hash(self._fingerprint)

  def __repr__(self) -> str:
    return f"BpeVocabulary({self.vocab_size} tokens, sha256 {self._fingerprint[:12]})"
