"""Label corruption: exact count, determinism, modes, train only, and bad rates.

Uses the `user_files` task on a small fixture file so every load takes well under a second.
"""
import gin
import numpy as np
import pytest

from gbair_jax.data import corruption
from gbair_jax.data import dataset
from gbair_jax.data import tf_columns
from gbair_jax.data import user_files  # noqa: F401  (registers user_files_options with gin)
from gbair_jax.errors import UserError


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def three_class_task(tmp_path):
  path = tmp_path / "data.csv"
  rows = ["text,label"] + [f"sentence {i},{'abc'[i % 3]}" for i in range(300)]
  path.write_text("\n".join(rows) + "\n", encoding="utf-8")

  def bind(**corruption_bindings):
    gin.clear_config()
    gin.bind_parameter("user_files_options.train_path", str(path))
    gin.bind_parameter("user_files_options.label_names", ("a", "b", "c"))
    for name, value in corruption_bindings.items():
      gin.bind_parameter(f"corrupt_labels.{name}", value)
    return dataset.load_data("user_files")

  return bind


def test_exact_count_and_only_train(three_class_task):
  clean = three_class_task()
  data = three_class_task(rate=0.3, seed=5)
  train = data.splits["train"]
  assert len(train["label"]) == 240
  assert train["is_corrupted"].sum() == round(0.3 * 240) == 72
  changed = train["label"] != train["original_label"]
  np.testing.assert_array_equal(changed, train["is_corrupted"])
  np.testing.assert_array_equal(train["original_label"], clean.splits["train"]["label"])
  for name in ("validation", "test"):
    for column in clean.splits[name]:
      np.testing.assert_array_equal(data.splits[name][column], clean.splits[name][column])
    assert not data.splits[name]["is_corrupted"].any()


def test_same_seed_same_examples_other_seed_others(three_class_task):
  first = three_class_task(rate=0.2, seed=3).splits["train"]
  again = three_class_task(rate=0.2, seed=3).splits["train"]
  other = three_class_task(rate=0.2, seed=4).splits["train"]
  np.testing.assert_array_equal(first["label"], again["label"])
  np.testing.assert_array_equal(first["is_corrupted"], again["is_corrupted"])
  assert other["is_corrupted"].sum() == first["is_corrupted"].sum()
  assert not np.array_equal(first["is_corrupted"], other["is_corrupted"])


def test_uniform_mode_reaches_every_other_class():
  ids = np.arange(3000, dtype=np.int64) * 7919
  labels = np.zeros(3000, np.int32)
  new, corrupted = corruption.corrupted_labels(ids, labels, 3, 0.5, seed=0, mode="auto")
  assert corrupted.sum() == 1500
  assert (new[corrupted] != 0).all() and (new[~corrupted] == 0).all()
  counts = np.bincount(new[corrupted], minlength=3)
  assert counts[0] == 0 and 600 < counts[1] < 900 and 600 < counts[2] < 900


def test_binary_flip_and_order_independence():
  ids = np.arange(1, 101, dtype=np.int64) * 104729
  labels = (np.arange(100) % 2).astype(np.int32)
  new, corrupted = corruption.corrupted_labels(ids, labels, 2, 0.25, seed=9, mode="flip")
  assert corrupted.sum() == 25
  np.testing.assert_array_equal(new[corrupted], 1 - labels[corrupted])
  order = np.random.default_rng(0).permutation(100)
  new_shuffled, corrupted_shuffled = corruption.corrupted_labels(ids[order], labels[order], 2,
                                                                 0.25, seed=9, mode="flip")
  np.testing.assert_array_equal(new_shuffled, new[order])
  np.testing.assert_array_equal(corrupted_shuffled, corrupted[order])
  # A larger rate corrupts a superset of the examples.
  _, more = corruption.corrupted_labels(ids, labels, 2, 0.5, seed=9)
  assert (more >= corrupted).all() and more.sum() == 50


def test_preprocessor_on_a_seqio_style_dataset():
  columns = {"example_id": np.arange(10, dtype=np.int64), "text": np.array(["t"] * 10, object),
             "label": np.zeros(10, np.int32), "original_label": np.zeros(10, np.int32),
             "is_corrupted": np.zeros(10, bool)}
  out = tf_columns.from_dataset(corruption.corrupt_labels(
      tf_columns.to_dataset(columns), num_classes=2, rate=0.4, seed=1))
  assert out["is_corrupted"].sum() == 4 and out["label"].sum() == 4
  assert out["original_label"].sum() == 0
  assert isinstance(out["text"][0], str)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), "0.3", True])
