"""A freshly initialised checkpoint to train from scratch (with its own tokenizer beside it)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cogvlm.checkpoints.convert import read_sat_for_conversion, write_sat_directory
from cogvlm.checkpoints.sat_format import save_sat_checkpoint
from cogvlm.models import mixin_names
from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE, LlamaTokenizer

VISION_POSITIONS_KEY = (
    mixin_names.prefix(mixin_names.IMAGE) + "vit_model.transformer.position_embeddings.weight"
)


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """[1 + grid * grid, width]: a zero row for CLS, then sin/cos of each patch's row and column.

    A vision tower trained from scratch needs positions it can tell apart from the first step: the image
    tokens all share one LLM position, so where a patch is reaches the LLM only through the tower. Small
    random position embeddings are drowned by the patch content and stay unused (grounding never learns).
    """
    if width % 4:
        raise ValueError(f"width {width} must be a multiple of 4 for 2-D sin/cos positions")
    quarter = width // 4
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(quarter) / quarter)  # [quarter]
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles_y = rows.reshape(-1, 1).float() * frequencies  # [patches, quarter]
    angles_x = columns.reshape(-1, 1).float() * frequencies
    table = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return torch.cat([torch.zeros(1, width), table])


def _vision_grid(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    positions = state[VISION_POSITIONS_KEY]
    grid = math.isqrt(positions.shape[0] - 1)
    if grid * grid + 1 != positions.shape[0]:
        raise ValueError(f"{VISION_POSITIONS_KEY}: {positions.shape[0]} rows is not 1 + a square grid")
    return grid, positions.shape[1]


def init_checkpoint(preset_name: str, tokenizer_path: str | Path, output: str | Path, seed: int = 0) -> Path:
    """Build `preset_name` with seeded random weights (sin/cos vision positions) and save it as a SAT
    checkpoint with the tokenizer. The tokenizer's vocabulary must equal the preset's."""
    config = preset(preset_name)
    tokenizer = LlamaTokenizer.from_file(tokenizer_path)
    if tokenizer.vocab_size != config.llm.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces, preset {preset_name!r} expects "
            f"{config.llm.vocab_size}"
        )
    torch.manual_seed(seed)
    state = build_model(config).state_dict()
    state[VISION_POSITIONS_KEY] = sincos_positions(*_vision_grid(state))
    return save_sat_checkpoint(output, config, [state], extra_files={TOKENIZER_FILE: Path(tokenizer_path)})


def reset_vision_positions(source: str | Path, output: str | Path) -> Path:
    """Copy an MP=1 SAT checkpoint (and its tokenizer) with the vision positions set to sin/cos."""
    source = Path(source)
    raw, _, state = read_sat_for_conversion(source)
    state = dict(state)
    table = sincos_positions(*_vision_grid(state))
    state[VISION_POSITIONS_KEY] = table.to(state[VISION_POSITIONS_KEY].dtype)
    return write_sat_directory(Path(output), raw, state, {TOKENIZER_FILE: source / TOKENIZER_FILE})
