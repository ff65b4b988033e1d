"""`gbair influence` loads only what it uses: not the round loop, not another backbone.

Gin files import what they bind (nothing is imported up front), and the influence command
reads a run's config.gin without the recovery stage's imports and bindings.
"""
import json
import os
import subprocess
import sys

import gin

from gbair_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, sys
from gbair_jax import config
from gbair_jax.commands import influence  # the command's import path
config.parse_run_config(sys.argv[1])      # what it does first with the run's config.gin
print(json.dumps(sorted(m for m in sys.modules if m.startswith("gbair_jax"))))
"""


def test_influence_imports_neither_the_round_loop_nor_other_backbones(tmp_path):
  config_lib.parse_gin(["gin/runs/quickstart.gin", "gin/models/tiny_bert.gin"])
  run_config = tmp_path / "config.gin"
  run_config.write_text(gin.config_str())  # as `gbair run` records it
  assert "import gbair_jax.recovery.loop" in run_config.read_text()
  proc = subprocess.run([sys.executable, "-c", PROBE, str(run_config)], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=True)
  loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
  assert "gbair_jax.models.bert" in loaded  # the run's backbone (tiny_bert)
  for module in ("gbair_jax.recovery.loop", "gbair_jax.recovery.strategies",
                 "gbair_jax.review.server", "gbair_jax.models.t5", "gbair_jax.models.llama"):
    assert module not in loaded, module
  config_lib.parse_run_config(str(run_config))  # keeps the data and model bindings
  assert gin.query_parameter("build_classifier.prompt_length") == 10
