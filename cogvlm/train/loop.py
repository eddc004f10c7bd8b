"""`cogvlm finetune`: the training loop on a DeepSpeed engine (data x tensor parallel, ZeRO 0-2)."""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.checkpoints.sat_format import MODEL_CONFIG_FILE
from cogvlm.checkpoints.tokenizer_fetch import checkpoint_tokenizer
from cogvlm.errors import ConfigError, DatasetError
from cogvlm.mixins.lora import add_lora
from cogvlm.models import mixin_names
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import PatchShuffle
from cogvlm.parallel.deepspeed_mpu import (
    ParallelLayout,
    build_parallel_layout,
    deepspeed_mpu,
    mark_tensor_parallel_parameters,
)
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.train.checkpointing import (
    check_resume_layout,
    config_with_lora,
    latest_iteration,
    load_rng_state,
    load_training_checkpoint,
    remove_stale_staging,
    save_training_checkpoint,
)
from cogvlm.train.config import DataConfig, FinetuneConfig, deepspeed_config, resolve_version
from cogvlm.train.data import Sample, VisionTextDataset, collate, log_skipped, read_samples
from cogvlm.train.distributed import init_distributed, is_rank_zero, resolve_device
from cogvlm.train.evaluation import EvaluationResult, batch_context, evaluate, model_device_dtype
from cogvlm.train.loss import answer_loss
from cogvlm.train.metrics import MetricsLogger
from cogvlm.train.order import DataOrder
from cogvlm.train.plot import write_training_plot
from cogvlm.train.qlora import (
    QLoraBase,
    check_resumable,
    gather_rank_fingerprints,
    save_only_trainable_weights,
)
from cogvlm.train.schedule import LearningRateSchedule
from cogvlm.train.trainable import TrainableReport, apply_trainable, parameter_groups, trainable_filter
from cogvlm.train.validation import load_checked_samples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    """What a run did: the last iteration, this process's per-step losses, the trainable report, the
    final evaluation on the validation split and on the test split (when given), and the plot."""

    iteration: int
    losses: dict[int, float]
    report: TrainableReport
    final_evaluation: EvaluationResult | None
    save_dir: Path
    test_evaluation: EvaluationResult | None = None
    plot: Path | None = None  # the loss / accuracy curves (rank 0)


@dataclass
class _Run:
    """The pieces of a run that the loop's steps share."""

    config: FinetuneConfig
    layout: ParallelLayout
    engine: object
    tokenizer: LlamaTokenizer
    train_set: VisionTextDataset
    valid_set: VisionTextDataset | None
    order: DataOrder
    tokenizer_file: Path
    qlora: QLoraBase | None = None
    metrics: MetricsLogger | None = None
    test_set: VisionTextDataset | None = None


def check_device_support(config: FinetuneConfig, device: torch.device) -> None:
    """Refuse what DeepSpeed cannot do on this device, before any work starts."""
    if device.type == "cpu" and config.precision == "fp16":
        raise ConfigError("fp16 training is not supported by DeepSpeed on CPU; use --bf16 or --fp32")


def _quantize_base(
    model: VisionLanguageModel, config: FinetuneConfig, path: Path, layout: ParallelLayout
) -> QLoraBase:
    """Describe the base, quantized as it loaded (QLoRA), for the run's checkpoints."""
    quantization = config.quantization
    return QLoraBase(
        base=config.from_pretrained,
        base_path=str(path.resolve()),
        quantization=quantization,
        fingerprints=gather_rank_fingerprints(model, layout.tp.size),
    )


