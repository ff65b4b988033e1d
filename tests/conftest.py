"""Test set-up: 8 fake CPU devices (sharding tests), quiet TensorFlow, TF off any GPU."""
import os

# Must happen before JAX first touches a device.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Every round and test re-jits the same programs (new closures, same HLO): the persistent
# compilation cache turns those recompiles into cache hits. One directory per test session.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="gbair_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def clean_gin():
  """Every test starts and ends with an empty gin config (gin state is process-global)."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def paused_review_run(tmp_path_factory):
  """A tiny run paused for review at round 0 (tests/review_helpers.py); copy before use."""
  from tests.review_helpers import build_paused_run  # pylint: disable=g-import-not-at-top
  return build_paused_run(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="session")
def strategy_context():
  """A strategy's RoundContext on a tiny binary experiment (24 training examples, 6 flipped)
  at its untrained initial prompt: for strategies that combine others, without training."""
  # pylint: disable-next=g-import-not-at-top
  from tests.helpers import initial_prompt_context, synthetic_split, tiny_experiment
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=24, corrupt=6)
  return initial_prompt_context(exp)