def test_rate_outside_unit_interval_names_the_binding(three_class_task, rate):
  with pytest.raises(UserError) as info:
    three_class_task(rate=rate)
  message = str(info.value).splitlines()[0]
  assert "corrupt_labels.rate" in message and "CORRUPTION_RATE" in message
  assert "[0, 1)" in message


def test_flip_needs_two_classes(three_class_task):
  with pytest.raises(UserError, match="corrupt_labels.mode"):
    three_class_task(rate=0.1, mode="flip")
  with pytest.raises(UserError, match="corrupt_labels.mode"):
    three_class_task(rate=0.1, mode="sideways")


def test_zero_rate_is_the_clean_data():
  ids = np.arange(50, dtype=np.int64)
  labels = np.ones(50, np.int32)
  new, corrupted = corruption.corrupted_labels(ids, labels, 2, 0.0, seed=0)
  assert not corrupted.any()
  np.testing.assert_array_equal(new, labels)


def test_train_subset_is_seeded_and_corrupted_exactly():
  import gin
  from gbair_jax.data.dataset import load_data
  gin.clear_config()
  try:
    gin.parse_config("corrupt_labels.rate = 0.3")
    first = load_data(task="insults", max_train_examples=500)
    again = load_data(task="insults", max_train_examples=500)
    small_test = load_data(task="insults", max_test_examples=300)
  finally:
    gin.clear_config()
  train = first.splits["train"]
  assert len(train["label"]) == 500
  assert train["is_corrupted"].sum() == 150
  np.testing.assert_array_equal(train["example_id"], again.splits["train"]["example_id"])
  assert len(first.splits["test"]["label"]) == 2647  # other splits untouched
  test = small_test.splits["test"]
  assert len(test["label"]) == 300 and set(test["example_id"]) < set(first.splits["test"]["example_id"])
  assert len(small_test.splits["train"]["label"]) == 3552 and not test["is_corrupted"].any()


# --- class_conditional and instance_dependent noise -------------------------------------


def _ambiguous_texts(num: int, seed: int = 0):
  """Binary texts: the first half clear (three words of their class), the second half
  ambiguous (words of both classes), labels alternating."""
  rng = np.random.default_rng(seed)
  positive, negative = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "ugly"]
  labels = (np.arange(num) % 2).astype(np.int32)
  texts = []
  for i, label in enumerate(labels):
    own, other = (positive, negative) if label else (negative, positive)
    words = list(rng.choice(own, 3))
    if i >= num // 2:
      words = list(rng.choice(own, 2)) + list(rng.choice(other, 2))
    texts.append(" ".join(words + [f"w{i}"]))
  return np.array(texts, object), labels


def test_class_conditional_counts_per_class_and_one_direction():
  ids = np.arange(1000, dtype=np.int64) * 7919
  labels = (np.arange(1000) % 4 == 0).astype(np.int32)  # 250 of class 1, 750 of class 0
  new, corrupted = corruption.corrupted_labels(ids, labels, 2, 0.0, seed=3,
                                               mode="class_conditional",
                                               transition=((0.0, 0.15), (0.45, 0.0)))
  assert (corrupted & (labels == 1)).sum() == round(0.45 * 250)
  assert (corrupted & (labels == 0)).sum() == round(0.15 * 750)
  np.testing.assert_array_equal(new != labels, corrupted)
  # One-directional: only class 1 loses labels; a larger entry takes a superset.
  new1, one_way = corruption.corrupted_labels(ids, labels, 2, 0.0, seed=3,
                                              mode="class_conditional",
                                              transition=((0.0, 0.0), (0.2, 0.0)))
  assert one_way.sum() == 50 and (labels[one_way] == 1).all() and (new1[one_way] == 0).all()
  _, more = corruption.corrupted_labels(ids, labels, 2, 0.0, seed=3, mode="class_conditional",
                                        transition=((0.0, 0.0), (0.4, 0.0)))
  assert (more >= one_way).all() and more.sum() == 100
  # Order-independent.
  order = np.random.default_rng(1).permutation(1000)
  new_shuffled, _ = corruption.corrupted_labels(ids[order], labels[order], 2, 0.0, seed=3,
                                                mode="class_conditional",
                                                transition=((0.0, 0.15), (0.45, 0.0)))
  np.testing.assert_array_equal(new_shuffled, new[order])


def test_class_conditional_targets_follow_the_matrix():
  ids = np.arange(3000, dtype=np.int64) * 104729
  labels = np.zeros(3000, np.int32)
  new, corrupted = corruption.corrupted_labels(
      ids, labels, 3, 0.0, seed=0, mode="class_conditional",
      transition=((0.0, 0.3, 0.1), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)))
  assert corrupted.sum() == 1200
  counts = np.bincount(new[corrupted], minlength=3)
  assert counts[0] == 0 and 820 < counts[1] < 980 and 220 < counts[2] < 380


