"""The names CogVLM and CogAgent give their mixins.

A mixin's parameters are stored under `mixins.<name>.`, so these names are part of every published SAT
checkpoint's keys and cannot change. Some read oddly for that reason (see `EXPERT_ATTENTION`).
"""

from __future__ import annotations

IMAGE = "eva"  # EVA2-CLIP-E tower, GLU adapter, boi/eoi
CROSS_VISION = "encoder"  # CogAgent's EVA2-CLIP-L tower for cross-attention
# The visual-expert attention (routed QKV and dense, plus rotary). SAT's CogVLM registers it under "rotary"
# because it replaced SAT's rotary mixin, and the name stayed in the key of every published checkpoint.
EXPERT_ATTENTION = "rotary"
EXPERT_MLP = "mlp"  # the routed SwiGLU (language gate and the vision expert's MLP)
LM_HEAD = "lm"


def prefix(name: str) -> str:
    """The state-dict key prefix of the mixin called `name`: `mixins.<name>.`."""
    return f"mixins.{name}."
