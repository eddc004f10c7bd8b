"""SAT's checkpoint layout: `model_config.json`, `latest`, `<iteration>/mp_rank_XX_model_states.pt`.

This is the one place where SAT's `model_config.json` is translated to and from our configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints.json_files import read_json
from cogvlm.errors import CheckpointError
from cogvlm.models.config import (
    MODEL_CLASSES,
    CogVLMConfig,
    CrossAttentionConfig,
    CrossVisionConfig,
)
from cogvlm.models.presets import eva_config, llama_config
from cogvlm.utils.atomic import atomic_directory

MODEL_CONFIG_FILE = "model_config.json"
LATEST_FILE = "latest"
# EVA2-CLIP-L as CogAgent ships it; SAT's model_config.json does not describe this tower.
DEFAULT_CROSS_VISION = dict(width=1024, num_blocks=24, head_width=64)
_CROSS_PREFIX = "mixins.encoder.vit.model."
_KNOWN_KEYS = {
    "model_class",
    "tokenizer_type",
    "text_processor_version",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "layernorm_order",
    "model_parallel_size",
    "max_sequence_length",
    "use_bias",
    "inner_hidden_size",
    "hidden_size_per_attention_head",
    "layernorm_epsilon",
    "image_length",
    "eva_args",
    "is_decoder",
    "cross_attn_hidden_size",
    "cross_hidden_size_per_attention_head",
    "cross_image_pix",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "cross_vision_args",
}


@dataclass(frozen=True)
class SatCheckpoint:
    """A SAT checkpoint directory, its parsed config and its per-rank weight files."""

    directory: Path
    raw_config: dict
    model_parallel_size: int
    weight_files: tuple[Path, ...]


def _field(raw: Mapping, name: str, source: str):
    if name not in raw:
        raise CheckpointError(f"{source}: required field {name!r} is missing")
    return raw[name]


def _eva_from_sat(eva: Mapping, source: str):
    source = f"{source} eva_args"
    image_size = _field(eva, "image_size", source)
    image_px = image_size[0] if isinstance(image_size, list | tuple) else int(image_size)
    return eva_config(
        image_px=image_px,
        layers=_field(eva, "num_layers", source),
        width=_field(eva, "hidden_size", source),
        heads=_field(eva, "num_attention_heads", source),
        inner=eva.get("inner_hidden_size") or 4 * eva["hidden_size"],
        patch=eva.get("patch_size", 14),
    )


def infer_cross_vision(raw: Mapping, state_shapes: Mapping[str, tuple[int, ...]] | None) -> CrossVisionConfig:
    """CogAgent's cross tower from `cross_vision_args`, else from the weight shapes, else EVA2-CLIP-L."""
    image_px = raw.get("cross_image_pix", 1120)
    if "cross_vision_args" in raw:
        return CrossVisionConfig(image_px=image_px, **raw["cross_vision_args"])
    if state_shapes and _CROSS_PREFIX + "cls_token" in state_shapes:
        return _cross_vision_from_shapes(image_px, state_shapes)
    return CrossVisionConfig(image_px=image_px, **DEFAULT_CROSS_VISION)


def _cross_vision_from_shapes(
    image_px: int, state_shapes: Mapping[str, tuple[int, ...]]
) -> CrossVisionConfig:
    def shape(name: str) -> tuple[int, ...]:
        if _CROSS_PREFIX + name not in state_shapes:
            raise CheckpointError(
                f"cannot infer CogAgent's cross vision tower: key {_CROSS_PREFIX + name} is missing "
                "(add cross_vision_args to model_config.json)"
            )
        return state_shapes[_CROSS_PREFIX + name]

    block_pattern = re.compile(re.escape(_CROSS_PREFIX) + r"blocks\.(\d+)\.")
    blocks = {int(m.group(1)) for key in state_shapes if (m := block_pattern.match(key))}
    width = shape("cls_token")[-1]
    mlp_hidden = shape("blocks.0.mlp.w1.weight")[0]
    _, in_channels, patch_size, _ = shape("patch_embed.proj.weight")
    return CrossVisionConfig(
        image_px=image_px,
        width=width,
        num_blocks=len(blocks),
        head_width=shape("rope.freqs_cos")[-1],
        patch_size=patch_size,
        in_channels=in_channels,
        mlp_ratio=2.6667 if int(width * 2.6667) == mlp_hidden else mlp_hidden / width,
        head_out_features=shape("head.weight")[0],
    )


