"""SAT's checkpoint layout: `model_config.json`, `latest`, `<iteration>/mp_rank_XX_model_states.pt`.

This is the one place where SAT's `model_config.json` is translated to and from our configs.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints.config_fields import (
    DEFAULT_ROTARY_BASE,
    MAX_HEADS,
    MAX_IMAGE_PX,
    MAX_LAYERS,
    MAX_MODEL_PARALLEL,
    MAX_SEQUENCE,
    MAX_VOCAB,
    MAX_WIDTH,
    MODEL_CONFIG_FILE,
    ConfigFields,
    assemble_config,
    image_size,
    non_default_llm_options,
)
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.validation import check_parallel_layout, check_tensor_dict, verify_zip_crcs
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.models import mixin_names
from cogvlm.models.builders import model_family
from cogvlm.models.config import (
    CogVLMConfig,
    CrossAttentionConfig,
    CrossVisionConfig,
    VisionConfig,
)
from cogvlm.models.presets import eva_config
from cogvlm.utils.atomic import atomic_directory

LATEST_FILE = "latest"
# EVA2-CLIP-L as CogAgent ships it; SAT's model_config.json does not describe this tower.
DEFAULT_CROSS_VISION = dict(width=1024, num_blocks=24, head_width=64)
_CROSS_PREFIX = mixin_names.prefix(mixin_names.CROSS_VISION) + "vit.model."
_CROSS_SIZE_FIELDS = ("width", "num_blocks", "head_width", "patch_size", "in_channels", "head_out_features")
_CROSS_NUMBER_FIELDS = ("mlp_ratio", "pretrain_grid", "layernorm_epsilon")
_CROSS_VISION_FIELDS = _CROSS_SIZE_FIELDS + _CROSS_NUMBER_FIELDS
_MAX_LATEST_BYTES = 32
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
    "num_multi_query_heads",
    "rotary_base",
}


@dataclass(frozen=True)
class SatCheckpoint:
    """A SAT checkpoint directory, its parsed config and its per-rank weight files."""

    directory: Path
    raw_config: dict
    model_parallel_size: int
    weight_files: tuple[Path, ...]


def _eva_from_sat(eva: ConfigFields) -> VisionConfig:
    width = eva.integer("hidden_size", maximum=MAX_WIDTH)
    try:
        return eva_config(
            image_px=image_size(eva, "image_size"),
            layers=eva.integer("num_layers", maximum=MAX_LAYERS),
            width=width,
            heads=eva.integer("num_attention_heads", maximum=MAX_HEADS),
            inner=eva.integer("inner_hidden_size", None, maximum=MAX_WIDTH) or 4 * width,
            patch=eva.integer("patch_size", 14, maximum=MAX_IMAGE_PX),
        )
    except ConfigError as error:
        raise CheckpointError(f"{eva.source}: eva_args: {error}") from None


def infer_cross_vision(raw: Mapping, state_shapes: Mapping[str, tuple[int, ...]] | None) -> CrossVisionConfig:
    """CogAgent's cross tower from `cross_vision_args`, else from the weight shapes, else EVA2-CLIP-L."""
    fields = ConfigFields(raw, MODEL_CONFIG_FILE)
    return _cross_vision_from_sat(fields, state_shapes)


def _cross_vision_from_sat(
    fields: ConfigFields, state_shapes: Mapping[str, tuple[int, ...]] | None
) -> CrossVisionConfig:
    image_px = fields.integer("cross_image_pix", 1120, maximum=MAX_IMAGE_PX)
    try:
        if fields.has("cross_vision_args"):
            return CrossVisionConfig(image_px=image_px, **_cross_vision_args_from_sat(fields))
        if state_shapes and _CROSS_PREFIX + "cls_token" in state_shapes:
            return _cross_vision_from_shapes(image_px, state_shapes)
        return CrossVisionConfig(image_px=image_px, **DEFAULT_CROSS_VISION)
    except ConfigError as error:
        raise CheckpointError(f"{fields.source}: {error}") from None


