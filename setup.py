"""gbair_jax: G-BAIR label recovery for prompt-tuned classifiers, in JAX."""
import os
import shutil

import setuptools
from setuptools.command.build_py import build_py


class BuildPyWithGinFiles(build_py):
  """Ships the top-level gin/ tree inside the package, as `gbair_jax/gin_files/gin/...`.

  gin/ stays at the repository's top level (the design card fixes it there), and an
  installed `gbair` still resolves `--gin_file=gin/runs/quickstart.gin` and the files'
  own `include 'gin/...'` lines against the copy (gbair_jax.config.GIN_ROOTS).
  """

  def run(self):
    super().run()
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin")
    target = os.path.join(self.build_lib, "gbair_jax", "gin_files", "gin")
    shutil.copytree(source, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setuptools.setup(
    name="gbair_jax",
    version="0.1.0",
    description="Gradient-Based Automated Iterative Recovery (G-BAIR) for prompt-tuned classifiers in JAX",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["gbair_jax", "gbair_jax.*", "tasks", "tasks.*"]),
    # The pinned stack lives in requirements.txt (installed by `make`), so that the
    # asset packages can be installed with --no-deps beside it.
    package_data={"gbair_jax.review": ["static/*.html"]},
    install_requires=[],
    cmdclass={"build_py": BuildPyWithGinFiles},
    entry_points={"console_scripts": ["gbair = gbair_jax.main:run"]},
)
