"""Checks of a checkpoint beyond its config fields: the model's size against the memory of the device it
goes to, the model-parallel layout, the tensor dicts and shard names of weight files, the CRCs of a `.pt`
archive, the generation settings, and non-finite weights.

`estimate_model_bytes` needs only a config: it builds depth-1 and depth-2 copies of the model on the meta
device (nothing is allocated) and extrapolates each stack of layers linearly, so a config claiming 1000
layers of width 131072 is sized in a fraction of a second, before any weight is read or memory is taken.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints.config_fields import MAX_SEQUENCE, MAX_VOCAB, ConfigFields
from cogvlm.errors import CheckpointError
from cogvlm.models.builders import build_model
from cogvlm.models.config import CogVLMConfig
from cogvlm.nn.quantized import QuantConfig, quantize_shells_
from cogvlm.parallel.sharding import collect_shard_rules
from cogvlm.utils.progress import byte_bar

logger = logging.getLogger(__name__)
_CHUNK_BYTES = 16 << 20
_CHUNK_ELEMENTS = 1 << 24
_SHOWN = 8


@dataclass(frozen=True)
class ModelSize:
    """Estimated bytes of a model's parameters and buffers, by part ({description: bytes})."""

    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        """All parts together."""
        return sum(self.parts.values())

    def largest(self) -> str:
        """The description of the part that takes the most bytes."""
        return max(self.parts, key=self.parts.get)


def _model_bytes(config: CogVLMConfig, dtype: torch.dtype, quant: QuantConfig | None = None) -> int:
    model = build_model(config, device="meta")
    if quant is not None:  # as a quantized load builds it: cast, then the linears' integers and scales
        quantize_shells_(model.to(dtype), quant.bits, quant.group_size)
        return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    tensors = list(model.parameters()) + list(model.buffers())
    size = dtype.itemsize
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)


def _at_depth(config: CogVLMConfig, flags: tuple[bool, ...], vision: int, cross: int) -> CogVLMConfig:
    llm = config.llm
    cross_attention = llm.cross_attention
    if cross_attention is not None:
        cross_attention = dataclasses.replace(cross_attention, layers=flags)
    tower = dataclasses.replace(config.vision.transformer, num_layers=vision)
    return dataclasses.replace(
        config,
        llm=dataclasses.replace(llm, num_layers=len(flags), cross_attention=cross_attention),
        vision=dataclasses.replace(config.vision, transformer=tower),
        cross_vision=config.cross_vision and dataclasses.replace(config.cross_vision, num_blocks=cross),
    )


def estimate_model_bytes(
    config: CogVLMConfig, dtype: torch.dtype = torch.bfloat16, quant: QuantConfig | None = None
) -> ModelSize:
    """The bytes `config`'s whole model takes with floating-point tensors in `dtype`, its parallel linears
    quantized by `quant` (integers and scales, as a quantized load puts them on the device), by part.

    Exact for every model whose layers are alike (each layer type's bytes are measured on the meta
    device once and multiplied by its count). Divide by the tensor-parallel size for one rank's share.
    """
    llm, tower, cross = config.llm, config.vision.transformer, config.cross_vision
    flagged = sum(llm.cross_attention.layers) if llm.cross_attention else llm.num_layers
    base = _model_bytes(_at_depth(config, (True,), 1, 2), dtype, quant)
    with_cross = _model_bytes(_at_depth(config, (True, True), 1, 2), dtype, quant) - base
    plain = _model_bytes(_at_depth(config, (True, False), 1, 2), dtype, quant) - base if cross else with_cross
    vision_layer = _model_bytes(_at_depth(config, (True,), 2, 2), dtype, quant) - base
    parts = {
        f"{llm.num_layers} LLM layers (num_layers={llm.num_layers}, hidden_size={llm.hidden_size}, "
        f"inner_hidden_size={llm.inner_hidden_size})": flagged * with_cross
        + (llm.num_layers - flagged) * plain,
        f"{tower.num_layers} vision layers (vision num_layers={tower.num_layers}, "
        f"hidden_size={tower.hidden_size})": tower.num_layers * vision_layer,
    }
    rest = base - with_cross - vision_layer
    if cross is not None:
        block = _model_bytes(_at_depth(config, (True,), 1, 3), dtype, quant) - base
        parts[f"{cross.num_blocks} cross vision blocks (width={cross.width})"] = cross.num_blocks * block
        rest -= 2 * block
    parts[
        f"embeddings and heads (vocab_size={llm.vocab_size}, hidden_size={llm.hidden_size}, "
        f"max_sequence_length={llm.max_sequence_length}, image_size={config.vision.image_px})"
    ] = rest
    return ModelSize(parts)


def _proc_meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes on `device` (CPU: available RAM within any cgroup limit), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        known = [v for v in (_proc_meminfo_available(), _cgroup_available()) if v is not None]
        return min(known) if known else None
    return None


