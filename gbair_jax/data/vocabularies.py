"""SeqIO vocabularies for the backbones: BERT WordPiece (uncased), SentencePiece (T5) and
a word-hashing toy vocabulary (tiny test models); byte-level BPE (LLaMA family) is
bpe_vocabulary.py beside it.

`WordPieceVocabulary` reproduces BERT's uncased tokenizer (the one all-MiniLM-L6-v2 was
trained with) with tensorflow_text for `encode_tf`, which the SeqIO tasks tokenize with, and
in pure Python for `encode`, the reference the tests hold `encode_tf` to.
"""
from __future__ import annotations

import functools
import os
import unicodedata
import zlib
from typing import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

from gbair_jax.errors import UserError

# BERT treats these CJK blocks as one word per character (HF `_is_chinese_char`).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# HF counts characters and tensorflow_text counts UTF-8 bytes; they agree on ASCII words,
# which is all a 100-long "word" ever is in practice (URLs, base64, repeated letters).
_MAX_CHARS_PER_WORD = 100


def _is_cjk(code_point: int) -> bool:
  return any(low <= code_point <= high for low, high in _CJK_RANGES)


def _is_punctuation(char: str) -> bool:
  # ASCII symbols such as "$", "^", "`" are not Unicode punctuation, but BERT splits them.
  code_point = ord(char)
  if 33 <= code_point <= 47 or 58 <= code_point <= 64 or 91 <= code_point <= 96 or (
      123 <= code_point <= 126):
    return True
  return unicodedata.category(char).startswith("P")


def _is_dropped(char: str) -> bool:
  """NUL, U+FFFD and control/format characters other than tab and newlines."""
  if char in "\t\n\r":
    return False
  return ord(char) in (0, 0xFFFD) or unicodedata.category(char) in ("Cc", "Cf")


def _normalize(text: str) -> str:
  """BERT's clean-up, lower-casing and accent stripping, before any splitting."""
  chars = []
  for char in text:
    if _is_dropped(char):
      continue
    if char.isspace() or unicodedata.category(char).startswith("Z"):
      chars.append(" ")
    elif _is_cjk(ord(char)):
      chars.append(f" {char} ")
    else:
      chars.append(char)
  text = unicodedata.normalize("NFD", "".join(chars).lower())
  return "".join(char for char in text if unicodedata.category(char) != "Mn")


def _split_words(text: str) -> list[str]:
  """Whitespace split, then every punctuation character becomes its own word."""
  words = []
  for chunk in text.split():
    current = []
    for char in chunk:
      if _is_punctuation(char):
        if current:
          words.append("".join(current))
          current = []
        words.append(char)
      else:
        current.append(char)
    if current:
      words.append("".join(current))
  return words