def _cross_vision_args_from_sat(fields: ConfigFields) -> dict:
    args = fields.section("cross_vision_args")
    unknown = set(args.raw) - set(_CROSS_VISION_FIELDS)
    if unknown:
        raise args.error(sorted(unknown)[0], f"is not one of {list(_CROSS_VISION_FIELDS)}")
    return {
        name: args.integer(name, maximum=MAX_WIDTH)
        if name in _CROSS_SIZE_FIELDS
        else args.number(name, minimum=1e-12, maximum=MAX_WIDTH)
        for name in args.raw
    }


def _cross_vision_from_shapes(
    image_px: int, state_shapes: Mapping[str, tuple[int, ...]]
) -> CrossVisionConfig:
    def shape(name: str, dims: int) -> tuple[int, ...]:
        key = _CROSS_PREFIX + name
        found = state_shapes.get(key)
        if found is None or len(found) != dims or not all(found):
            problem = (
                "is missing" if found is None else f"has shape {tuple(found)}, expected {dims} sizes > 0"
            )
            raise CheckpointError(
                f"cannot infer CogAgent's cross vision tower: key {key} {problem} "
                "(add cross_vision_args to model_config.json)"
            )
        return found

    block_pattern = re.compile(re.escape(_CROSS_PREFIX) + r"blocks\.(\d+)\.")
    blocks = {int(m.group(1)) for key in state_shapes if (m := block_pattern.match(key))}
    width = shape("cls_token", 3)[-1]
    mlp_hidden = shape("blocks.0.mlp.w1.weight", 2)[0]
    _, in_channels, patch_size, _ = shape("patch_embed.proj.weight", 4)
    return CrossVisionConfig(
        image_px=image_px,
        width=width,
        num_blocks=len(blocks),
        head_width=shape("rope.freqs_cos", 2)[-1],
        patch_size=patch_size,
        in_channels=in_channels,
        mlp_ratio=2.6667 if int(width * 2.6667) == mlp_hidden else mlp_hidden / width,
        head_out_features=shape("head.weight", 2)[0],
    )


def _cross_from_sat(
    fields: ConfigFields, state_shapes, num_layers: int
) -> tuple[CrossVisionConfig | None, CrossAttentionConfig | None]:
    # A config with cross-attention describes it by these fields; without them the model has none.
    if not fields.has("cross_hidden_size_per_attention_head"):
        return None, None
    cross_vision = _cross_vision_from_sat(fields, state_shapes)
    cross_attention = CrossAttentionConfig(
        encoder_hidden_size=fields.integer("cross_attn_hidden_size", cross_vision.width, maximum=MAX_WIDTH),
        head_dim=fields.integer("cross_hidden_size_per_attention_head", maximum=MAX_WIDTH),
        layers=fields.flags("is_decoder", num_layers),
    )
    return cross_vision, cross_attention


def _llm_sizes_from_sat(fields: ConfigFields) -> dict:
    hidden = fields.integer("hidden_size", maximum=MAX_WIDTH)
    heads = fields.integer("num_attention_heads", maximum=MAX_HEADS)
    return dict(
        layers=fields.integer("num_layers", maximum=MAX_LAYERS),
        hidden=hidden,
        heads=heads,
        inner=fields.integer("inner_hidden_size", None, maximum=MAX_WIDTH) or 4 * hidden,
        vocab=fields.integer("vocab_size", maximum=MAX_VOCAB),
        max_length=fields.integer("max_sequence_length", 4096, maximum=MAX_SEQUENCE),
        kv_heads=fields.integer("num_multi_query_heads", 0, minimum=0, maximum=heads),
        rotary_base=fields.number("rotary_base", DEFAULT_ROTARY_BASE, minimum=1.0001, maximum=1e12),
    )


