"""Registers a text-classification reader as a SeqIO task, and remembers its label names.

The task's source is a `seqio.FunctionDataSource` over the reader's columns (offline); its
preprocessors add the clean-label fields every example carries and tokenize `text` into
`inputs` with the gin-chosen backbone's vocabulary (features.py). Label corruption is a
separate preprocessor that `load_data` applies to the training split only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
from typing import Callable, Iterator, Mapping

import seqio
import tensorflow as tf

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import features as features_lib
from gbair_jax.data import tf_columns
from gbair_jax.errors import UserError

# split -> columns {example_id, text, label}; called lazily, so gin bindings apply.
SplitReader = Callable[[str], columns_lib.Columns]


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """A registered task: its SeqIO task and a callable giving its verbalizers."""

  name: str
  seqio_task: seqio.Task
  label_names: Callable[[], tuple[str, ...]]


_TASKS: dict[str, ClassificationTask] = {}


@seqio.map_over_dataset
def add_clean_label_fields(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Adds `original_label` (= label) and `is_corrupted` (False): the data as published."""
  return {**example, "original_label": example["label"],
          "is_corrupted": tf.constant(False)}


class ClassificationSeqioTask(seqio.Task):
  """A `seqio.Task` whose output features are the gin-chosen backbone's (`inputs_feature`).

  The backbone is a gin choice made after the task modules are imported, so the features
  are resolved when a dataset is built, once per `get_dataset` (or per `features_resolved`
  block), not at registration.
  """

  def __init__(self, *args, output_features: Mapping[str, seqio.Feature] | None = None,
               **kwargs):
    if output_features:
      raise ValueError("ClassificationSeqioTask resolves its output features from gin")
    self._resolved: dict[str, seqio.Feature] | None = None
    super().__init__(*args, output_features={}, **kwargs)

  @property
  def output_features(self) -> Mapping[str, seqio.Feature]:
    if self._resolved is not None:
      return self._resolved
    return features_lib.output_features(features_lib.inputs_feature())

  @contextlib.contextmanager
  def features_resolved(self, text_only: bool = False) -> Iterator[Mapping[str, seqio.Feature]]:
    """Resolves the features once for every dataset built inside the block; `text_only`:
    none (the examples keep `text` and are not tokenized)."""
    if self._resolved is not None:  # nested: the outer block's features hold
      yield self._resolved
      return
    self._resolved = {} if text_only else dict(self.output_features)
    try:
      yield self._resolved
    finally:
      self._resolved = None

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:  # pylint: disable=arguments-differ
    with self.features_resolved():
      return super().get_dataset(*args, **kwargs)


def register_classification_task(name: str, read_split: SplitReader,
                                 label_names: Callable[[], tuple[str, ...]]) -> seqio.Task:
  """Adds `name` to `seqio.TaskRegistry` (replacing an earlier registration of it).

  Args:
    name: the task name users pass as TASK.
    read_split: split name -> columns; runs when the dataset is built, not at import.
    label_names: () -> verbalizer per class (may read gin bindings).

  Returns:
    The registered `seqio.Task`.
  """

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; order is the source order
    return tf_columns.to_dataset(read_split(split))

  # Re-importing a task module (importlib.reload, notebooks) must not fail on duplicates.
  seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name,
      task_cls=ClassificationSeqioTask,
      source=seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=columns_lib.SPLITS),
      output_features={},  # resolved from gin per dataset (ClassificationSeqioTask)
      preprocessors=[add_clean_label_fields, *features_lib.TOKENIZE_PREPROCESSORS],
      # SeqIO shuffles only when asked; a buffer lets trainers that ask do so.
      shuffle_buffer_size=10_000)
  _TASKS[name] = ClassificationTask(name=name, seqio_task=task, label_names=label_names)
  return task


def get_task(name: str, task_module: str | None = "tasks") -> ClassificationTask:
  """The registered task `name`, importing `task_module` first (as T5X users do)."""
  if task_module:
    try:
      importlib.import_module(task_module)
    except ModuleNotFoundError as e:
      if e.name != task_module.split(".")[0] and e.name != task_module:
        raise
      raise UserError(f"load_data.task_module = {task_module!r}: no such module "
                      "(run from the repository root or install the package)") from None
  if name not in _TASKS:
    raise UserError(f"load_data.task = {name!r}: not a registered task; known tasks: "
                    f"{sorted(_TASKS)}")
  return _TASKS[name]


def task_names() -> list[str]:
  """Names of the classification tasks registered so far."""
  return sorted(_TASKS)
