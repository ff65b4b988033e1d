"""Tests for the SeqIO vocabularies: WordPiece ids equal Hugging Face `tokenizers`' ids."""
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers

from gbair_jax.data import vocabularies
from gbair_jax.errors import UserError
from gbair_jax.models import minilm_weights

SENTENCES = [
    "I love this movie!",
    "Hello, World! It's a café-naïve résumé.",
    "Crème brûlée à la mode, s'il vous plaît... ÀÉÎÕÜ Straße İstanbul ﬁne",
    "don't stop (believing) -- $100 #hashtag @user ^_^ `code` ~tilde~",
    "中文字符 and 日本語 テスト",
    "tabs\tand\nnewlines\u00a0no-break\u2003em-space zero\u200bwidth \x00nul\x07bell\ufffd",
    "“smart quotes” — dashes – and … ellipsis; emoji 😀",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 120,
    "",
]


@pytest.fixture(scope="module")
def vocab():
  return vocabularies.WordPieceVocabulary(minilm_weights.package_model_dir() / "vocab.txt")


@pytest.fixture(scope="module")
def reference():
  tokenizer = tokenizers.Tokenizer.from_file(
      str(minilm_weights.package_model_dir() / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


@pytest.mark.parametrize("sentence", SENTENCES)
def test_ids_equal_huggingface_tokenizers(vocab, reference, sentence):
  expected = reference.encode(sentence).ids[1:-1]  # drop [CLS] ... [SEP]
  assert list(vocab.encode(sentence)) == expected
  assert vocab.encode_tf(tf.constant(sentence)).numpy().tolist() == expected


def test_encode_tf_works_in_a_dataset_and_batched():
  # A fresh vocabulary whose first TF use is inside a dataset map (a graph), then eager.
  vocab = vocabularies.WordPieceVocabulary(minilm_weights.package_model_dir() / "vocab.txt")
  dataset = tf.data.Dataset.from_tensor_slices(SENTENCES[:3]).map(vocab.encode_tf)
  for sentence, ids in zip(SENTENCES, dataset.as_numpy_iterator()):
    assert ids.dtype == np.int32 and ids.tolist() == list(vocab.encode(sentence))
  batched = vocab.encode_tf(tf.constant(SENTENCES[:2]))
  assert batched.to_list() == [list(vocab.encode(s)) for s in SENTENCES[:2]]


def test_special_ids_and_decode(vocab):
  assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.eos_id) == (
      0, 100, 101, 102, 102)
  assert vocab.vocab_size == 30522
  ids = [vocab.cls_id, *vocab.encode("Unbelievably GOOD, isn't it?"), vocab.sep_id, 0, 0]
  assert vocab.decode(ids) == "unbelievably good , isn ' t it ?"
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == vocab.decode(ids)
  assert vocab.encode("qqzxv") != [vocab.unk_id]  # unknown words split into pieces


def test_missing_files_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="vocab.txt"):
    vocabularies.WordPieceVocabulary(tmp_path / "vocab.txt")
  (tmp_path / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(UserError, match="special tokens"):
    vocabularies.WordPieceVocabulary(tmp_path / "vocab.txt")
  with pytest.raises(UserError, match="spm.model"):
    vocabularies.sentencepiece_vocabulary(tmp_path / "spm.model")


def test_sentencepiece_helper():
  path = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                      "sentencepiece.model")
  vocab = vocabularies.sentencepiece_vocabulary(path)
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  ids = vocab.encode("this is a test")
  assert ids and vocab.decode(ids) == "this is a test"
