"""Training checkpoints in SAT's layout, written atomically, and loading of fine-tuned (LoRA) checkpoints.

A run's save directory is itself a SAT checkpoint: `model_config.json` (with the LoRA fields),
`latest`, and `<iteration>/mp_rank_XX_model_states.pt` (weights under `module`) beside DeepSpeed's
optimizer shards and one `rng_state_rank_XXXXX.pt` per rank. Each `<iteration>/` folder is staged
under a temporary name and renamed into place once every rank has written; `latest` is rewritten last,
so a kill at any moment leaves the previous checkpoint usable. A QLoRA run's checkpoints hold the adapter
alone, and its `model_config.json` names the base it is loaded onto (see `train/qlora.py`).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from cogvlm.checkpoints import sat_format
from cogvlm.checkpoints.loading import (
    CheckpointInfo,
    load_model,
    load_weights,
    reset_computed_buffers,
)
from cogvlm.checkpoints.lora_format import lora_config_from_sat, lora_config_to_sat
from cogvlm.errors import CheckpointError
from cogvlm.mixins.lora import LoraConfig, add_lora, is_lora_parameter
from cogvlm.models.builders import build_model
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict, unshard_state_dicts
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE
from cogvlm.train.distributed import barrier, is_rank_zero
from cogvlm.train.qlora import (
    QLORA_FIELD,
    QLoraBase,
    check_same_base,
    load_parameters,
    resolve_base,
    trainable_names,
)
from cogvlm.utils.atomic import atomic_directory, atomic_file

RUN_CONFIG_FILE = "finetune_config.json"


def config_with_lora(
    config: CogVLMConfig, lora: LoraConfig | None, version: str | None = None, qlora: QLoraBase | None = None
) -> CogVLMConfig:
    """The model config to record in `model_config.json`: LoRA fields (and a QLoRA run's base) in its
    extra keys, and the prompt version the model was trained with."""
    extra = {
        k: v
        for k, v in config.extra.items()
        if k not in ("use_lora", "lora_rank", "layer_range", "lora_args", QLORA_FIELD)
    }
    if lora is not None:
        extra.update(lora_config_to_sat(lora))
    if qlora is not None:
        extra[QLORA_FIELD] = qlora.to_json()
    return replace(config, extra=extra, text_processor_version=version or config.text_processor_version)


def latest_iteration(save_dir: str | Path) -> int | None:
    """The iteration `latest` names in `save_dir`, or None when there is no checkpoint yet."""
    save_dir = Path(save_dir)
    if not (save_dir / sat_format.LATEST_FILE).is_file():
        return None
    text = sat_format.read_latest(save_dir)
    if not text.isdigit():
        raise ValueError(f"{save_dir}/latest names {text!r}, not a training iteration to resume from")
    return int(text)


def saved_layout(folder: Path) -> tuple[int, int]:
    """(tensor-parallel size, world size) an iteration folder was saved with, from its files."""
    tp_size = len(list(folder.glob("mp_rank_*_model_states.pt")))
    world_size = len(list(folder.glob("rng_state_rank_*.pt")))
    return tp_size, world_size


def check_resume_layout(save_dir: str | Path, iteration: int, tp_size: int, world_size: int) -> None:
    """Refuse, before anything is loaded, to resume `<save_dir>/<iteration>` in another parallel layout
    (DeepSpeed would fail on an assertion in every rank): name both layouts and the ways forward."""
    folder = Path(save_dir) / str(iteration)
    saved_tp, saved_world = saved_layout(folder)
    if saved_tp == 0:
        raise CheckpointError(f"{folder}: no mp_rank_XX_model_states.pt files; the checkpoint is incomplete")
    if (saved_tp, saved_world) == (tp_size, world_size):
        return
    saved = f"tensor-parallel size {saved_tp} x data-parallel {max(1, saved_world // saved_tp)}"
    now = f"--tp_size {tp_size} x data-parallel {world_size // tp_size}"
    raise CheckpointError(
        f"{folder} was saved with {saved} ({saved_world} processes); this run has {now} ({world_size} "
        f"processes), and DeepSpeed's optimizer state cannot be re-sharded. Resume with --tp_size "
        f"{saved_tp} on {saved_world} processes, or start a new run (--no_resume, or a new --save) from its "
        f"weights converted to the new layout: `cogvlm merge-lora --from_pretrained {save_dir} --save "
        f"MERGED` for a LoRA run (one rank), `cogvlm merge {save_dir} MERGED` or `cogvlm split {save_dir} "
        f"SPLIT --mp {tp_size}` for full fine-tuning, then --from_pretrained MERGED/SPLIT"
    )


def rng_state() -> dict:
    """Every random generator the run uses (saved so a resumed run draws the same numbers)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_file(folder: Path, rank: int) -> Path:
    """Where global rank `rank` keeps its generators' state in an iteration folder.

    Every rank has its own: ranks pad their batches to different lengths, so dropout draws different
    amounts of random numbers on each (DeepSpeed's client state is written by one rank only).
    """
    return folder / f"rng_state_rank_{rank:05d}.pt"


def load_rng_state(save_dir: str | Path, iteration: int) -> None:
    """Restore this rank's generators from `<save_dir>/<iteration>`."""
    path = rng_state_file(Path(save_dir) / str(iteration), dist.get_rank() if dist.is_initialized() else 0)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; resume with the world size the run was saved with")
    restore_rng_state(torch.load(path, weights_only=True))


def _make_shareable(path: Path) -> None:
    # Temporary files and folders are created private (0600 / 0700); a finished checkpoint is not.
    path.chmod(0o755 if path.is_dir() else 0o644)


def _write_metadata(save_dir: Path, model_config: CogVLMConfig, tokenizer_file: Path, run: dict) -> None:
    with atomic_file(save_dir / sat_format.MODEL_CONFIG_FILE, "w") as handle:
        json.dump(sat_format.config_to_sat(model_config, run["tp_size"]), handle, indent=4)
    with atomic_file(save_dir / RUN_CONFIG_FILE, "w") as handle:
        json.dump(run, handle, indent=2)
    if not (save_dir / TOKENIZER_FILE).is_file():
        with atomic_file(save_dir / TOKENIZER_FILE) as handle:
            handle.write(tokenizer_file.read_bytes())
    for name in (sat_format.MODEL_CONFIG_FILE, RUN_CONFIG_FILE, TOKENIZER_FILE):
        _make_shareable(save_dir / name)


def save_training_checkpoint(
    engine,
    save_dir: str | Path,
    iteration: int,
    client_state: dict,
    model_config: CogVLMConfig,
    tokenizer_file: Path,
    run: dict,
    trainable_only: bool = False,
) -> Path:
    """Save engine, optimizer, scheduler, `client_state` and every rank's random generators as
    `<save_dir>/<iteration>` (every rank calls). `trainable_only`: leave frozen parameters out."""
    save_dir = Path(save_dir)
    target = save_dir / str(iteration)
    save = dict(client_state=client_state, save_latest=False, exclude_frozen_parameters=trainable_only)
    if is_rank_zero():
        with atomic_directory(target) as staging:
            dist.broadcast_object_list([str(staging)], src=0)
            engine.save_checkpoint(str(staging.parent), tag=staging.name, **save)
            torch.save(rng_state(), rng_state_file(staging, 0))
            barrier()
            _make_shareable(staging)
        _write_metadata(save_dir, model_config, tokenizer_file, run)
        with atomic_file(save_dir / sat_format.LATEST_FILE, "w") as handle:
            handle.write(str(iteration))
        _make_shareable(save_dir / sat_format.LATEST_FILE)
    else:
        received = [None]
        dist.broadcast_object_list(received, src=0)
        staging = Path(received[0])
        engine.save_checkpoint(str(staging.parent), tag=staging.name, **save)
        torch.save(rng_state(), rng_state_file(staging, dist.get_rank()))
        barrier()
    barrier()
    return target


def load_training_checkpoint(
    engine, save_dir: str | Path, iteration: int, trainable_only: bool = False
) -> dict:
    """Restore engine, optimizer and scheduler from `<save_dir>/<iteration>`; return the client state.

    `trainable_only`: the checkpoint holds the trainable weights alone (a QLoRA run); they are loaded
    strictly and the rest of the model is left as built.
    """
    source = f"{save_dir}/{iteration}"

    def load_trainable(src, dst) -> None:
        load_parameters(dst, src, trainable_names(dst), source)

    path, client_state = engine.load_checkpoint(
        str(save_dir),
        tag=str(iteration),
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        custom_load_fn=load_trainable if trainable_only else None,
    )
    if path is None:
        raise FileNotFoundError(f"{save_dir}/{iteration}: DeepSpeed found no checkpoint to resume from")
    return client_state


def remove_stale_staging(save_dir: str | Path) -> list[Path]:
    """Delete half-written checkpoint folders a killed run left behind; return them."""
    save_dir = Path(save_dir)
    stale = sorted(p for p in save_dir.glob(".*.tmp-*") if p.is_dir()) if save_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _read_shards(checkpoint: sat_format.SatCheckpoint, tp: TensorParallel) -> list[dict]:
    if checkpoint.model_parallel_size == tp.size:
        return [sat_format.load_sat_weights(checkpoint.weight_files[tp.rank])]
    return [sat_format.load_sat_weights(path) for path in checkpoint.weight_files]


def _reshard(model: VisionLanguageModel, shards: list[dict], tp: TensorParallel) -> dict:
    rules = collect_shard_rules(model)
    whole = unshard_state_dicts(shards, rules) if len(shards) > 1 else shards[0]
    return shard_state_dict(whole, rules, tp.rank, tp.size) if tp.is_parallel else whole


def _no_iterations(path: Path, iteration: int | None) -> None:
    if iteration is not None:
        raise ValueError(
            f"{path}: choosing an iteration ({iteration}) needs a LoRA fine-tuning run; "
            "other checkpoints load from the iteration `latest` names"
        )


def load_finetuned_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tp: TensorParallel = NO_PARALLEL,
    base: str | None = None,
    quantize_base: bool = True,
    iteration: int | None = None,
) -> tuple[VisionLanguageModel, CheckpointInfo, LoraConfig | None]:
    """Load a SAT checkpoint; one whose config records a LoRA adapter is built with that adapter first.

    Also reads checkpoints written by the reference's fine-tuning (`use_lora` / `lora_rank` fields), and
    QLoRA runs: their base (recorded, or `base`) is loaded and quantized again (`quantize_base=False`:
    left in floating point), then the adapter is added and loaded. `iteration` picks a saved iteration of
    a fine-tuning run (default: `latest`).
    """
    path = Path(path)
    if not (path / sat_format.MODEL_CONFIG_FILE).is_file():
        _no_iterations(path, iteration)
        model, info = load_model(path, dtype=dtype, device=device, tp=tp)
        return model, info, None
    checkpoint = sat_format.open_sat_checkpoint(path, iteration)
    record = QLoraBase.from_model_config(checkpoint.raw_config, str(path / sat_format.MODEL_CONFIG_FILE))
    if record is not None:
        return _load_qlora_run(path, checkpoint, record, dtype, device, tp, base, quantize_base)
    if lora_config_from_sat(checkpoint.raw_config) is None:
        _no_iterations(path, iteration)
        model, info = load_model(path, dtype=dtype, device=device, tp=tp)
        return model, info, None
    shards = _read_shards(checkpoint, tp)
    config = sat_format.config_from_sat(
        checkpoint.raw_config,
        source=str(path / sat_format.MODEL_CONFIG_FILE),
        state_shapes={key: tuple(value.shape) for key, value in shards[0].items()},
    )
    lora = lora_config_from_sat(config.extra, config.has_cross_vision)
    model = build_model(config, tp, device="meta")
    add_lora(model, lora)
    state_dict = shards[0] if checkpoint.model_parallel_size == tp.size else _reshard(model, shards, tp)
    first = next(t for t in state_dict.values() if t.is_floating_point())
    model.to(dtype or first.dtype)
    model.to_empty(device=device)
    reset_computed_buffers(model)
    load_weights(model, state_dict, str(path), tp.size)
    info = CheckpointInfo(path, "sat", config, checkpoint.model_parallel_size)
    return model.eval(), info, lora


