"""gbair_jax: find and fix mislabeled training data for prompt-tuned classifiers (G-BAIR)."""