def format_bytes(count: float) -> str:
    """`count` bytes in B, KB, MB, GB, TB or PB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} PB"


def check_model_fits(
    config: CogVLMConfig,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    tp_size: int = 1,
    source: str = "checkpoint",
    available: int | None = None,
    quant: QuantConfig | None = None,
) -> ModelSize:
    """Refuse (CheckpointError) a model whose share per rank exceeds the memory free on `device`.

    `quant`: the model is loaded quantized (its size counts integers and scales). `available` overrides
    the measured free bytes. Returns the estimate.
    """
    check_parallel_layout(config, tp_size, source, "tp_size")
    size = estimate_model_bytes(config, dtype, quant)
    need = size.total // tp_size
    free = available if available is not None else available_memory(device)
    if free is not None and need > free:
        part = size.largest()
        raise CheckpointError(
            f"{source}: the model needs about {format_bytes(need)} in {str(dtype).removeprefix('torch.')}"
            + (f" quantized ({quant.describe()})" if quant is not None else "")
            + (f" per rank (tp_size={tp_size})" if tp_size > 1 else "")
            + f", more than the {format_bytes(free)} free on {torch.device(device)}; its largest part is "
            f"{part}: {format_bytes(size.parts[part] // tp_size)}"
        )
    return size


def _parallel_fields(config: CogVLMConfig) -> dict[str, int]:
    llm, tower = config.llm, config.vision.transformer
    return {
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "inner_hidden_size": llm.inner_hidden_size,
        "vocab_size": llm.vocab_size,
        "vision num_attention_heads": tower.num_attention_heads,
        "vision inner_hidden_size": tower.inner_hidden_size,
    }


def check_parallel_layout(config: CogVLMConfig, size: int, source: str, field: str) -> None:
    """Refuse a model-parallel `size` that does not divide the heads and every split tensor of `config`.

    `field` names where the size came from (`model_parallel_size`, `tp_size`) in the error.
    """
    if size == 1:
        return
    bad = [f"{name}={value}" for name, value in _parallel_fields(config).items() if value % size]
    if not bad:
        model = build_model(config, device="meta")
        rules = collect_shard_rules(model)
        for key, tensor in model.state_dict().items():
            rule = rules.get(key)
            if rule is not None and not rule.is_replicated:
                if not rule.splits_evenly(tensor.shape[rule.dim], size):
                    bad.append(f"{key} of shape {tuple(tensor.shape)} along dimension {rule.dim}")
    if bad:
        raise CheckpointError(
            f"{source}: {field}={size} does not divide the model into equal ranks: {', '.join(bad[:4])} "
            f"{'is' if len(bad) == 1 else 'are'} not divisible by {size}"
        )


# generation_config.json fields the engine reads: (kind, minimum, maximum).
_GENERATION_FIELDS = {
    "temperature": ("number", 0.0, 1e4),
    "top_p": ("number", 0.0, 1.0),
    "repetition_penalty": ("number", 1e-6, 1e4),
    "top_k": ("integer", 0, MAX_VOCAB),
    "max_length": ("integer", 1, MAX_SEQUENCE),
    "max_new_tokens": ("integer", 1, MAX_SEQUENCE),
}


def check_generation_config(raw: dict, source: str) -> dict:
    """`raw` (a `generation_config.json`) once every field the engine reads has its type and range.

    Other fields pass unchanged; a null counts as absent.
    """
    fields = ConfigFields(raw, source)
    checked = {key: value for key, value in raw.items() if value is not None}
    if "do_sample" in checked and not isinstance(checked["do_sample"], bool):
        raise fields.error("do_sample", f"is {checked['do_sample']!r}, expected true or false")
    for name, (kind, low, high) in _GENERATION_FIELDS.items():
        if name in checked:
            read = fields.number if kind == "number" else fields.integer
            checked[name] = read(name, minimum=low, maximum=high)
    return checked


def check_tensor_dict(tensors: object, where: str) -> dict[str, torch.Tensor]:
    """`tensors` as a dict, if it maps strings to tensors; otherwise an error naming the bad entries."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{where} is a {type(tensors).__name__}, expected a dict of tensors")
    bad_keys = [key for key in tensors if not isinstance(key, str)]
    if bad_keys:
        raise CheckpointError(f"{where}: keys that are not strings: {[repr(k) for k in bad_keys[:5]]}")
    bad = [key for key, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: entries that are not tensors: {bad[:5]}")
    return dict(tensors)


def check_shard_name(name: object, key: str, index_path: Path) -> str:
    """`name` if it is a plain file name in the checkpoint folder (nothing absolute, no `..`, no folder)."""
    if not isinstance(name, str):
        raise CheckpointError(f"{index_path}: weight_map[{key!r}] is {name!r}, expected a file name")
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointError(
            f"{index_path}: weight_map[{key!r}] is {name!r}; a shard must be a file in the checkpoint folder"
        )
    return name


def verify_zip_crcs(path: Path) -> None:
    """Read every member of a zip archive (a `torch.save` file) in chunks and check its CRC-32.

    A damaged member raises `CheckpointError` naming the file and the member. Memory stays at one chunk.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            with byte_bar(f"checking {path.name}", sum(i.file_size for i in infos)) as bar:
                for info in infos:
                    _check_member(archive, info, path, bar)
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path}: damaged archive ({error})") from None


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, bar) -> None:
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK_BYTES):
                bar.update(len(chunk))
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"{path}: member {info.filename!r} is damaged ({error}); the file is corrupt, fetch it again"
        ) from None


def _non_finite_count(tensor: torch.Tensor) -> int:
    # aminmax allocates nothing and propagates NaN and inf: the per-element count runs only when needed.
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(flat))).all()):
        return 0
    count = 0
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        count += int((~torch.isfinite(flat[start : start + _CHUNK_ELEMENTS])).sum())
    return count


def warn_non_finite(tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    """Log one warning naming the floating-point tensors that hold NaN or inf; return {key: count}."""
    found = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.device.type != "meta":
            count = _non_finite_count(tensor)
            if count:
                found[key] = count
    if found:
        shown = ", ".join(f"{key} ({n} of {tensors[key].numel()})" for key, n in list(found.items())[:_SHOWN])
        more = f", … ({len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
        logger.warning(
            "%s: %d tensors hold NaN or inf values, so the model's answers will be meaningless: %s%s",
            source,
            len(found),
            shown,
            more,
        )
    return found
