"""gbair_jax: G-BAIR label recovery for prompt-tuned classifiers, in JAX."""
import setuptools

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
    entry_points={"console_scripts": ["gbair = gbair_jax.main:run"]},
)