def _load_base_model(config: FinetuneConfig, device: torch.device, layout: ParallelLayout):
    # Weights load in float32: DeepSpeed keeps float32 master copies and casts the module for bf16/fp16.
    # QLoRA: the frozen base is quantized tensor by tensor as it streams in, never whole in float32.
    path = resolve_checkpoint(config.from_pretrained)
    model, info = load_model(
        path, dtype=torch.float32, device=device, tp=layout.tp, quant=config.quantization, progress=True
    )
    qlora = _quantize_base(model, config, path, layout) if config.quantization is not None else None
    if config.lora is not None:
        add_lora(model, config.lora)
    report = apply_trainable(model, trainable_filter(config.trainable, config.lora is not None))
    model.checkpoint_activations = config.checkpoint_activations
    if mixin_names.IMAGE in model.mixins:
        tower = model.mixins[mixin_names.IMAGE].vit_model
        tower.checkpoint_activations = config.vision_checkpoint_activations
    mark_tensor_parallel_parameters(model, layout.tp)
    return model.train(), info, report, qlora


def _checked_samples(path: str, data: DataConfig, what: str) -> list[Sample]:
    """Rank 0 checks every record and image (with progress) before any step; every rank gets its verdict."""
    verdict, samples = [None], None
    if is_rank_zero():
        try:
            samples = load_checked_samples(
                path,
                data.prompt,
                allow_outside=data.allow_outside_data,
                max_pixels=data.max_image_pixels,
                what=what,
            )
        except (ValueError, FileNotFoundError) as error:  # DatasetError is a ValueError
            verdict = [str(error)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise DatasetError(verdict[0])
    return samples if samples is not None else read_samples(path, data.prompt)


def _split_paths(data: DataConfig) -> dict[str, str | None]:
    return {"training": data.train_path, "validation": data.valid_path, "test": data.test_path}


def _checked_splits(data: DataConfig) -> dict[str, list[Sample]]:
    """Every split's samples, each checked whole before the model loads (a bad record costs no load)."""
    paths = _split_paths(data)
    return {what: _checked_samples(path, data, what) for what, path in paths.items() if path is not None}


def _dataset(samples: list[Sample] | None, config: FinetuneConfig, tokenizer, model_config, what: str):
    if samples is None:
        return None
    data = config.data
    dataset = VisionTextDataset(samples, tokenizer, model_config, data.version, data.max_length)
    if is_rank_zero():
        log_skipped(dataset.skipped, f"{what} data {_split_paths(data)[what]}")
    return dataset


def _engine(model: VisionLanguageModel, config: FinetuneConfig, layout: ParallelLayout):
    import deepspeed

    groups = parameter_groups(model, config.optimizer, config.trainable)
    optimizer_config = config.optimizer
    optimizer = torch.optim.AdamW(
        groups, lr=optimizer_config.lr, betas=optimizer_config.betas, eps=optimizer_config.eps
    )
    schedule = LearningRateSchedule(
        total_iters=config.train_iters,
        warmup_iters=config.warmup_iters,
        decay_style=config.schedule.decay_style,
        min_ratio=config.schedule.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, layout.data_size),
        mpu=deepspeed_mpu(layout),
        dist_init_required=False,
    )
    if config.quantization is not None:
        save_only_trainable_weights(engine)
    return engine


def _data_signature(run: _Run) -> dict:
    return {
        "seed": run.config.seed,
        "micro_batch_size": run.config.micro_batch_size,
        "gradient_accumulation_steps": run.config.gradient_accumulation_steps,
        "data_parallel_size": run.layout.data_size,
        "num_samples": len(run.train_set),
    }


def _resume(run: _Run) -> int:
    """Restore the latest checkpoint of the save directory, if any; return the iteration to start at."""
    iteration = latest_iteration(run.config.save_dir) if run.config.resume else None
    if iteration is None:
        return 0
    config_file = Path(run.config.save_dir) / MODEL_CONFIG_FILE
    saved_qlora = QLoraBase.from_model_config(json.loads(config_file.read_text()), str(config_file))
    check_resumable(saved_qlora, run.qlora, run.config.save_dir)
    client = load_training_checkpoint(
        run.engine, run.config.save_dir, iteration, trainable_only=run.qlora is not None
    )
    saved, current = client.get("data", {}), _data_signature(run)
    changed = {key: (saved.get(key), value) for key, value in current.items() if saved.get(key) != value}
    if changed:
        raise ConfigError(
            f"{run.config.save_dir}/{iteration}: cannot resume with a different data order "
            f"(saved, now): {changed}; use a new --save directory or --no-resume"
        )
    load_rng_state(run.config.save_dir, iteration)
    if is_rank_zero():
        logger.info("resumed from %s/%d", run.config.save_dir, iteration)
    return int(client["iteration"])


