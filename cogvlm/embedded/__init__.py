"""The small CogVLM shipped inside the package, used when no model is named.

It was trained from scratch by `cogvlm finetune` on `cogvlm.train.synthetic` data (coloured shapes and
short codes); MODEL_CARD.md beside this file gives the recipe and its held-out scores per task.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EMBEDDED_NAME = "embedded"
EMBEDDED_SUMMARY = "a 7.5M-parameter toy that knows only coloured shapes (cogvlm/embedded/MODEL_CARD.md)"
# Printed (on stderr) when a front-end starts with the embedded model, so nobody takes it for CogVLM-17B.
EMBEDDED_NOTICE = (
    f"Using the embedded model, {EMBEDDED_SUMMARY}; name a real checkpoint with --from_pretrained."
)
# example.png is the first scene of this seed (never trained on: training used seed 1).
EXAMPLE_SEED = 10


def embedded_checkpoint() -> Path:
    """The bundled SAT checkpoint directory (with its tokenizer.model)."""
    return Path(str(resources.files(__name__).joinpath("model")))


def example_image() -> Path:
    """A bundled example image for the README's command and the demos."""
    return Path(str(resources.files(__name__).joinpath("example.png")))


def is_embedded(checkpoint: str | Path) -> bool:
    """Whether a --from_pretrained value names the embedded model (by name or by its folder)."""
    if str(checkpoint) == EMBEDDED_NAME:
        return True
    try:
        return Path(checkpoint).resolve() == embedded_checkpoint().resolve()
    except OSError:
        return False