def config_from_sat(
    raw: Mapping,
    *,
    source: str = MODEL_CONFIG_FILE,
    state_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> CogVLMConfig:
    """Translate a SAT `model_config.json` dict into a `CogVLMConfig`."""
    fields = ConfigFields(raw, source)
    model_class = fields.string("model_class")
    try:
        model_family(model_class)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    model_parallel_size = fields.integer("model_parallel_size", 1, maximum=MAX_MODEL_PARALLEL)
    llm_sizes = _llm_sizes_from_sat(fields)
    vision = _eva_from_sat(fields.section("eva_args"))
    cross_vision, cross_attention = _cross_from_sat(fields, state_shapes, llm_sizes["layers"])
    image_length = fields.integer("image_length", vision.num_patches, maximum=MAX_SEQUENCE)
    if image_length != vision.num_patches:
        raise CheckpointError(
            f"{source}: image_length {image_length} != {vision.num_patches} patches of the eva image size"
        )
    config = assemble_config(
        fields,
        model_class=model_class,
        llm_sizes=llm_sizes,
        vision=vision,
        cross_vision=cross_vision,
        cross_attention=cross_attention,
        text_processor_version=fields.string("text_processor_version", None),
        extra={key: value for key, value in raw.items() if key not in _KNOWN_KEYS},
    )
    check_parallel_layout(config, model_parallel_size, source, "model_parallel_size")
    return config


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


def _cross_attention_to_sat(config: CogVLMConfig) -> dict:
    cross = config.llm.cross_attention
    if cross is None:
        return {}
    return dict(is_decoder=list(cross.layers), cross_attn_hidden_size=cross.encoder_hidden_size)


def _cross_vision_to_sat(config: CogVLMConfig) -> dict:
    tower = config.cross_vision
    if tower is None:
        return {}
    raw = {
        "cross_hidden_size_per_attention_head": config.llm.cross_attention.head_dim,
        "cross_image_pix": tower.image_px,
    }
    if _cross_vision_needs_args(tower):
        raw["cross_vision_args"] = {name: getattr(tower, name) for name in _CROSS_VISION_FIELDS}
    return raw


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
    raw.update(_cross_attention_to_sat(config))
    raw.update(use_bias=False, inner_hidden_size=llm.inner_hidden_size)
    raw.update(non_default_llm_options(llm, "rotary_base"))
    raw["image_length"] = config.image_length
    raw.update(_cross_vision_to_sat(config))
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
    with open(path, "rb") as handle:  # a few bytes: `latest` may be anything, even a link to /dev/zero
        text = handle.read(_MAX_LATEST_BYTES + 1).decode(errors="replace").strip()
    if len(text) > _MAX_LATEST_BYTES or not (text.isascii() and text.isdigit() or text == "release"):
        raise CheckpointError(f"{path}: contains {text!r}, expected an iteration number or 'release'")
    return text


def iteration_folder(directory: Path, iteration: int | str | None) -> Path:
    """The sub-folder of `iteration` (None: the one `latest` names); a missing one names those there are."""
    if iteration is None:
        return directory / read_latest(directory)
    folder = directory / str(iteration)
    if not folder.is_dir():
        saved = sorted((p.name for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
        raise CheckpointError(f"{directory}: no iteration {iteration}; saved iterations: {saved or 'none'}")
    return folder


def open_sat_checkpoint(directory: str | Path, iteration: int | str | None = None) -> SatCheckpoint:
    """Read a SAT checkpoint directory's config and locate every rank's weight file, in the folder of
    `iteration` (default: the one `latest` names)."""
    directory = Path(directory)
    raw = read_json(directory / MODEL_CONFIG_FILE)
    fields = ConfigFields(raw, str(directory / MODEL_CONFIG_FILE))
    size = fields.integer("model_parallel_size", 1, maximum=MAX_MODEL_PARALLEL)
    folder = iteration_folder(directory, iteration)
    files = tuple(folder / f"mp_rank_{rank:02d}_model_states.pt" for rank in range(size))
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CheckpointError(
            f"{directory}: model_parallel_size is {size} but these shards are missing: {missing}"
        )
    return SatCheckpoint(directory=directory, raw_config=raw, model_parallel_size=size, weight_files=files)


def load_sat_weights(path: Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """Load one `mp_rank_XX_model_states.pt` (no code is executed) and return its `module` dict.

    With `verify`, every member's CRC-32 is checked first (one streamed read of the file), so damaged
    tensor bytes are an error rather than weights; skip it only for a file whose CRCs were just checked.
    """
    if verify and path.is_file() and zipfile.is_zipfile(path):
        verify_zip_crcs(path)
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
    return check_tensor_dict(payload["module"], f"{path}: 'module'")


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
