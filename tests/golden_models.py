"""Golden model folders with checkpoints, and their per-case tensors (discovered from the files)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.checkpoints.loading import load_model
from cogvlm.models.builders import FAMILIES
from cogvlm.models.context import ForwardContext
from tests.golden import golden_dir, load_json, model_dirs


def checkpoint_dirs() -> list[Path]:
    """Model folders that hold a SAT checkpoint and model_info.json."""
    return [d for d in model_dirs() if (d / "sat_checkpoint").is_dir() and (d / "model_info.json").is_file()]


def model_class(model_dir: Path) -> str:
    """The SAT model class recorded for a golden model folder."""
    return load_json(model_dir / "model_info.json")["model_class"]


def require_builder(model_dir: Path) -> None:
    """Skip (naming the class) when this package cannot build the folder's model class yet."""
    name = model_class(model_dir)
    if name not in FAMILIES:
        pytest.skip(f"{model_dir.name}: no builder for {name} in this package yet")


@functools.cache
def golden_model(model_dir: Path):
    """The golden SAT checkpoint, loaded once per test session (float32, eval mode)."""
    model, _ = load_model(model_dir / "sat_checkpoint")
    return model


@functools.cache
def cases(model_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Per-case tensors of cases.safetensors: {case: {name: tensor}} (training cases excluded)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(model_dir / "cases.safetensors").items():
        case, name = key.split(".", 1)
        grouped.setdefault(case, {})[name] = tensor
    return {case: tensors for case, tensors in grouped.items() if "logits" in tensors}


@functools.cache
def image_inputs(model_dir: Path) -> dict[str, torch.Tensor]:
    """The golden pixel values of a model folder."""
    return load_file(model_dir / "image_inputs.safetensors")


def first_case(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a folder's first golden case by name."""
    return cases(model_dir)[min(cases(model_dir))]


def case_context(model_dir: Path, tensors: dict[str, torch.Tensor]) -> ForwardContext:
    """The forward context of a golden case: its positions and masks, with the folder's pixels."""
    pixels = image_inputs(model_dir)
    return ForwardContext(
        position_ids=tensors["position_ids"],
        vision_token_mask=tensors["vision_expert_mask"].bool(),
        image_embed_mask=tensors["image_embed_mask"].bool(),
        pixel_values=pixels["pixel_values"],
        cross_pixel_values=pixels.get("cross_pixel_values"),
    )


def case_logits(model, model_dir: Path, case: str | None = None) -> torch.Tensor:
    """`model`'s logits on a golden case of `model_dir` (its first by name when `case` is None)."""
    tensors = first_case(model_dir) if case is None else cases(model_dir)[case]
    with torch.no_grad():
        return model(tensors["input_ids"], case_context(model_dir, tensors)).logits


def forward_cases() -> list[tuple[Path, str]]:
    """(model folder, case) for every prompt case with reference logits."""
    return [(d, case) for d in checkpoint_dirs() for case in sorted(cases(d))]


def forward_case_id(item: tuple[Path, str]) -> str:
    """`<model>/<case>` for pytest ids."""
    return f"{item[0].name}/{item[1]}"


def tokenizer_file() -> Path:
    """The shared golden tokenizer."""
    return golden_dir() / "tokenizer.model"


@functools.cache
def end_tokens() -> tuple[int, ...]:
    """The reference's end tokens: the golden tokenizer's EOS (the engine itself knows no tokenizer)."""
    from cogvlm.text_processors import LlamaTokenizer

    return (LlamaTokenizer.from_file(tokenizer_file()).eos_id,)


def recorded_sensitivity(model_dir: Path) -> tuple[str, dict[str, float]]:
    """(case, figures) of the reference's `sensitivity_<case>` record in model_info.json (logit changes
    when an image is zeroed); skips the test when the folder records none for a case it holds."""
    info = load_json(model_dir / "model_info.json")
    for key, figures in sorted(info.items()):
        case = key.removeprefix("sensitivity_")
        if key.startswith("sensitivity_") and case in cases(model_dir):
            return case, figures
    pytest.skip(f"{model_dir.name}/model_info.json records no sensitivity_<case> for a case it holds")
