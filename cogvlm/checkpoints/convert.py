"""`cogvlm convert`: SAT <-> HF for CogVLM and CogAgent, through the one key table of `hf_format`.

Every tensor keeps its dtype and bytes unless `dtype` asks for a cast of the floating-point ones; only
names change (plus SAT's single rotary `inv_freq`, which HF stores once per layer). SAT -> SAT and
HF -> HF are allowed only with a cast. A `tokenizer.model` beside the source is copied along. The HF
`config.json` carries the SAT `model_config.json` it came from under `sat_model_config`, so
SAT -> HF -> SAT gives back the same SAT config, fields HF has no name for included.

Memory: an MP=1 SAT file is read memory-mapped (`torch.load(mmap=True)`) and HF safetensors lazily
(`safetensors.load_file` maps the file); safetensors and `torch.save` write tensor by tensor from those
mappings. Anonymous memory therefore stays near the process baseline whatever the checkpoint size; the
page cache holds the bytes being copied and the kernel reclaims it. An HF target that needs new tensors
(a `dtype` cast, `quant`, or an MP>1 SAT source merged key by key) is written by `streamed_writer`, one
shard in memory at a time. Only a cast or merge into SAT format holds the whole model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.checkpoints import hf_format, sat_format
from cogvlm.checkpoints.catalog import CheckpointFormat
from cogvlm.checkpoints.hf_companions import hf_companions
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.loading import detect_format, read_checkpoint
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.models.config import CogVLMConfig
from cogvlm.nn.quantized import QuantConfig
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE
from cogvlm.utils.atomic import atomic_directory

logger = logging.getLogger(__name__)
SAT_CONFIG_FIELD = "sat_model_config"
DEFAULT_MAX_SHARD_BYTES = 5 << 30


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert, where to, and how large the HF shards may be."""

    source: Path
    output: Path
    target_format: CheckpointFormat | None = None  # None: the other format than the source's
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    overwrite: bool = False
    dtype: torch.dtype | None = None  # cast floating-point tensors to this; None keeps them
    quant: QuantConfig | None = None  # write the quantized HF form (`quantized_format`)
    local_tokenizer: str | None = None  # HF output: the tokenizer to ship (None: beside source, else vicuna)

    def __post_init__(self) -> None:
        if self.dtype is not None and not self.dtype.is_floating_point:
            raise ConfigError(f"ConvertConfig: dtype={self.dtype} is not a floating-point type")
        if self.target_format not in (None, "sat", "hf"):
            raise ConfigError(f"ConvertConfig: target_format={self.target_format!r}, expected 'sat' or 'hf'")
        if self.quant is not None and self.target_format == "sat":
            raise ConfigError("ConvertConfig: a quantized checkpoint is written in HF format, not SAT")
        if self.max_shard_bytes <= 0:
            raise ConfigError(f"ConvertConfig: max_shard_bytes={self.max_shard_bytes} must be positive")


@dataclass(frozen=True)
class ConvertResult:
    """Where the converted checkpoint is, and what it holds."""

    output: Path
    source_format: CheckpointFormat
    target_format: CheckpointFormat
    num_tensors: int
    dtypes: tuple[str, ...]


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
}


def parse_byte_size(text: str) -> int:
    """Bytes in "5GiB", "500MB", "1000" (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)."""
    stripped = text.strip().upper().replace(" ", "")
    number = stripped.rstrip("KMGIB")
    unit = stripped[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(
            f"size {text!r}: expected a number with an optional unit B, KB, MB, GB, KiB, MiB, GiB"
        ) from None
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"size {text!r} must be a finite number of at least one byte")
    return int(value)


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}


def _result(
    output: Path, source: CheckpointFormat, target: CheckpointFormat, state: Mapping[str, torch.Tensor]
) -> ConvertResult:
    dtypes = tuple(sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state.values()}))
    return ConvertResult(output, source, target, len(state), dtypes)