class WordPieceVocabulary(seqio.Vocabulary):
  """BERT uncased WordPiece over a `vocab.txt` (one piece per line, id = line number).

  `eos_id` is [SEP] and `bos_id` [CLS]: a `features.TextFeature` with add_bos and add_eos
  then frames a sequence the way BERT does.
  """

  def __init__(self, vocab_path: str | os.PathLike, extra_ids: int = 0):
    self._vocab_path = os.fspath(vocab_path)
    try:
      with open(self._vocab_path, encoding="utf-8") as f:
        self._pieces = [line.rstrip("\n") for line in f]
    except OSError as e:
      raise UserError(f"cannot read WordPiece vocabulary {self._vocab_path}: {e}") from e
    self._ids = {piece: i for i, piece in enumerate(self._pieces)}
    missing = [t for t in _SPECIAL_TOKENS if t not in self._ids]
    if missing:
      raise UserError(f"{self._vocab_path} lacks BERT special tokens {missing}")
    super().__init__(extra_ids=extra_ids)

  @property
  def vocab_path(self) -> str:
    return self._vocab_path

  @property
  def pad_id(self) -> int:
    return self._ids["[PAD]"]

  @property
  def eos_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def bos_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def cls_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def sep_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def _base_vocab_size(self) -> int:
    return len(self._pieces)

  def _wordpiece(self, word: str) -> list[int]:
    """Greedy longest-match-first; a word with any unmatched rest is one [UNK]."""
    if len(word) > _MAX_CHARS_PER_WORD:
      return [self.unk_id]
    ids = []
    start = 0
    while start < len(word):
      end = len(word)
      piece_id = None
      while start < end:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        piece_id = self._ids.get(piece)
        if piece_id is not None:
          break
        end -= 1
      if piece_id is None:
        return [self.unk_id]
      ids.append(piece_id)
      start = end
    return ids

  def _encode(self, s: str) -> Sequence[int]:
    ids = []
    for word in _split_words(_normalize(s)):
      ids.extend(self._wordpiece(word))
    return ids

  def _decode(self, ids: Sequence[int]) -> str:
    special = {self._ids[t] for t in _SPECIAL_TOKENS if t != "[UNK]"}
    pieces = [self._pieces[i] for i in ids if i not in special and 0 <= i < len(self._pieces)]
    return " ".join(pieces).replace(" ##", "")

  @functools.cached_property
  def _tf_tokenizer(self) -> tf_text.BertTokenizer:
    # Lower-casing is done in `_normalize_tf`: tensorflow_text's own lower_case applies
    # NFKC case folding, which differs from BERT's str.lower() (e.g. "ß", ligatures).
    # init_scope: built eagerly even when first needed inside a tf.data map, so the cached
    # table does not belong to (and die with) that map's graph.
    with tf.init_scope():
      table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(self._pieces), tf.range(len(self._pieces), dtype=tf.int64)), -1)
      return tf_text.BertTokenizer(table, token_out_type=tf.int64, unknown_token="[UNK]",
                                   max_bytes_per_word=_MAX_CHARS_PER_WORD, lower_case=False)

  @staticmethod
  def _normalize_tf(s: tf.Tensor) -> tf.Tensor:
    """The TensorFlow twin of `_normalize` (CJK spacing is done by BertTokenizer)."""
    s = tf.strings.regex_replace(
        s, r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\x{FFFD}]|\p{Cf}", "")
    s = tf.strings.regex_replace(s, r"\p{Z}", " ")
    s = tf.strings.lower(s, encoding="utf-8")
    s = tf_text.normalize_utf8(s, "NFD")
    return tf.strings.regex_replace(s, r"\p{Mn}", "")

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """String scalar -> int32 [N]; a batch of strings -> int32 ragged [B, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    ids = self._tf_tokenizer.tokenize(self._normalize_tf(s))  # [..., words, pieces]
    ids = ids.merge_dims(-2, -1)
    if s.shape.rank == 0:
      ids = ids.flat_values if isinstance(ids, tf.RaggedTensor) else tf.reshape(ids, [-1])
    return tf.cast(ids, tf.int32)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    pieces = tf.gather(tf.constant(self._pieces), ids)
    keep = tf.logical_not(tf.reduce_any(
        tf.equal(tf.expand_dims(pieces, -1), ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]), -1))
    pieces = tf.ragged.boolean_mask(pieces, keep)
    text = tf.strings.reduce_join(pieces, axis=-1, separator=" ")
    return tf.strings.regex_replace(text, " ##", "")

  def __eq__(self, other) -> bool:
    return isinstance(other, WordPieceVocabulary) and self._pieces == other._pieces

  def __repr__(self) -> str:
    return f"WordPieceVocabulary({self._vocab_path!r})"

  def __hash__(self) -> int:
    return hash(self._vocab_path)


def python_encode_tf(encode: Callable[[str], Sequence[int]], s: tf.Tensor) -> tf.Tensor:
  """`_encode_tf` for a vocabulary whose tokenizer is Python: a string scalar -> int32 [N]
  through `tf.py_function` (the same ids as `encode`), a batch -> int32 ragged [B, None]."""
  s = tf.convert_to_tensor(s, tf.string)
  if s.shape.rank == 0:
    ids = tf.py_function(lambda x: np.asarray(encode(x.numpy().decode("utf-8")), np.int32),
                         [s], tf.int32)
    ids.set_shape([None])
    return ids
  return tf.map_fn(functools.partial(python_encode_tf, encode), s,
                   fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))


class HashingVocabulary(seqio.Vocabulary):
  """A toy word vocabulary with no file, for tiny random test models: lower-cased words,
  split on whitespace, each hashed (crc32: stable across processes) to an id in
  [first_word_id, size). Ids 0-4 are [PAD], [UNK], [CLS] (bos), [SEP] (eos), [MASK] as in
  BERT's order. Decoding gives the ids back, since hashing forgets the words."""

  first_word_id = 5

  def __init__(self, size: int):
    if size <= self.first_word_id:
      raise UserError(f"a hashing vocabulary needs more than {self.first_word_id} ids, got {size}")
    self._size = size
    super().__init__(extra_ids=0)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def unk_id(self) -> int:
    return 1

  @property
  def bos_id(self) -> int:
    return 2

  @property
  def eos_id(self) -> int:
    return 3

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def _encode(self, s: str) -> Sequence[int]:
    span = self._size - self.first_word_id
    return [self.first_word_id + zlib.crc32(word.encode()) % span for word in s.lower().split()]

  def _decode(self, ids: Sequence[int]) -> str:
    return " ".join(f"<{int(i)}>" for i in ids if int(i) >= self.first_word_id)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return python_encode_tf(self._encode, s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    raise NotImplementedError("HashingVocabulary cannot decode in TensorFlow")

  def __eq__(self, other) -> bool:
    return isinstance(other, HashingVocabulary) and self._size == other._size

  def __hash__(self) -> int:
    return hash(("HashingVocabulary", self._size))

  def __repr__(self) -> str:
    return f"HashingVocabulary({self._size})"


def sentencepiece_vocabulary(path: str | os.PathLike, extra_ids: int = 0,
                             binding: str = "SentencePiece model") -> seqio.SentencePieceVocabulary:
  """A SentencePiece model (local, or gs:// where Google Cloud is reachable) as a SeqIO
  vocabulary, read now so that a bad path fails here, naming `binding` (its gin name)."""
  path = os.fspath(path)
  if "://" not in path and not os.path.isfile(path):
    raise UserError(f"{binding}={path!r}: the SentencePiece model file does not exist")
  vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  try:
    vocabulary.tokenizer  # pylint: disable=pointless-statement  # forces the file read
  except Exception as error:  # pylint: disable=broad-except  # tf/gfile raise many types
    hint = (" gs:// needs Google Cloud access: copy the file locally (gsutil cp) and set "
            "the local path." if path.startswith("gs://") else "")
    raise UserError(f"{binding}={path!r}: cannot read the SentencePiece model "
                    f"({type(error).__name__}: {error}).{hint}") from error
  return vocabulary
