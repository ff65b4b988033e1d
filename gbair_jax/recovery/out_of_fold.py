"""Out-of-fold predicted probabilities: K prompts, each trained without one fold.

cleanlab's confident learning assumes out-of-sample probabilities (its docs ask for
cross-validated ones): a model that trained on an example has partly memorised its label,
flipped or not, so in-sample probabilities hide exactly the examples it should find. Here
the training set (at its current labels) is split into K stratified folds; fold k's
probabilities come from a prompt trained, with the run's own `train_prompt` settings, on
the other K - 1 folds (plus the run's extra clean examples, when
`run.train_on_validation` adds them to every training run). Fold runs live in
`<round_dir>/out_of_fold/fold_<k>/` and resume like any round after a kill.
"""
from __future__ import annotations

import tempfile

import numpy as np

from gbair_jax.data.noise_reference import stratified_folds
from gbair_jax.errors import UserError
from gbair_jax.recovery.context import RoundContext, with_extra_rows
from gbair_jax.runtime import files
from gbair_jax.train.metrics import softmax
from gbair_jax.train.trainer import predict_logits, train_prompt


def out_of_fold_probabilities(ctx: RoundContext, num_folds: int, binding: str) -> np.ndarray:
  """p(class | example) [N, C] for every training example from a prompt that never saw it.

  `binding` names the gin parameter for error messages.
  """
  if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
    raise UserError(f"{binding} = {num_folds!r}: must be an integer >= 2")
  train = ctx.train
  num = len(train["label"])
  if num < num_folds:
    raise UserError(f"{binding} = {num_folds}: more folds than the {num} training examples")
  folds = stratified_folds(train["example_id"], train["label"], num_folds, ctx.seed,
                           salt="recovery/out_of_fold")
  probs = np.zeros((num, len(ctx.spec.label_names)))
  with tempfile.TemporaryDirectory(prefix="gbair_oof_") as scratch:
    root = files.join(ctx.round_dir, "out_of_fold") if ctx.round_dir else scratch
    for k in range(num_folds):
      held = folds == k
      fit = with_extra_rows({name: values[~held] for name, values in train.items()},
                            ctx.extra_train)
      result = train_prompt(ctx.spec, ctx.frozen, {"train": fit}, files.join(root, f"fold_{k}"),
                            progress=ctx.progress, tensorboard=False, mesh=ctx.mesh)
      held_rows = {name: values[held] for name, values in train.items()}
      probs[held] = softmax(predict_logits(ctx.spec, result.prompt, ctx.frozen, held_rows,
                                           mesh=ctx.mesh))
  return probs