def cast_floating(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """`state` with its floating-point tensors in `dtype` (None: unchanged); integer tensors stay."""
    if dtype is None:
        return dict(state)
    return {key: t.to(dtype) if t.is_floating_point() else t for key, t in state.items()}


def read_sat_for_conversion(source: Path) -> tuple[dict, CogVLMConfig, dict[str, torch.Tensor]]:
    """The raw SAT config, our config and the whole state dict (memory-mapped when MP=1)."""
    checkpoint = sat_format.open_sat_checkpoint(source)
    if checkpoint.model_parallel_size > 1:
        try:
            info, state = read_checkpoint(source)
        except ValueError as error:
            raise CheckpointError(f"{source}: cannot merge its model-parallel shards ({error})") from None
        return checkpoint.raw_config, info.config, state
    state = sat_format.load_sat_weights(checkpoint.weight_files[0])
    config = sat_format.config_from_sat(
        checkpoint.raw_config,
        source=str(source / sat_format.MODEL_CONFIG_FILE),
        state_shapes=_shapes(state),
    )
    return checkpoint.raw_config, config, state


def sat_to_hf(
    source: Path,
    output: Path,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | None = None,
    local_tokenizer: str | None = None,
) -> ConvertResult:
    """Write the HF form of a SAT checkpoint (published key names and config fields), with its generation
    config and tokenizer files (`hf_companions`)."""
    raw, config, state = read_sat_for_conversion(source)
    state = cast_floating(state, dtype)
    with hf_companions(source, config, local_tokenizer) as extra_files:
        hf_format.save_hf_checkpoint(
            output,
            config,
            state,
            max_shard_bytes=max_shard_bytes,
            extra_fields={SAT_CONFIG_FIELD: raw},
            extra_files=extra_files,
        )
    return _result(output, "sat", "hf", state)


def sat_to_sat(source: Path, output: Path, dtype: torch.dtype) -> ConvertResult:
    """An MP=1 SAT copy of a SAT checkpoint (shards merged, a run's extras dropped), cast to `dtype`."""
    raw, _, state = read_sat_for_conversion(source)
    state = cast_floating(state, dtype)
    write_sat_directory(output, _at_model_parallel_size_1(raw), state, tokenizer_beside(source))
    return _result(output, "sat", "sat", state)


def _at_model_parallel_size_1(raw: Mapping) -> dict:
    single = dict(raw, model_parallel_size=1)
    if isinstance(raw.get("eva_args"), Mapping):
        single["eva_args"] = dict(raw["eva_args"], model_parallel_size=1)
    return single


def sat_config_from_hf(hf_raw: Mapping, config: CogVLMConfig, state: Mapping, source: Path) -> dict:
    """The SAT config recorded in an HF config.json if it still describes the model, else a translation."""
    stored = hf_raw.get(SAT_CONFIG_FIELD)
    if isinstance(stored, Mapping):
        candidate = _at_model_parallel_size_1(stored)
        try:
            matches = sat_format.config_from_sat(candidate, state_shapes=_shapes(state)) == config
        except CheckpointError:
            matches = False
        if matches:
            return candidate
        logger.warning(
            "%s: its %s no longer matches config.json; the SAT config is translated from config.json",
            source / hf_format.CONFIG_FILE,
            SAT_CONFIG_FIELD,
        )
    return sat_format.config_to_sat(config, 1)


def write_sat_directory(
    directory: Path,
    raw_config: Mapping,
    state: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write an MP=1 SAT checkpoint (`model_config.json`, `latest` = 1, `1/mp_rank_00_...`) atomically,
    with `extra_files` ({name: file}) copied in."""
    with atomic_directory(directory, extra_files) as staging:
        (staging / sat_format.MODEL_CONFIG_FILE).write_text(json.dumps(raw_config, indent=4))
        (staging / sat_format.LATEST_FILE).write_text("1")
        (staging / "1").mkdir()
        torch.save({"module": dict(state)}, staging / "1" / "mp_rank_00_model_states.pt")
    return directory


def read_hf_for_conversion(
    source: Path, dtype: torch.dtype | None
) -> tuple[dict, CogVLMConfig, dict[str, torch.Tensor]]:
    """The raw HF config.json, our config and the SAT-named state dict, floating tensors cast to `dtype`."""
    hf_raw = read_json(source / hf_format.CONFIG_FILE)
    config = hf_format.config_from_hf(hf_raw, str(source / hf_format.CONFIG_FILE))
    return hf_raw, config, cast_floating(hf_format.load_hf_weights(source), dtype)


def hf_to_sat(source: Path, output: Path, dtype: torch.dtype | None = None) -> ConvertResult:
    """Write the SAT form (MP=1) of an HF checkpoint."""
    hf_raw, config, state = read_hf_for_conversion(source, dtype)
    write_sat_directory(
        output, sat_config_from_hf(hf_raw, config, state, source), state, tokenizer_beside(source)
    )
    return _result(output, "hf", "sat", state)


def hf_to_hf(
    source: Path, output: Path, max_shard_bytes: int, dtype: torch.dtype, local_tokenizer: str | None = None
) -> ConvertResult:
    """An HF copy of an HF checkpoint, cast to `dtype`, with its generation and tokenizer files."""
    hf_raw, config, state = read_hf_for_conversion(source, dtype)
    extra = {SAT_CONFIG_FIELD: hf_raw[SAT_CONFIG_FIELD]} if SAT_CONFIG_FIELD in hf_raw else None
    with hf_companions(source, config, local_tokenizer) as extra_files:
        hf_format.save_hf_checkpoint(
            output,
            config,
            state,
            max_shard_bytes=max_shard_bytes,
            extra_fields=extra,
            extra_files=extra_files,
        )
    return _result(output, "hf", "hf", state)


def tokenizer_beside(checkpoint: Path) -> dict[str, Path]:
    """{"tokenizer.model": its path} if the checkpoint directory holds one, else {} (for `extra_files`)."""
    tokenizer = checkpoint / TOKENIZER_FILE
    return {TOKENIZER_FILE: tokenizer} if tokenizer.is_file() else {}


def convert_checkpoint(config: ConvertConfig) -> ConvertResult:
    """Convert `config.source` (SAT or HF directory) into the other format at `config.output`."""
    source, output = Path(config.source), Path(config.output)
    source_format = detect_format(source)
    target_format = config.target_format or ("hf" if source_format == "sat" or config.quant else "sat")
    if target_format == source_format and config.dtype is None and config.quant is None:
        raise CheckpointError(
            f"{source}: already in {source_format.upper()} format "
            "(a same-format copy needs a dtype to cast to)"
        )
    if output.exists() and output.resolve() == source.resolve():
        raise CheckpointError(f"{output}: the output must differ from the source")
    if output.exists() and not config.overwrite:
        raise CheckpointError(f"{output}: already exists; pass --overwrite to replace it")
    if target_format == "hf" and (config.quant or config.dtype or _is_split_sat(source, source_format)):
        return streamed_to_hf(source, output, source_format, config)
    if (source_format, target_format) == ("sat", "hf"):
        return sat_to_hf(source, output, config.max_shard_bytes, config.dtype, config.local_tokenizer)
    if (source_format, target_format) == ("hf", "sat"):
        return hf_to_sat(source, output, config.dtype)
    if source_format == "sat":
        return sat_to_sat(source, output, config.dtype)
    return hf_to_hf(source, output, config.max_shard_bytes, config.dtype, config.local_tokenizer)


def _is_split_sat(source: Path, source_format: CheckpointFormat) -> bool:
    return source_format == "sat" and sat_format.open_sat_checkpoint(source).model_parallel_size > 1


def streamed_to_hf(source: Path, output: Path, source_format: CheckpointFormat, config: ConvertConfig):
    """Write the HF form of a SAT or HF checkpoint tensor by tensor (`streamed_writer`), cast to
    `config.dtype` and quantized by `config.quant`, its SAT config kept, with its generation config and
    tokenizer files (`hf_companions`)."""
    from cogvlm.checkpoints.streamed_writer import write_hf_streamed

    if source_format == "sat":
        checkpoint = sat_format.open_sat_checkpoint(source)
        raw = _at_model_parallel_size_1(checkpoint.raw_config)
        # Shapes only (mapped, not read): write_hf_streamed checks the CRCs before it reads a tensor.
        shapes = _shapes(sat_format.load_sat_weights(checkpoint.weight_files[0], verify=False))
        source_config = sat_format.config_from_sat(
            checkpoint.raw_config, source=str(source / sat_format.MODEL_CONFIG_FILE), state_shapes=shapes
        )
    else:
        hf_raw = read_json(source / hf_format.CONFIG_FILE)
        raw = hf_raw.get(SAT_CONFIG_FIELD)
        source_config = hf_format.config_from_hf(hf_raw, str(source / hf_format.CONFIG_FILE))
    with hf_companions(source, source_config, config.local_tokenizer) as extra_files:
        count, dtypes = write_hf_streamed(
            source,
            output,
            config.quant,
            dtype=config.dtype,
            max_shard_bytes=config.max_shard_bytes,
            extra_fields=None if raw is None else {SAT_CONFIG_FIELD: raw},
            extra_files=extra_files,
        )
    return ConvertResult(output, source_format, "hf", count, dtypes)
