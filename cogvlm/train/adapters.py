"""`cogvlm merge-lora` and `cogvlm export-lora`: fold an adapter into its base, or export it for PEFT."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cogvlm.checkpoints.peft_format import save_peft_adapter
from cogvlm.checkpoints.sat_format import save_sat_checkpoint
from cogvlm.mixins.lora import merge_lora
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE
from cogvlm.train.checkpointing import config_with_lora, load_finetuned_model


def _require_lora(source: Path, lora) -> None:
    if lora is None:
        raise ValueError(f"{source}: its model_config.json records no LoRA adapter (use_lora / lora_args)")


def merge_lora_checkpoint(
    source: str | Path, destination: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Load a LoRA checkpoint, fold every adapter into its base weight, and save a plain SAT checkpoint."""
    source, destination = Path(source), Path(destination)
    model, info, lora = load_finetuned_model(source)
    _require_lora(source, lora)
    merge_lora(model)
    if dtype is not None:
        model.to(dtype)
    config = config_with_lora(info.config, None)
    save_sat_checkpoint(destination, config, [model.state_dict()], iteration=1)
    if (source / TOKENIZER_FILE).is_file() and not (destination / TOKENIZER_FILE).exists():
        shutil.copyfile(source / TOKENIZER_FILE, destination / TOKENIZER_FILE)
    return destination


def export_lora_checkpoint(
    source: str | Path, destination: str | Path, base_model_name_or_path: str = ""
) -> Path:
    """Write a LoRA checkpoint's adapter alone in PEFT's format, with Hugging Face CogVLM module names."""
    source = Path(source)
    model, _, lora = load_finetuned_model(source)
    _require_lora(source, lora)
    return save_peft_adapter(destination, model, lora, base_model_name_or_path)
