"""A non-editable install works away from the repository: `pip install .` ships gin/ with
the package, and `gbair run` resolves `gin/runs/...` (and their includes) against it."""
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_package_runs_gin_files_from_another_directory(tmp_path):
  source = tmp_path / "source"
  top_level_only = {".venv", ".git", "runs", "build"}  # gin/runs/ must stay
  shutil.copytree(REPO, source, ignore=lambda folder, names: [
      n for n in names if (folder == REPO and n in top_level_only)
      or n.endswith(".egg-info") or n == "__pycache__"])
  site = tmp_path / "site"
  # The test venv already has the dependencies: install only the package itself.
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(source)],
                 check=True, capture_output=True, timeout=300)
  shutil.rmtree(source)  # nothing may still point into a checkout
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
  where = subprocess.run([sys.executable, "-c", "import gbair_jax; print(gbair_jax.__file__)"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
  assert where.stdout.strip().startswith(str(site)), where.stdout

  out = elsewhere / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "gbair_jax.main", "run", "--gin_file=gin/runs/quickstart.gin",
       "--gin_file=gin/models/tiny_bert.gin", f"--output_dir={out}",
       "--gin.load_data.max_train_examples=48", "--gin.load_data.max_test_examples=32",
       "--gin.train_prompt.num_epochs=1", "--gin.train_prompt.batch_size=16",
       "--gin.selection_size.select_count=4", "--gin.run.num_rounds=1",
       "--gin.run.references=()", "--gin.train_prompt.tensorboard=False"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert [r["round"] for r in report["rounds"]] == [0, 1]
  assert report["rounds"][0]["selected"] == 4
