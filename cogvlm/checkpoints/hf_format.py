"""HF layout (config.json + safetensors, one file or sharded with an index) and the SAT <-> HF key table."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cogvlm.checkpoints.config_fields import (
    DEFAULT_ROTARY_BASE,
    MAX_HEADS,
    MAX_IMAGE_PX,
    MAX_LAYERS,
    MAX_SEQUENCE,
    MAX_VOCAB,
    MAX_WIDTH,
    ConfigFields,
    assemble_config,
    non_default_llm_options,
)
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.sat_format import DEFAULT_CROSS_VISION
from cogvlm.checkpoints.validation import check_shard_name, check_tensor_dict, verify_zip_crcs
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.models.builders import ModelFamily, family_of_hf_architecture, model_family
from cogvlm.models.config import (
    CogVLMConfig,
    CrossAttentionConfig,
    CrossVisionConfig,
    VisionConfig,
)
from cogvlm.models.presets import eva_config
from cogvlm.utils.atomic import atomic_directory

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
ROTARY_SAT_KEY = "mixins.rotary.rotary_emb.inv_freq"
QUANT_SCALE_SUFFIX = ".weight_scale"
ROTARY_HF_KEY = re.compile(r"model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq")

# One literal table. {i}/{k}: layer numbers, {p}: weight or bias, {rest}: any sub-key (same on both sides).
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("transformer.word_embeddings.weight", "model.embed_tokens.weight"),
    ("transformer.final_layernorm.weight", "model.norm.weight"),
    ("mixins.lm.lm_head.weight", "lm_head.weight"),
    ("transformer.layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    (
        "transformer.layers.{i}.post_attention_layernorm.weight",
        "model.layers.{i}.post_attention_layernorm.weight",
    ),
    (
        "transformer.layers.{i}.attention.query_key_value.weight",
        "model.layers.{i}.self_attn.language_expert_query_key_value.weight",
    ),
    (
        "transformer.layers.{i}.attention.dense.weight",
        "model.layers.{i}.self_attn.language_expert_dense.weight",
    ),
    (
        "mixins.rotary.vision_query_key_value_list.{i}.weight",
        "model.layers.{i}.self_attn.vision_expert_query_key_value.weight",
    ),
    ("mixins.rotary.vision_dense_list.{i}.weight", "model.layers.{i}.self_attn.vision_expert_dense.weight"),
    ("mixins.mlp.gate_proj.{i}.weight", "model.layers.{i}.mlp.language_mlp.gate_proj.weight"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.weight", "model.layers.{i}.mlp.language_mlp.up_proj.weight"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.weight", "model.layers.{i}.mlp.language_mlp.down_proj.weight"),
    ("mixins.mlp.vision_gate_proj.{i}.weight", "model.layers.{i}.mlp.vision_mlp.gate_proj.weight"),
    ("mixins.mlp.vision_dense_h_to_4h_list.{i}.weight", "model.layers.{i}.mlp.vision_mlp.up_proj.weight"),
    ("mixins.mlp.vision_dense_4h_to_h_list.{i}.weight", "model.layers.{i}.mlp.vision_mlp.down_proj.weight"),
    ("transformer.layers.{i}.cross_attention.query.weight", "model.layers.{i}.cross_attn.query.weight"),
    (
        "transformer.layers.{i}.cross_attention.key_value.weight",
        "model.layers.{i}.cross_attn.key_value.weight",
    ),
    ("transformer.layers.{i}.cross_attention.dense.weight", "model.layers.{i}.cross_attn.dense.weight"),
    (
        "transformer.layers.{i}.post_cross_attention_layernorm.weight",
        "model.layers.{i}.post_cross_attention_layernorm.weight",
    ),
    ("mixins.eva.vit_model.mixins.patch_embedding.proj.{p}", "model.vision.patch_embedding.proj.{p}"),
    ("mixins.eva.vit_model.transformer.word_embeddings.weight", "model.vision.patch_embedding.cls_embedding"),
    (
        "mixins.eva.vit_model.transformer.position_embeddings.weight",
        "model.vision.patch_embedding.position_embedding.weight",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.input_layernorm.{p}",
        "model.vision.transformer.layers.{k}.input_layernorm.{p}",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.post_attention_layernorm.{p}",
        "model.vision.transformer.layers.{k}.post_attention_layernorm.{p}",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.attention.query_key_value.{p}",
        "model.vision.transformer.layers.{k}.attention.query_key_value.{p}",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.attention.dense.{p}",
        "model.vision.transformer.layers.{k}.attention.dense.{p}",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.mlp.dense_h_to_4h.{p}",
        "model.vision.transformer.layers.{k}.mlp.fc1.{p}",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.mlp.dense_4h_to_h.{p}",
        "model.vision.transformer.layers.{k}.mlp.fc2.{p}",
    ),
    ("mixins.eva.linear_proj.{rest}", "model.vision.linear_proj.{rest}"),
    ("mixins.eva.boi", "model.vision.boi"),
    ("mixins.eva.eoi", "model.vision.eoi"),
    ("mixins.eva.pos_embed", "model.vision.pos_embed"),
    ("mixins.encoder.vit.model.{rest}", "model.cross_vision.vit.model.{rest}"),
    ("mixins.encoder.pos_embed", "model.cross_vision.pos_embed"),
)
_PLACEHOLDERS = {
    "{i}": r"(?P<i>\d+)",
    "{k}": r"(?P<k>\d+)",
    "{p}": r"(?P<p>weight|bias)",
    "{rest}": r"(?P<rest>.+)",
}

logger = logging.getLogger(__name__)


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for placeholder, group in _PLACEHOLDERS.items():
        regex = regex.replace(re.escape(placeholder), group)
    return re.compile(regex + r"\Z")


_SAT_TO_HF = [(_compile(sat), hf) for sat, hf in KEY_TABLE]
_HF_TO_SAT = [(_compile(hf), sat) for sat, hf in KEY_TABLE]


def _translate(key: str, table, direction: str) -> str:
    for regex, template in table:
        match = regex.match(key)
        if match:
            result = template
            for name, value in match.groupdict().items():
                result = result.replace("{" + name + "}", value)
            return result
    raise CheckpointError(f"no {direction} name for key {key!r}; it is not in the SAT <-> HF key table")


def sat_key_to_hf(key: str) -> str:
    """The HF name of a SAT key (the rotary buffer is handled by `sat_state_dict_to_hf`); a quantized
    layer's `<weight>_scale` is named after its weight."""
    if key.endswith(QUANT_SCALE_SUFFIX):
        return sat_key_to_hf(key.removesuffix("_scale")) + "_scale"
    return _translate(key, _SAT_TO_HF, "HF")