def _save(run: _Run, iteration: int, model_config) -> None:
    client_state = {"iteration": iteration, "data": _data_signature(run)}
    run_record = {
        **run.config.to_json(),
        "tp_size": run.layout.tp.size,
        "data_parallel_size": run.layout.data_size,
    }
    save_training_checkpoint(
        run.engine,
        run.config.save_dir,
        iteration,
        client_state,
        model_config,
        run.tokenizer_file,
        run_record,
        trainable_only=run.qlora is not None,
    )


def _batches(run: _Run, start_micro_step: int):
    loader = torch.utils.data.DataLoader(
        run.train_set,
        batch_sampler=run.order.batches(start_micro_step),
        collate_fn=functools.partial(collate, pad_id=run.tokenizer.pad_id),
        num_workers=run.config.data.num_workers,
        # Its own generator: creating the iterator must not draw from the global one (dropout's), or a
        # resumed run would draw different masks from the uninterrupted one.
        generator=torch.Generator().manual_seed(run.config.seed),
    )
    return iter(loader)


def _patch_shuffle(run: _Run, step: int) -> PatchShuffle | None:
    """This step's patch-order augmentation (`shuffle_image_tokens`): its draws are a function of the seed,
    the step and the data rank, so that a resumed run draws the orders the uninterrupted one would have."""
    if not run.config.shuffle_image_tokens:
        return None
    seed = (run.config.seed * 1_000_003 + step) * 1_009 + run.layout.data_rank
    within_rows = run.config.shuffle_scope == "within_rows"
    return PatchShuffle(torch.Generator().manual_seed(seed), within_rows=within_rows)


def _train_step(run: _Run, batches, step: int) -> dict[str, float]:
    """One optimizer step (all micro-steps); returns the loss averaged over micro-steps and DP ranks."""
    engine = run.engine
    device, dtype = model_device_dtype(engine.module)
    started = time.perf_counter()
    lr = engine.get_lr()[0]  # the rate this step uses (the scheduler advances inside engine.step)
    totals = torch.zeros(2, dtype=torch.float64)  # [loss sum over micro-steps, input tokens]
    shuffle = _patch_shuffle(run, step)
    for _ in range(run.config.gradient_accumulation_steps):
        batch = next(batches).to(device, dtype)
        ctx = replace(batch_context(batch), image_token_shuffle=shuffle)
        loss = answer_loss(engine(batch.input_ids, ctx).logits, batch.labels)
        engine.backward(loss)
        engine.step()
        totals += torch.tensor([float(loss.detach()), float(batch.num_tokens)])
    if run.layout.data_size > 1:
        dist.all_reduce(totals, group=run.layout.data_group)
    elapsed = time.perf_counter() - started
    samples = run.config.micro_batch_size * run.config.gradient_accumulation_steps * run.layout.data_size
    return {
        "loss": float(totals[0]) / (run.config.gradient_accumulation_steps * run.layout.data_size),
        "lr": lr,
        "samples_per_s": samples / elapsed,
        "tokens_per_s": float(totals[1]) / elapsed,
    }