@pytest.mark.parametrize("bindings, message", [
    ({"mode": "class_conditional"}, "needs corrupt_labels.transition"),
    ({"mode": "class_conditional", "transition": ((0, 0.1), (0.1, 0)), "rate": 0.2},
     "leave the rate at 0"),
    ({"mode": "uniform", "transition": ((0, 0.1), (0.1, 0)), "rate": 0.2}, "does not use it"),
    ({"mode": "class_conditional", "transition": ((0, 0.1), (0.1, 0))}, "3 x 3"),
    ({"mode": "class_conditional", "transition": ((0, 0.6, 0.5), (0, 0, 0), (0, 0, 0))},
     "below 1"),
])
def test_class_conditional_bad_bindings_name_the_binding(three_class_task, bindings, message):
  with pytest.raises(UserError, match=message):
    three_class_task(**bindings)


def test_instance_dependent_flips_the_ambiguous_examples():
  texts, labels = _ambiguous_texts(400)
  ids = np.arange(400, dtype=np.int64) * 31 + 5
  new, corrupted = corruption.corrupted_labels(ids, labels, 2, 0.25, seed=2,
                                               mode="instance_dependent", texts=texts)
  assert corrupted.sum() == 100
  np.testing.assert_array_equal(new[corrupted], 1 - labels[corrupted])
  np.testing.assert_array_equal(new[~corrupted], labels[~corrupted])
  # Stratified by default: each class keeps its share (200 each -> 50 each).
  assert (corrupted & (labels == 1)).sum() == 50
  # The ambiguous half holds most flips (uniform noise would put half there).
  assert corrupted[200:].sum() >= 80
  # Deterministic, order-independent, a larger rate takes a superset.
  again, _ = corruption.corrupted_labels(ids, labels, 2, 0.25, seed=2, mode="instance_dependent",
                                         texts=texts)
  np.testing.assert_array_equal(again, new)
  order = np.random.default_rng(0).permutation(400)
  shuffled, _ = corruption.corrupted_labels(ids[order], labels[order], 2, 0.25, seed=2,
                                            mode="instance_dependent", texts=texts[order])
  np.testing.assert_array_equal(shuffled, new[order])
  _, more = corruption.corrupted_labels(ids, labels, 2, 0.4, seed=2, mode="instance_dependent",
                                        texts=texts)
  assert (more >= corrupted).all() and more.sum() == 160
  _, other_seed = corruption.corrupted_labels(ids, labels, 2, 0.25, seed=3,
                                              mode="instance_dependent", texts=texts)
  assert not np.array_equal(other_seed, corrupted)


def test_instance_dependent_through_the_preprocessor_and_describe():
  from gbair_jax.data import describe as describe_lib
  texts, labels = _ambiguous_texts(60)
  columns = {"example_id": np.arange(60, dtype=np.int64), "text": texts, "label": labels,
             "original_label": labels.copy(), "is_corrupted": np.zeros(60, bool)}
  out = tf_columns.from_dataset(corruption.corrupt_labels(
      tf_columns.to_dataset(columns), num_classes=2, rate=0.2, seed=1,
      mode="instance_dependent", instance_power=1.0, instance_folds=3))
  assert out["is_corrupted"].sum() == 12
  np.testing.assert_array_equal(out["original_label"], labels)
  data = dataset.LabeledData(task="toy", label_names=("neg", "pos"),
                             splits={"train": out})
  flips = describe_lib.describe(data)["splits"]["train"]["flips"]
  assert flips == {"neg -> pos": 6, "pos -> neg": 6}
  text = describe_lib.format_description(describe_lib.describe(data))
  assert "train flips (clean -> current label): neg -> pos 6, pos -> neg 6" in text


def test_reference_model_learns_words_out_of_fold():
  from gbair_jax.data import noise_reference
  texts, labels = _ambiguous_texts(200)
  probs = noise_reference.out_of_fold_probabilities(texts, labels, np.arange(200), 2, seed=0)
  assert probs.shape == (200, 2)
  np.testing.assert_allclose(probs.sum(1), 1.0)
  confidence = probs[np.arange(200), labels]
  assert confidence[:100].mean() > 0.8 > confidence[100:].mean()
  folds = noise_reference.stratified_folds(np.arange(200), labels, 5, 0, "x")
  assert np.bincount(folds).tolist() == [40] * 5
  assert all(np.bincount(labels[folds == k]).tolist() == [20, 20] for k in range(5))