def config_from_sat(
    raw: Mapping,
    *,
    source: str = MODEL_CONFIG_FILE,
    state_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> CogVLMConfig:
    """Translate a SAT `model_config.json` dict into a `CogVLMConfig`."""
    model_class = _field(raw, "model_class", source)
    if model_class not in MODEL_CLASSES:
        raise CheckpointError(
            f"{source}: model_class {model_class!r} is not supported; expected one of {MODEL_CLASSES}"
        )
    hidden = _field(raw, "hidden_size", source)
    llm_sizes = dict(
        layers=_field(raw, "num_layers", source),
        hidden=hidden,
        heads=_field(raw, "num_attention_heads", source),
        inner=raw.get("inner_hidden_size") or 4 * hidden,
        vocab=_field(raw, "vocab_size", source),
        max_length=raw.get("max_sequence_length", 4096),
    )
    vision = _eva_from_sat(_field(raw, "eva_args", source), source)
    cross_vision, cross_attention = None, None
    if model_class == "CogAgentModel":
        cross_vision = infer_cross_vision(raw, state_shapes)
        cross_attention = CrossAttentionConfig(
            encoder_hidden_size=raw.get("cross_attn_hidden_size", cross_vision.width),
            head_dim=_field(raw, "cross_hidden_size_per_attention_head", source),
            layers=tuple(bool(flag) for flag in raw.get("is_decoder", [True] * llm_sizes["layers"])),
        )
    image_length = raw.get("image_length", vision.num_patches)
    if image_length != vision.num_patches:
        raise CheckpointError(
            f"{source}: image_length {image_length} != {vision.num_patches} patches of the eva image size"
        )
    return CogVLMConfig(
        model_class=model_class,
        llm=llama_config(**llm_sizes, cross_attention=cross_attention),
        vision=vision,
        cross_vision=cross_vision,
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=raw.get("eos_token_id", 2),
        pad_token_id=raw.get("pad_token_id", 0),
        text_processor_version=raw.get("text_processor_version"),
        tokenizer_type=raw.get("tokenizer_type", "vicuna-7b-v1.5"),
        extra={key: value for key, value in raw.items() if key not in _KNOWN_KEYS},
    )


def _eva_to_sat(config: CogVLMConfig, model_parallel_size: int) -> dict:
    vision = config.vision
    tower = vision.transformer
    return {
        "model_class": "EVA2CLIPModel",
        "num_layers": tower.num_layers,
        "hidden_size": tower.hidden_size,
        "num_attention_heads": tower.num_attention_heads,
        "vocab_size": 1,
        "layernorm_order": "post",
        "model_parallel_size": model_parallel_size,
        "max_sequence_length": tower.num_positions,
        "inner_hidden_size": tower.inner_hidden_size,
        "use_final_layernorm": False,
        "layernorm_epsilon": tower.layernorm_epsilon,
        "row_parallel_linear_final_bias": False,
        "image_size": [vision.image_px, vision.image_px],
        "pre_len": 1,
        "post_len": 0,
        "in_channels": vision.in_channels,
        "patch_size": vision.patch_size,
    }


def _cross_vision_needs_args(tower: CrossVisionConfig) -> bool:
    # SAT's config does not describe the tower; the weight shapes do, except for these two fields.
    default = CrossVisionConfig(image_px=tower.image_px, **DEFAULT_CROSS_VISION)
    unstated = ("pretrain_grid", "layernorm_epsilon")
    return any(getattr(tower, name) != getattr(default, name) for name in unstated)


def _cross_vision_args(tower: CrossVisionConfig) -> dict:
    fields = (
        "width",
        "num_blocks",
        "head_width",
        "patch_size",
        "in_channels",
        "mlp_ratio",
        "head_out_features",
        "pretrain_grid",
        "layernorm_epsilon",
    )
    return {name: getattr(tower, name) for name in fields}


def config_to_sat(config: CogVLMConfig, model_parallel_size: int = 1) -> dict:
    """Translate a `CogVLMConfig` into SAT's `model_config.json` dict (inverse of `config_from_sat`)."""
    llm = config.llm
    raw: dict = {"model_class": config.model_class, "tokenizer_type": config.tokenizer_type}
    if config.text_processor_version is not None:
        raw["text_processor_version"] = config.text_processor_version
    raw.update(
        num_layers=llm.num_layers,
        hidden_size=llm.hidden_size,
        num_attention_heads=llm.num_attention_heads,
        vocab_size=llm.vocab_size,
        layernorm_order="pre",
        model_parallel_size=model_parallel_size,
        max_sequence_length=llm.max_sequence_length,
    )
    if config.is_cogagent:
        cross, tower = llm.cross_attention, config.cross_vision
        raw.update(is_decoder=list(cross.layers), cross_attn_hidden_size=cross.encoder_hidden_size)
    raw.update(use_bias=False, inner_hidden_size=llm.inner_hidden_size)
    if config.is_cogagent:
        raw["cross_hidden_size_per_attention_head"] = cross.head_dim
    raw["image_length"] = config.image_length
    if config.is_cogagent:
        raw["cross_image_pix"] = tower.image_px
        if _cross_vision_needs_args(tower):
            raw["cross_vision_args"] = _cross_vision_args(tower)
    raw["eva_args"] = _eva_to_sat(config, model_parallel_size)
    raw.update(config.extra)
    raw.update(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return raw


def read_latest(directory: Path) -> str:
    """Return the sub-folder named by `latest` (an iteration number or `release`)."""
    path = directory / LATEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a SAT checkpoint directory needs a 'latest' file")
    text = path.read_text().strip()
    if not (text.isdigit() or text == "release"):
        raise CheckpointError(f"{path}: contains {text!r}, expected an iteration number or 'release'")
    return text


def open_sat_checkpoint(directory: str | Path) -> SatCheckpoint:
    """Read a SAT checkpoint directory's config and locate every rank's weight file."""
    directory = Path(directory)
    raw = read_json(directory / MODEL_CONFIG_FILE)
    size = int(raw.get("model_parallel_size", 1))
    folder = directory / read_latest(directory)
    files = tuple(folder / f"mp_rank_{rank:02d}_model_states.pt" for rank in range(size))
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CheckpointError(
            f"{directory}: model_parallel_size is {size} but these shards are missing: {missing}"
        )
    return SatCheckpoint(directory=directory, raw_config=raw, model_parallel_size=size, weight_files=files)


def load_sat_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load one `mp_rank_XX_model_states.pt` (no code is executed) and return its `module` dict."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(payload, dict) or "module" not in payload:
        raise CheckpointError(f"{path}: expected a dict with the weights under 'module'")
    module = payload["module"]
    bad = [key for key, value in module.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(module)


def save_sat_checkpoint(
    directory: str | Path,
    config: CogVLMConfig,
    rank_state_dicts: list[Mapping[str, torch.Tensor]],
    iteration: int = 1,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write a SAT checkpoint (one state dict per model-parallel rank) atomically; return its path.

    `extra_files` ({name: file}) are copied in within the same atomic write (see `atomic_directory`).
    """
    directory = Path(directory)
    with atomic_directory(directory, extra_files) as staging:
        (staging / MODEL_CONFIG_FILE).write_text(
            json.dumps(config_to_sat(config, len(rank_state_dicts)), indent=4)
        )
        (staging / LATEST_FILE).write_text(str(iteration))
        folder = staging / str(iteration)
        folder.mkdir()
        for rank, state_dict in enumerate(rank_state_dicts):
            tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
            torch.save({"module": tensors}, folder / f"mp_rank_{rank:02d}_model_states.pt")
    return directory
