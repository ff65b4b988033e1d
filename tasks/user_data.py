"""SeqIO task `user_files`: your own CSV, TSV or JSONL data, configured by gin.

See gin/data/user_csv.gin and `user_files_options` for the bindings.
"""
from gbair_jax.data import registration
from gbair_jax.data import user_files

registration.register_classification_task(
    "user_files", lambda split: user_files.user_files_splits()[split],
    user_files.user_label_names)
