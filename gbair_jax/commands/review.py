"""`gbair review`: serve the review page of a paused round, or score a finished review.

  gbair review --output_dir=DIR [--round=R] [--port=8765] [--host=127.0.0.1]
  gbair review --output_dir=DIR --score
"""
from __future__ import annotations

import sys

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.errors import UserError
from gbair_jax.review import proposals as proposals_lib
from gbair_jax.review import score as score_lib
from gbair_jax.review import server as server_lib
from gbair_jax.runtime import files

DEFAULT_PORT = 8765


def serve(output_dir: str, round_index: int | None = None, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT) -> None:
  app = server_lib.ReviewApp(output_dir, round_index)
  if not server_lib.is_loopback(host):
    print(f"gbair: warning: --host={host} exposes the review page, its texts and its ledger "
          "writes to the network; anyone who can load the page can decide", file=sys.stderr)
  server = server_lib.make_server(app, host, port, quiet=True)
  state = app.state()
  print(f"review of round {app.round} in {output_dir}: {len(app.suspects)} suspects, "
        f"{state['progress']['reviewed']} reviewed")
  print(f"open {server_lib.url_of(server, host)}   (Ctrl-C to stop)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  progress = app.state()["progress"]
  print(f"\nreviewed {progress['reviewed']} / {progress['total']}: "
        + ", ".join(f"{k} {v}" for k, v in progress["counts"].items()))
  if app.resume_command:
    print(f"retrain with the decisions: {app.resume_command}")
  else:
    print("retrain with the decisions: rerun the `gbair run` command of this run")


def score(output_dir: str, round_index: int | None = None) -> dict[int, dict]:
  """Prints and returns how each reviewed round's decisions compare with the ground truth
  of synthetic corruption (loads the run's data, not its model)."""
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.data import dataset  # pylint: disable=g-import-not-at-top
  from gbair_jax.review.decisions import is_human  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import CONFIG_FILE  # pylint: disable=g-import-not-at-top
  config_path = files.join(output_dir, CONFIG_FILE)
  if not files.exists(config_path):
    raise UserError(f"{config_path}: not found; --output_dir must be a run")
  entries = ledger_lib.read_ledger(ledger_lib.ledger_path(output_dir))
  rounds = sorted({e.round for e in entries if is_human(e)})
  if round_index is not None:
    rounds = [r for r in rounds if r == round_index]
  if not rounds:
    raise UserError(f"{output_dir}: the ledger holds no human decision"
                    + ("" if round_index is None else f" of round {round_index}"))
  config.parse_run_config(config_path)
  train = dataset.load_data().splits["train"]
  if not train["is_corrupted"].any():
    print("note: this run's data has no synthetic corruption; 'right' means 'left at the "
          "label the data came with'")
  scores = {r: score_lib.score_round(
      train, entries, r, proposals_lib.read_proposals(files.join(output_dir, f"round_{r}")))
      for r in rounds}
  print(score_lib.format_scores(scores))
  path = files.join(output_dir, "review_scores.json")
  files.write_json(path, {str(r): s for r, s in scores.items()})
  print(f"scores: {path}")
  return scores
