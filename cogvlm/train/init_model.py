"""A freshly initialised checkpoint to train from scratch (with its own tokenizer beside it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cogvlm.checkpoints.sat_format import save_sat_checkpoint
from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE, LlamaTokenizer


def init_checkpoint(preset_name: str, tokenizer_path: str | Path, output: str | Path, seed: int = 0) -> Path:
    """Build `preset_name` with seeded random weights and save it as a SAT checkpoint with the tokenizer.

    The tokenizer's vocabulary must equal the preset's.
    """
    config = preset(preset_name)
    tokenizer = LlamaTokenizer.from_file(tokenizer_path)
    if tokenizer.vocab_size != config.llm.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces, preset {preset_name!r} expects "
            f"{config.llm.vocab_size}"
        )
    torch.manual_seed(seed)
    model = build_model(config)
    output = save_sat_checkpoint(output, config, [model.state_dict()])
    shutil.copyfile(tokenizer_path, output / TOKENIZER_FILE)
    return output
