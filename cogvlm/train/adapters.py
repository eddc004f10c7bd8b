"""`cogvlm merge-lora` and `cogvlm export-lora`: fold an adapter into its base, or export it for PEFT.

Merging a QLoRA run gives a plain floating-point SAT checkpoint. By default the adapter is folded into the
*dequantized* base, the weights it was trained against: the merged model computes what the QLoRA model
computed during training and validation (to float32 rounding), and every parallel linear is stored
dequantized. `onto="original"` folds the same update into the original floating-point base instead (the
common PEFT recipe: reload the base unquantized, merge): it keeps the base's full precision but is a model
nobody trained or evaluated, off by the quantization error, which at int4 can outweigh what the adapter
learned.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cogvlm.checkpoints.peft_format import save_peft_adapter
from cogvlm.checkpoints.sat_format import save_sat_checkpoint
from cogvlm.mixins.lora import merge_lora
from cogvlm.nn.quantized import dequantize_
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE
from cogvlm.train.checkpointing import config_with_lora, load_finetuned_model


def _require_lora(source: Path, lora) -> None:
    if lora is None:
        raise ValueError(f"{source}: its model_config.json records no LoRA adapter (use_lora / lora_args)")


MERGE_TARGETS = ("dequantized", "original")


def merge_lora_checkpoint(
    source: str | Path,
    destination: str | Path,
    dtype: torch.dtype | None = None,
    onto: str = "dequantized",
    base: str | None = None,
    iteration: int | None = None,
) -> Path:
    """Load a LoRA checkpoint, fold every adapter into its base weight, and save a plain SAT checkpoint.

    For a QLoRA run, `onto` picks the base the update is folded into (see the module docstring) and
    `base` overrides the recorded base checkpoint. `iteration` picks a saved iteration (default: latest).
    """
    if onto not in MERGE_TARGETS:
        raise ValueError(f"merge onto {onto!r}: expected one of {MERGE_TARGETS}")
    source, destination = Path(source), Path(destination)
    model, info, lora = load_finetuned_model(
        source, base=base, quantize_base=onto == "dequantized", iteration=iteration
    )
    _require_lora(source, lora)
    merge_lora(model)
    dequantize_(model)  # the parallel linears no adapter wrapped
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
    # A QLoRA adapter is the same tensors whatever its base: no need to quantize the base to export it.
    model, _, lora = load_finetuned_model(source, quantize_base=False)
    _require_lora(source, lora)
    return save_peft_adapter(destination, model, lora, base_model_name_or_path)
