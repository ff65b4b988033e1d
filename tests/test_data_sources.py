"""The offline tasks (insults, rotten_tomatoes, tweet_sentiment): counts, splits, unescaping,
stable ids.

Also runs gin/data/insults.gin the way `gbair data describe` does.
"""
import os

import gin
import numpy as np
import pytest

from gbair_jax.data import dataset
from gbair_jax.data import example_ids
from gbair_jax.data import sources
from gbair_jax.data import table_files
from gbair_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def insults():
  gin.clear_config()
  return dataset.load_data("insults")


def _clear_caches():
  sources._parse_insults_file.cache_clear()
  table_files._read_table_cached.cache_clear()


def test_insults_counts(insults):
  sizes = {name: len(split["label"]) for name, split in insults.splits.items()}
  assert sizes["train"] + sizes["validation"] == 3947
  assert sizes["test"] == 2647
  assert insults.label_names == ("not insult", "insult")
  train_and_validation = np.concatenate(
      [insults.splits["train"]["label"], insults.splits["validation"]["label"]])
  assert np.bincount(train_and_validation).tolist() == [2898, 1049]
  assert np.bincount(insults.splits["test"]["label"]).tolist() == [1954, 693]


def test_insults_validation_is_stratified(insults):
  validation = np.bincount(insults.splits["validation"]["label"]).tolist()
  assert validation == [round(0.1 * 2898), round(0.1 * 1049)]


def test_insults_columns_and_dtypes(insults):
  for split in insults.splits.values():
    assert split["example_id"].dtype == np.int64
    assert split["text"].dtype == object and isinstance(split["text"][0], str)
    assert split["label"].dtype == np.int32 and split["original_label"].dtype == np.int32
    assert split["is_corrupted"].dtype == bool and not split["is_corrupted"].any()
    np.testing.assert_array_equal(split["label"], split["original_label"])


def test_insults_text_is_unescaped(insults):
  texts = [t for split in insults.splits.values() for t in split["text"]]
  assert not any("\\n" in t or "\\x" in t or "\\u" in t for t in texts)
  assert not any(t.startswith('"') and t.endswith('"') and len(t) > 1 for t in texts)
  assert insults.splits["train"]["text"][0] == "You fuck your dad."


def test_unescape_comment():
  assert sources.unescape_comment('"a\\nb"') == "a\nb"
  assert sources.unescape_comment('"x\\xa0y"') == "x\xa0y"
  assert sources.unescape_comment('"\\u0111i"') == "\u0111i"
  # Escaped twice, and UTF-8 bytes escaped one by one.
  assert sources.unescape_comment('"a\\\\nb"') == "a\nb"
  assert sources.unescape_comment('"don\\\\xe2\\\\x80\\\\x99t"') == "don\u2019t"
  assert sources.unescape_comment('"it\\\\\'s"') == "it's"
  # A UTF-16 pair (an emoji) and a bad escape left as it is.
  assert sources.unescape_comment('"\\ud83d\\ude00 \\q"') == "\U0001F600 \\q"


def test_ids_stable_across_loads_and_runs(insults):
  _clear_caches()
  again = dataset.load_data("insults")
  for name in insults.splits:
    np.testing.assert_array_equal(insults.splits[name]["example_id"],
                                  again.splits[name]["example_id"])
    np.testing.assert_array_equal(insults.splits[name]["text"], again.splits[name]["text"])
  # Pinned values: a changed id scheme would orphan every ledger written before it.
  assert example_ids.stable_example_id("insults", "train.csv", 1) == 8537920491996232964
  assert insults.splits["train"]["example_id"][0] == 8537920491996232964
  all_ids = np.concatenate([s["example_id"] for s in insults.splits.values()])
  assert len(np.unique(all_ids)) == 3947 + 2647 and (all_ids >= 0).all()


def test_split_seed_moves_examples():
  gin.bind_parameter("insults_splits.split_seed", 1)
  other = sources.insults_splits()
  gin.clear_config()
  default = sources.insults_splits()
  assert len(other["validation"]["label"]) == len(default["validation"]["label"])
  assert set(other["validation"]["example_id"]) != set(default["validation"]["example_id"])
  np.testing.assert_array_equal(default["test"]["example_id"], other["test"]["example_id"])


def test_rotten_tomatoes_counts():
  data = dataset.load_data("rotten_tomatoes")
  sizes = {name: len(split["label"]) for name, split in data.splits.items()}
  assert sum(sizes.values()) == 8530
  assert sizes == {"train": 6826, "validation": 852, "test": 852}
  assert data.label_names == ("negative", "positive")
  labels = np.concatenate([s["label"] for s in data.splits.values()])
  assert np.bincount(labels).tolist() == [4265, 4265]
  ids = np.concatenate([s["example_id"] for s in data.splits.values()])
  assert len(np.unique(ids)) == 8530
  again = sources.rotten_tomatoes_splits()
  for name in data.splits:
    np.testing.assert_array_equal(data.splits[name]["example_id"], again[name]["example_id"])


