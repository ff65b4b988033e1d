"""What a round paused for review leaves for the page: `round_<r>/proposals.json` and the
evidence in `round_<r>/influence/`.

`gbair run ... --review` stops a round after its suspects are scored and selected, before
any label changes, and writes

  proposals.json  {"round", "strategy", "action", "label_names", "resume_command",
                   "num_train", "num_misclassified_validation",
                   "seconds": {"train", "score", "evidence"},
                   "suspects": [{"rank", "example_id", "text", "label", "proposed",
                                 "predicted", "probabilities", "score"}, ...]}
  influence/suspects_top<k>.jsonl      `gbair influence --queries=suspects` records
  influence/misclassified_top<k>.jsonl `gbair influence --queries=misclassified` records

Labels are names (`label_names` orders them); `proposed` is null when the action drops the
example. Nothing here holds the ground truth of synthetic corruption. proposals.json is
written last, so its presence means the pause is complete.
"""
from __future__ import annotations

from gbair_jax.runtime import files

FILE_NAME = "proposals.json"
EVIDENCE_TOP_K = 5



def proposals_path(round_dir: str) -> str:
  return files.join(round_dir, FILE_NAME)


def read_proposals(round_dir: str) -> dict | None:
  """The round's proposals, or None when the round was never paused for review."""
  path = proposals_path(round_dir)
  if not files.exists(path):
    return None
  return files.read_json(path)