def _load_qlora_run(
    path: Path,
    checkpoint: sat_format.SatCheckpoint,
    record: QLoraBase,
    dtype: torch.dtype | None,
    device: torch.device | str,
    tp: TensorParallel,
    base: str | None,
    quantize_base: bool,
) -> tuple[VisionLanguageModel, CheckpointInfo, LoraConfig]:
    # The base loads in float32, as training loaded it, so quantizing gives the trained integers and
    # scales exactly; the requested dtype is applied at the end.
    source = str(path / sat_format.MODEL_CONFIG_FILE)
    base_path = resolve_base(record, base, source)
    quant = record.quantization if quantize_base else None
    model, base_info = load_model(base_path, dtype=torch.float32, device=device, tp=tp, quant=quant)
    if quantize_base:
        check_same_base(record, model, tp.rank, tp.size, source)
    lora = lora_config_from_sat(checkpoint.raw_config, base_info.config.has_cross_vision)
    add_lora(model, lora)
    shards = _read_shards(checkpoint, tp)
    adapter = shards[0] if checkpoint.model_parallel_size == tp.size else _reshard(model, shards, tp)
    adapter_keys = {name for name, _ in model.named_parameters() if is_lora_parameter(name)}
    load_parameters(model, adapter, adapter_keys, str(path))
    if dtype is not None:
        model.to(dtype)
    version = checkpoint.raw_config.get("text_processor_version")
    config = config_with_lora(base_info.config, lora, version, record)
    return model.eval(), CheckpointInfo(path, "sat", config, checkpoint.model_parallel_size), lora