def hf_key_to_sat(key: str) -> str:
    """The SAT name of an HF key."""
    if key.endswith(QUANT_SCALE_SUFFIX):
        return hf_key_to_sat(key.removesuffix("_scale")) + "_scale"
    return _translate(key, _HF_TO_SAT, "SAT")


def hf_state_dict_to_sat(tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename HF keys to SAT keys; HF's per-layer copies of `inv_freq` become SAT's single buffer."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if ROTARY_HF_KEY.match(key):
            if ROTARY_SAT_KEY in converted and not torch.equal(converted[ROTARY_SAT_KEY], tensor):
                raise CheckpointError(f"{source}: {key} differs from the other layers' rotary inv_freq")
            converted[ROTARY_SAT_KEY] = tensor
            continue
        try:
            converted[hf_key_to_sat(key)] = tensor
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from None
    return converted


def sat_state_dict_to_hf(tensors: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename SAT keys to HF keys; SAT's single `inv_freq` is written once per layer, as HF stores it."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key == ROTARY_SAT_KEY:
            for layer in range(num_layers):
                converted[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = tensor.clone()
        else:
            converted[sat_key_to_hf(key)] = tensor
    return converted


def _family_from_hf(fields: ConfigFields) -> ModelFamily:
    # Configs written without `architectures` still tell CogAgent by its cross-attention fields.
    family = family_of_hf_architecture(fields.raw.get("architectures"))
    if family is None:
        family = model_family("CogAgentModel" if fields.has("cross_image_size") else "CogVLMModel")
    return family


def _vision_from_hf(fields: ConfigFields) -> VisionConfig:
    vision = fields.section("vision_config")
    try:
        return eva_config(
            image_px=vision.integer("image_size", maximum=MAX_IMAGE_PX),
            layers=vision.integer("num_hidden_layers", maximum=MAX_LAYERS),
            width=vision.integer("hidden_size", maximum=MAX_WIDTH),
            heads=vision.integer("num_heads", maximum=MAX_HEADS),
            inner=vision.integer("intermediate_size", maximum=MAX_WIDTH),
            patch=vision.integer("patch_size", 14, maximum=MAX_IMAGE_PX),
        )
    except ConfigError as error:
        raise CheckpointError(f"{fields.source}: vision_config: {error}") from None


def _cross_from_hf(
    fields: ConfigFields, heads: int, num_layers: int
) -> tuple[CrossVisionConfig | None, CrossAttentionConfig | None]:
    # A config with cross-attention describes it by these fields; without them the model has none.
    if not fields.has("cross_image_size"):
        return None, None
    tower = fields.section("cross_vision_config", DEFAULT_CROSS_VISION)
    sizes = {name: tower.integer(name, maximum=MAX_WIDTH) for name in DEFAULT_CROSS_VISION}
    try:
        cross_vision = CrossVisionConfig(
            image_px=fields.integer("cross_image_size", maximum=MAX_IMAGE_PX), **sizes
        )
    except ConfigError as error:
        raise CheckpointError(f"{fields.source}: {error}") from None
    compute_width = fields.integer("cross_compute_hidden_size", 1024, maximum=MAX_WIDTH)
    if compute_width % heads:
        raise fields.error("cross_compute_hidden_size", f"{compute_width} is not divisible by {heads} heads")
    cross_attention = CrossAttentionConfig(
        encoder_hidden_size=fields.integer("cross_hidden_size", cross_vision.width, maximum=MAX_WIDTH),
        head_dim=compute_width // heads,
        layers=(True,) * num_layers,
    )
    return cross_vision, cross_attention


def config_from_hf(raw: Mapping, source: str = CONFIG_FILE) -> CogVLMConfig:
    """Translate an HF `config.json` (cogvlm-*-hf / cogagent-*-hf) into a `CogVLMConfig`."""
    fields = ConfigFields(raw, source)
    family = _family_from_hf(fields)
    vision = _vision_from_hf(fields)
    heads = fields.integer("num_attention_heads", maximum=MAX_HEADS)
    llm_sizes = dict(
        layers=fields.integer("num_hidden_layers", maximum=MAX_LAYERS),
        hidden=fields.integer("hidden_size", maximum=MAX_WIDTH),
        heads=heads,
        inner=fields.integer("intermediate_size", maximum=MAX_WIDTH),
        vocab=fields.integer("vocab_size", maximum=MAX_VOCAB),
        max_length=fields.integer("max_position_embeddings", 2048, maximum=MAX_SEQUENCE),
        kv_heads=fields.integer("num_multi_query_heads", 0, minimum=0, maximum=heads),
        rotary_base=fields.number("rope_theta", DEFAULT_ROTARY_BASE, minimum=1.0001, maximum=1e12),
    )
    cross_vision, cross_attention = _cross_from_hf(fields, heads, llm_sizes["layers"])
    return assemble_config(
        fields,
        model_class=family.model_class,
        llm_sizes=llm_sizes,
        vision=vision,
        cross_vision=cross_vision,
        cross_attention=cross_attention,
        text_processor_version=family.version_from_hf(fields.string("template_version", None)),
    )


def _cross_to_hf(config: CogVLMConfig) -> dict:
    cross, tower = config.llm.cross_attention, config.cross_vision
    if tower is None:
        return {}
    raw = dict(
        cross_hidden_size=cross.encoder_hidden_size,
        cross_compute_hidden_size=config.llm.num_attention_heads * cross.head_dim,
        cross_image_size=tower.image_px,
    )
    sizes = {name: getattr(tower, name) for name in DEFAULT_CROSS_VISION}
    if sizes != DEFAULT_CROSS_VISION:
        raw["cross_vision_config"] = sizes
    return raw


def config_to_hf(config: CogVLMConfig, torch_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Translate a `CogVLMConfig` into an HF `config.json` dict with the published field names."""
    llm, vision = config.llm, config.vision
    tower = vision.transformer
    family = model_family(config.model_class)
    raw = {
        "architectures": [family.hf_architecture],
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.inner_hidden_size,
        "num_hidden_layers": llm.num_layers,
        "num_attention_heads": llm.num_attention_heads,
        **non_default_llm_options(llm, "rope_theta"),
        "hidden_act": "silu",
        "max_position_embeddings": llm.max_sequence_length,
        "initializer_range": 0.02,
        "rms_norm_eps": llm.layernorm_epsilon,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": str(torch_dtype).removeprefix("torch."),
        "tokenizer_type": config.tokenizer_type,
        "vision_config": {
            "dropout_prob": 0.0,
            "hidden_act": "gelu",
            "hidden_size": tower.hidden_size,
            "image_size": vision.image_px,
            "in_channels": vision.in_channels,
            "intermediate_size": tower.inner_hidden_size,
            "layer_norm_eps": tower.layernorm_epsilon,
            "num_heads": tower.num_attention_heads,
            "num_hidden_layers": tower.num_layers,
            "num_positions": tower.num_positions,
            "patch_size": vision.patch_size,
        },
    }
    raw.update(_cross_to_hf(config))
    template = family.version_to_hf(config.text_processor_version)
    if template is not None:  # none recorded: omitted, so the HF port takes its own default, "chat"
        raw["template_version"] = template
        if family.version_from_hf(template) != config.text_processor_version:
            logger.warning(
                "the HF %s port has no template for prompt version %r: its template_version %r means %r "
                "there (our loader keeps %r, recorded in sat_model_config)",
                config.model_class,
                config.text_processor_version,
                template,
                family.version_from_hf(template),
                config.text_processor_version,
            )
    return raw


def hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of an HF directory, from its index if it has one."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path}: has no 'weight_map' object")
            names = {check_shard_name(value, key, index_path) for key, value in weight_map.items()}
            files = [directory / name for name in sorted(names)]
            missing = [str(path) for path in files if not path.is_file()]
            if missing:
                raise CheckpointError(f"{index_path}: lists shards that are missing: {missing}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f"{directory}: no model.safetensors, pytorch_model.bin or shard index found")


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a `.safetensors` or a `.bin`/`.pt` tensor dict without executing code."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if path.is_file() and zipfile.is_zipfile(path):
            verify_zip_crcs(path)
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except CheckpointError:
        raise
    except (SafetensorError, Exception) as error:
        raise CheckpointError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    return check_tensor_dict(payload, str(path))


def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory, renamed to SAT keys."""
    tensors: dict[str, torch.Tensor] = {}
    for path in hf_weight_files(directory):
        for key, tensor in load_tensor_file(path).items():
            if key in tensors:
                raise CheckpointError(f"{path}: key {key!r} also appears in another shard")
            tensors[key] = tensor
    return hf_state_dict_to_sat(tensors, str(directory))


def _shards(tensors: Mapping[str, torch.Tensor], max_shard_bytes: int) -> Iterable[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            yield shard
            shard, size = {}, 0
        shard[key] = tensor
        size += nbytes
    if shard:
        yield shard


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (the rope tables SAT repeats per block).
    seen: set[int] = set()
    result = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        result[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def save_hf_checkpoint(
    directory: str | Path,
    config: CogVLMConfig,
    sat_state_dict: Mapping[str, torch.Tensor],
    max_shard_bytes: int = 5 << 30,
    extra_fields: Mapping | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write an HF directory (config.json, safetensors shards and their index) atomically.

    `extra_fields` are added to config.json (e.g. the SAT config a conversion came from); `extra_files`
    ({name: file}) are copied in within the same atomic write.
    """
    directory = Path(directory)
    tensors = sat_state_dict_to_hf(sat_state_dict, config.llm.num_layers)
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    shards = list(_shards(tensors, max_shard_bytes))
    with atomic_directory(directory, extra_files) as staging:
        raw_config = {**config_to_hf(config, dtype), **(extra_fields or {})}
        (staging / CONFIG_FILE).write_text(json.dumps(raw_config, indent=2))
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            name = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            )
            save_file(_unshared(shard), staging / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return directory