def _evaluate(run: _Run, dataset: VisionTextDataset | None = None) -> EvaluationResult | None:
    """Score `eval_iters` batches of `eval_batch_size` of the validation set (or `dataset`); the whole
    set with `strict_eval` (SAT's --strict-eval)."""
    dataset = run.valid_set if dataset is None else dataset
    if dataset is None:
        return None
    batch_size = run.config.eval_batch_size or run.config.micro_batch_size
    count = len(dataset)
    if not run.config.strict_eval:
        count = min(count, max(1, run.config.eval_iters) * batch_size)
    return evaluate(
        run.engine.module,
        run.tokenizer,
        dataset,
        version=run.config.data.version,
        batch_size=batch_size,
        max_new_tokens=run.config.max_new_tokens,
        indices=range(count),
        group=run.layout.data_group if run.layout.data_size > 1 else None,
    )


def _setup(config: FinetuneConfig) -> tuple[_Run, TrainableReport, object]:
    device = resolve_device(config.device)
    check_device_support(config, device)
    init_distributed(device, config.distributed_backend)
    layout = build_parallel_layout(config.tp_size)
    resume_from = latest_iteration(config.save_dir) if config.resume else None
    if resume_from is not None:
        check_resume_layout(config.save_dir, resume_from, layout.tp.size, dist.get_world_size())
    splits = _checked_splits(config.data)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    tokenizer = checkpoint_tokenizer(config.from_pretrained, config.local_tokenizer)  # before the weights
    model, info, report, qlora = _load_base_model(config, device, layout)
    config = resolve_version(config, info.config.text_processor_version)
    if is_rank_zero():
        logger.info("%s", report.describe())
        if qlora is not None:
            logger.info(
                "QLoRA: frozen base %s quantized (%s); checkpoints hold the adapter only",
                qlora.base_path,
                qlora.quantization.describe(),
            )
        remove_stale_staging(config.save_dir)
    train_set, valid_set, test_set = (
        _dataset(splits.get(what), config, tokenizer, info.config, what)
        for what in ("training", "validation", "test")
    )
    order = DataOrder(
        len(train_set), config.micro_batch_size, layout.data_rank, layout.data_size, config.seed
    )
    engine = _engine(model, config, layout)
    run = _Run(config, layout, engine, tokenizer, train_set, valid_set, order, Path(tokenizer.source), qlora)
    run.test_set = test_set
    return run, report, config_with_lora(info.config, config.lora, config.data.version, qlora)


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train as `config` says, resuming from the save directory's latest checkpoint when there is one."""
    run, report, model_config = _setup(config)
    config = run.config
    start = _resume(run)
    run.metrics = MetricsLogger(
        Path(config.save_dir),
        enabled=is_rank_zero(),
        total_steps=config.train_iters,
        start_step=start,
        progress_bar=config.progress_bar,
    )
    batches = _batches(run, start * config.gradient_accumulation_steps)
    losses: dict[int, float] = {}
    saved_at = start if start else None
    try:
        for step in range(start + 1, config.train_iters + 1):
            scalars = _train_step(run, batches, step)
            losses[step] = scalars["loss"]
            if config.log_interval and (step % config.log_interval == 0 or step == config.train_iters):
                run.metrics.log(step, scalars)
            run.metrics.advance()
            if config.save_interval and step % config.save_interval == 0:
                _save(run, step, model_config)
                saved_at = step
            if config.eval_interval and step % config.eval_interval == 0 and run.valid_set is not None:
                run.metrics.log(step, _evaluate(run).to_json(), prefix="valid")
        if saved_at != config.train_iters:
            _save(run, config.train_iters, model_config)
        final = _evaluate(run)
        if final is not None:
            run.metrics.log(config.train_iters, final.to_json(), prefix="final")
        test = None if run.test_set is None else _evaluate(run, run.test_set)
        if test is not None:
            run.metrics.log(config.train_iters, test.to_json(), prefix="test")
    finally:
        run.metrics.close()
    plot = write_training_plot(Path(config.save_dir)) if is_rank_zero() else None
    return FinetuneResult(config.train_iters, losses, report, final, Path(config.save_dir), test, plot)
