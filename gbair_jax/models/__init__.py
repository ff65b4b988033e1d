"""Frozen backbones, the soft prompt, and the prompt classifier built from them."""
