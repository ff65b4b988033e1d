"""benchmarks/accelerator_check.sh, the one script a GPU/TPU machine runs, works on CPU."""
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_check_prints_every_number_as_json():
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.run([os.path.join(REPO, "benchmarks", "accelerator_check.sh"), "--quick",
                         "--steps=1", "--peak_tflops=0.05"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["device_kind"] and out["device_count"] == 2 and out["num_processes"] == 1
  for dtype in ("float32", "bfloat16"):
    result = out[dtype]
    assert result["train_examples_per_s"] > 0 and result["per_example_grads_per_s"] > 0
    assert result["ratio"] > 0 and result["global_batch"] == 16
    assert result["backward_pass_flops_per_example"] > 1e5  # the tiny BERT: about 1e6
    assert 0 < result["backward_pass_fraction_of_peak"] < 1
  assert set(out["bf16_speedup"]) == {"train_examples_per_s", "per_example_grads_per_s"}
