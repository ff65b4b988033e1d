"""SeqIO tasks over the paper's safety sets, read from ParlAI's published files.

`bbf_standard`, `bbf_adversarial`: Build-it Break-it Fix-it single-turn (`bbf_options.*`).
`bot_adversarial_dialogue`: Bot-Adversarial Dialogue (`bad_options.*`).
"""
import functools

from gbair_jax.data import parlai
from gbair_jax.data import registration

registration.register_classification_task(
    "bbf_standard", functools.partial(parlai.bbf_split, "standard"), parlai.bbf_label_names)

registration.register_classification_task(
    "bbf_adversarial", functools.partial(parlai.bbf_split, "adversarial"),
    parlai.bbf_label_names)

registration.register_classification_task(
    "bot_adversarial_dialogue", parlai.bad_split, parlai.bad_label_names)