def test_tweet_sentiment_counts_balanced_and_stable():
  data = dataset.load_data("tweet_sentiment")
  sizes = {name: len(split["label"]) for name, split in data.splits.items()}
  assert sizes == {"train": 5070, "validation": 633, "test": 633}
  assert data.label_names == ("negative", "neutral", "positive") and data.num_classes == 3
  for split in data.splits.values():  # stratified and balanced: every split has 1/3 each
    counts = np.bincount(split["label"], minlength=3)
    assert counts.max() - counts.min() == 0
  ids = np.concatenate([s["example_id"] for s in data.splits.values()])
  texts = np.concatenate([s["text"] for s in data.splits.values()])
  assert len(np.unique(ids)) == len(set(texts)) == 6336  # no duplicate text across splits
  assert all(t == " ".join(t.split()) and t for t in texts)
  again = sources.tweet_sentiment_splits()
  for name in data.splits:
    np.testing.assert_array_equal(data.splits[name]["example_id"], again[name]["example_id"])
  # Mac Roman, not UTF-8: "I\xd5m" is "I’m", and no byte was left undecoded.
  assert any("’" in t for t in texts)
  assert not any("\ufffd" in t or "\r" in t for t in texts)


def _write_tweets(path, rows):
  with open(path, "wb") as f:
    f.write(b"sentiment,confidence,text\r\n")
    for sentiment, confidence, text in rows:
      f.write(f'{sentiment},{confidence},"{text}"\r\n'.encode("mac_roman"))


def test_tweet_sentiment_filters_dedupes_and_balances(tmp_path):
  path = str(tmp_path / "tweets.csv")
  _write_tweets(path, [
      ("negative", "1", "delayed   again\r\rugh"),   # row 1
      ("negative", "1", "delayed again ugh"),          # the same text after spacing: dropped
      ("neutral", "1", "flight at noon"),
      ("positive", "1", "flight at noon"),             # conflicting labels: both dropped
      ("positive", "1", "I’m so happy"),
      ("positive", "1", "great crew"),
      ("neutral", "0.6", "gate B"),                   # below min_confidence 1.0
      ("neutral", "", "no confidence"),               # published without one
      ("neutral", "1", "boarding now"),
  ])
  everything = sources.tweet_sentiment_splits(balance_classes=False, validation_fraction=0.0,
                                              test_fraction=0.0, path=path)["train"]
  assert list(everything["text"]) == ["delayed again ugh", "I’m so happy", "great crew",
                                      "boarding now"]
  assert list(everything["label"]) == [0, 2, 2, 1]
  # The kept duplicate has the id of its first row.
  assert everything["example_id"][0] == example_ids.stable_example_id(
      "tweet_sentiment", sources.TWEET_SENTIMENT_FILE, 1)
  loose = sources.tweet_sentiment_splits(min_confidence=None, balance_classes=False,
                                         validation_fraction=0.0, test_fraction=0.0,
                                         path=path)["train"]
  assert {"gate B", "no confidence"} <= set(loose["text"])
  balanced = sources.tweet_sentiment_splits(validation_fraction=0.0, test_fraction=0.0,
                                            path=path)["train"]
  assert np.bincount(balanced["label"]).tolist() == [1, 1, 1]
  with pytest.raises(UserError, match="min_confidence = 2"):
    sources.tweet_sentiment_splits(min_confidence=2, path=path)
  _write_tweets(path, [("happy", "1", "x")])
  with pytest.raises(UserError, match="label 'happy' is not one of"):
    sources.tweet_sentiment_splits(path=path)


def test_read_table_with_another_encoding(tmp_path):
  path = tmp_path / "latin.csv"
  path.write_bytes("text\ncaf\u00e9\n".encode("latin-1"))
  with pytest.raises(UserError, match="not UTF-8"):
    table_files.read_table(str(path), "csv")
  table = table_files.read_table(str(path), "csv", encoding="latin-1")
  assert table.rows[0][1]["text"] == "caf\u00e9"


def test_insults_gin_file_with_corruption_override():
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "gin", "data", "insults.gin")], ["CORRUPTION_RATE = 0.3"])
  data = dataset.load_data()
  train = data.splits["train"]
  assert data.task == "insults"
  assert train["is_corrupted"].sum() == round(0.3 * len(train["label"])) == 1066
  assert (train["label"] != train["original_label"]).sum() == 1066
  assert not data.splits["validation"]["is_corrupted"].any()
  assert not data.splits["test"]["is_corrupted"].any()


def test_every_data_gin_file_parses():
  for name in sorted(os.listdir(os.path.join(REPO, "gin", "data"))):
    gin.clear_config()
    gin.parse_config_file(os.path.join(REPO, "gin", "data", name))
    with open(os.path.join(REPO, "gin", "data", name)) as f:
      header = f.read()
    assert "gbair data describe --gin_file=gin/data/" + name in header
