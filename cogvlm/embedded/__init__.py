"""The small CogVLM shipped inside the package, used when no model is named.

It was trained from scratch by `cogvlm finetune` on `cogvlm.train.synthetic` data (coloured shapes and
short codes); MODEL_CARD.md beside this file gives the recipe and its held-out scores per task.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EMBEDDED_NAME = "embedded"
# example.png is the first scene of this seed (never trained on: training used seed 1).
EXAMPLE_SEED = 10


def embedded_checkpoint() -> Path:
    """The bundled SAT checkpoint directory (with its tokenizer.model)."""
    return Path(str(resources.files(__name__).joinpath("model")))


def example_image() -> Path:
    """A bundled example image for the README's command and the demos."""
    return Path(str(resources.files(__name__).joinpath("example.png")))
