"""SeqIO task registrations: `import tasks` registers every gbair_jax task by name.

Tasks: insults, rotten_tomatoes, tweet_sentiment (offline packages); bbf_standard, bbf_adversarial,
bot_adversarial_dialogue (ParlAI files you download); user_files (your CSV/TSV/JSONL).
"""
from tasks import offline  # noqa: F401  (registers on import)
from tasks import parlai_safety  # noqa: F401
from tasks import user_data  # noqa: F401
