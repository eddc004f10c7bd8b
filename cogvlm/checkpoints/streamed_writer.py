"""Write a checkpoint in HF form tensor by tensor: `cogvlm convert --quant 4|8` and `--dtype` casts.

The source is planned like a load (`loading.plan_model_load`, MP=1, on the meta device) and read one
tensor at a time from its mapped files; each tensor is cast to the model dtype and, with `quant`, each
parallel linear's weight is quantized exactly as a quantize-on-load would (`quantized_format`), so loading
the result gives the same integers and scales. Tensors are gathered into safetensors shards of at most
`max_shard_bytes`, each written and dropped before the next: the heap holds one shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from cogvlm.checkpoints import hf_format
from cogvlm.checkpoints.loading import LoadPlan, open_checkpoint, plan_model_load
from cogvlm.checkpoints.quantized_format import quantization_field
from cogvlm.checkpoints.streaming import SCALE_SUFFIX, CheckpointTensors, KeyLoad, progress_bar
from cogvlm.errors import CheckpointError
from cogvlm.nn.quantized import QuantConfig, quantize_for
from cogvlm.parallel.groups import NO_PARALLEL
from cogvlm.utils.atomic import atomic_directory


def _output_bytes(expected: Mapping[str, torch.Tensor], step: KeyLoad) -> int:
    keys = [step.key, step.key + SCALE_SUFFIX] if step.quantize else [step.key]
    return sum(expected[key].numel() * expected[key].element_size() for key in keys)


def _shard_steps(plan: LoadPlan, max_shard_bytes: int) -> list[list[KeyLoad]]:
    shards: list[list[KeyLoad]] = [[]]
    size, expected = 0, plan.model.state_dict(keep_vars=True)
    for step in plan.keys:
        nbytes = _output_bytes(expected, step)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(step)
        size += nbytes
    return shards


def _outputs(plan: LoadPlan, step: KeyLoad, tensors: CheckpointTensors) -> dict[str, torch.Tensor]:
    """The SAT-keyed tensors one plan step writes: a copy in the model dtype, or integers and scales."""
    piece = tensors.piece(step.key, step.rule, NO_PARALLEL)
    if step.quantize:
        layer = plan.model.get_submodule(step.key.rpartition(".")[0])
        stored, scale = quantize_for(layer, piece.to(step.dtype))
        return {step.key: stored.contiguous(), step.key + SCALE_SUFFIX: scale.contiguous()}
    owned = torch.empty(piece.shape, dtype=step.dtype)
    owned.copy_(piece)  # never a view of the mapped source: safetensors refuses shared storage
    return {step.key: owned}


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)]


def _write_shards(
    staging: Path, plan: LoadPlan, tensors: CheckpointTensors, shards: Sequence[Sequence[KeyLoad]], bar
) -> tuple[dict[str, str], int, set[str], int]:
    weight_map, total, dtypes, count = {}, 0, set(), 0
    steps: Iterator[KeyLoad] = iter(bar(plan.keys))
    num_layers = plan.model.config.llm.num_layers
    for name, shard in zip(_shard_names(len(shards)), shards, strict=True):
        sat_tensors: dict[str, torch.Tensor] = {}
        for _ in shard:
            sat_tensors.update(_outputs(plan, next(steps), tensors))
        count += len(sat_tensors)
        hf_tensors = hf_format.sat_state_dict_to_hf(sat_tensors, num_layers)
        save_file(hf_tensors, staging / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(hf_tensors, name))
        total += sum(t.numel() * t.element_size() for t in hf_tensors.values())
        dtypes |= {str(t.dtype).removeprefix("torch.") for t in hf_tensors.values()}
        del sat_tensors, hf_tensors
    next(steps, None)  # let the progress bar close
    return weight_map, total, dtypes, count


def write_hf_streamed(
    source: Path,
    output: Path,
    quant: QuantConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 << 30,
    extra_fields: Mapping | None = None,
    extra_files: Mapping[str, Path] | None = None,
    progress: bool = True,
) -> tuple[int, tuple[str, ...]]:
    """Write the HF form of the checkpoint at `source` atomically, weights in `dtype` (None: the
    checkpoint's), quantized by `quant` (a quantized source stays so); return the number of (SAT) tensors
    written and their dtypes."""
    info, tensors = open_checkpoint(source, NO_PARALLEL)
    if quant is not None and info.quantization is not None:
        raise CheckpointError(
            f"{source}: already quantized ({info.quantization.describe()}); quantize the full-precision "
            "checkpoint instead"
        )
    quant = quant or info.quantization
    try:
        plan = plan_model_load(info.config, tensors, dtype=dtype, quant=quant)
    except ValueError as error:  # a layer whose width the group size does not divide
        raise CheckpointError(f"{source}: cannot quantize with {quant.describe()}: {error}") from None
    shards = _shard_steps(plan, max_shard_bytes)
    model_dtype = plan.model.transformer.word_embeddings.weight.dtype
    bar = progress_bar(f"converting {Path(source).name}", enabled=progress)
    with atomic_directory(Path(output), extra_files) as staging:
        weight_map, total, dtypes, count = _write_shards(staging, plan, tensors, shards, bar)
        raw = {**hf_format.config_to_hf(info.config, model_dtype), **(extra_fields or {})}
        raw.update(quantization_field(quant) if quant is not None else {})
        (staging / hf_format.CONFIG_FILE).write_text(json.dumps(raw, indent=2))
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / hf_format.SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return count, tuple(sorted(dtypes))
