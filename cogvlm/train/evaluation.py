"""Evaluation on a split: teacher-forced answer loss, and exact-match accuracy of greedy answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cogvlm.checkpoints.download import DownloadConfig
from cogvlm.inference.generate import generate
from cogvlm.inference.settings import GenerationDefaults, GenerationSettings, build_generation_config
from cogvlm.models.builders import model_family
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import ForwardContext
from cogvlm.text_processors.inference import build_turn_inputs
from cogvlm.text_processors.prompts import PromptFormat
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.train.data import Batch, TokenizedSample, VisionTextDataset, collate
from cogvlm.train.loss import answer_token_losses
from cogvlm.utils.atomic import atomic_file
from cogvlm.utils.progress import SilentProgress, progress


@dataclass(frozen=True)
class Prediction:
    """One scored sample: its position in the split, image, question, the model's answer, the expected
    one, and whether they match exactly."""

    id: int
    image: str
    query: str
    prediction: str
    reference: str
    correct: bool

    def to_json(self) -> dict:
        """A JSON-friendly dict (one line of the predictions file)."""
        return asdict(self)


@dataclass(frozen=True)
class EvaluationResult:
    """Accuracy (exact, and ignoring case), mean answer-token loss, and how many samples were scored."""

    samples: int
    accuracy: float
    accuracy_ignore_case: float
    loss: float
    target_tokens: int

    def to_json(self) -> dict:
        """A JSON-friendly dict."""
        return asdict(self)


def batch_context(batch: Batch) -> ForwardContext:
    """The forward context of a training or evaluation batch (causal attention, padding at the end)."""
    return ForwardContext(
        position_ids=batch.position_ids,
        vision_token_mask=batch.vision_token_mask,
        image_embed_mask=batch.image_embed_mask,
        pixel_values=batch.pixel_values,
        cross_pixel_values=batch.cross_pixel_values,
    )


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's weights live and their dtype."""
    weight = model.transformer.word_embeddings.weight
    return weight.device, weight.dtype


def greedy_answer(
    model: VisionLanguageModel,
    tokenizer: LlamaTokenizer,
    item: TokenizedSample,
    example: dict,
    prompt_format: PromptFormat,
    max_new_tokens: int,
) -> str:
    """The model's greedy answer to a sample's prompt, decoded without special tokens."""
    device, dtype = model_device_dtype(model)
    sample = item.sample
    text = build_turn_inputs(
        tokenizer, prompt_format, sample.question, sample.history, model.config.image_length
    )
    defaults = GenerationDefaults(model.config.llm.max_sequence_length, (tokenizer.eos_id,))
    config = build_generation_config(defaults, GenerationSettings(max_new_tokens=max_new_tokens, top_k=1))
    cross = example.get("cross_pixel_values")
    output = generate(
        model,
        text,
        config,
        pixel_values=example["pixel_values"][None].to(device, dtype),
        cross_pixel_values=None if cross is None else cross[None].to(device, dtype),
    )
    return tokenizer.decode(output.token_ids, skip_special_tokens=True).strip()


@dataclass
class _Totals:
    samples: int = 0
    exact: int = 0
    exact_ignore_case: int = 0
    loss_sum: float = 0.0
    target_tokens: int = 0

    def as_tensor(self) -> torch.Tensor:
        values = [self.samples, self.exact, self.exact_ignore_case, self.loss_sum, self.target_tokens]
        return torch.tensor(values, dtype=torch.float64)


def _score_batch(
    model, tokenizer, dataset, indices, prompt_format, max_new_tokens, totals: _Totals, on_prediction
) -> None:
    device, dtype = model_device_dtype(model)
    examples = [dataset[index] for index in indices]
    batch = collate(examples, tokenizer.pad_id).to(device, dtype)
    logits = model(batch.input_ids, batch_context(batch)).logits
    sums, counts = answer_token_losses(logits, batch.labels)
    totals.loss_sum += float(sums.sum())
    totals.target_tokens += int(counts.sum())
    for index, example in zip(indices, examples, strict=True):
        item = example["item"]
        predicted = greedy_answer(model, tokenizer, item, example, prompt_format, max_new_tokens)
        expected = item.sample.answer.strip()
        totals.samples += 1
        totals.exact += predicted == expected
        totals.exact_ignore_case += predicted.lower() == expected.lower()
        if on_prediction is not None:
            sample = item.sample
            on_prediction(
                Prediction(
                    index, str(sample.image), sample.question, predicted, expected, predicted == expected
                )
            )


@torch.no_grad()
def evaluate(
    model: VisionLanguageModel,
    tokenizer: LlamaTokenizer,
    dataset: VisionTextDataset,
    *,
    version: str,
    batch_size: int = 4,
    max_new_tokens: int = 32,
    indices: Sequence[int] | None = None,
    group=None,
    prompt_format: PromptFormat | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
    show_progress: bool = False,
) -> EvaluationResult:
    """Score `indices` (default: the whole dataset); with `group`, each rank scores its share and the
    totals are summed over the group (every member must pass the same indices).

    The loss is over the dataset's SAT-format training inputs; the greedy answers are asked in
    `prompt_format` (default: `version` in the SAT style). `on_prediction` sees every sample this rank
    scores; `show_progress` draws a bar on a terminal.
    """
    prompt_format = prompt_format or PromptFormat(version)
    was_training = model.training
    model.eval()
    chosen = list(range(len(dataset)) if indices is None else indices)
    rank, size = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    mine = chosen[rank::size]
    totals = _Totals()
    with progress(
        total=len(mine), desc="evaluate", unit="sample", enabled=None if show_progress else False
    ) as bar:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            _score_batch(
                model, tokenizer, dataset, chunk, prompt_format, max_new_tokens, totals, on_prediction
            )
            bar.update(len(chunk))
    summed = totals.as_tensor()
    if group is not None:
        dist.all_reduce(summed, group=group)
    model.train(was_training)
    samples, exact, exact_ignore_case, loss_sum, tokens = summed.tolist()
    return EvaluationResult(
        samples=int(samples),
        accuracy=exact / max(1.0, samples),
        accuracy_ignore_case=exact_ignore_case / max(1.0, samples),
        loss=loss_sum / max(1.0, tokens),
        target_tokens=int(tokens),
    )


@dataclass(frozen=True)
class EvaluateConfig:
    """`cogvlm evaluate`: a checkpoint (plain or LoRA), a data split and how to score it."""

    from_pretrained: str
    data_path: str
    local_tokenizer: str | None = None
    version: str | None = None
    prompt_style: str = "sat"  # greedy answers asked as the SAT code ("sat") or the HF port ("hf") writes it
    prompt: str = "CAPTCHA:"
    max_length: int = 1288
    max_new_tokens: int = 32
    batch_size: int = 4
    limit: int | None = None
    dtype: torch.dtype | None = None
    device: str | None = None  # None: this rank's GPU if there is one, else the CPU
    download: DownloadConfig | None = None  # how a catalog name or HF repo id is fetched
    iteration: int | None = None  # a fine-tuning run's saved iteration (None: `latest`)
    tp_size: int | None = (
        None  # under a launcher: tensor-parallel size (None: all ranks), the rest data parallel
    )
    predictions_path: str | None = None  # JSONL of every scored sample (see `Prediction`)
    show_predictions: bool = False  # print each sample's answer as it is scored
    allow_outside_data: bool = False  # images may lie outside the data folder

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}) and max_new_tokens ({self.max_new_tokens}) must be >= 1"
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """The predictions as JSONL, one object per sample in split order (written atomically)."""
    path = Path(path)
    with atomic_file(path, "w") as handle:
        for prediction in sorted(predictions, key=lambda p: p.id):
            handle.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
    return path


def _prediction_sink(config: EvaluateConfig, is_first_rank: bool, total: int):
    """Collects the predictions (first rank) and prints each one when `show_predictions`."""
    collected: list[Prediction] = []

    def sink(prediction: Prediction) -> None:
        collected.append(prediction)
        if config.show_predictions:
            verdict = "ok" if prediction.correct else "WRONG"
            SilentProgress.write(
                f"[{len(collected)}/{total}] {verdict} {prediction.image}: "
                f"{prediction.prediction!r} (reference {prediction.reference!r})"
            )

    return collected, (sink if is_first_rank else None)


def run_evaluation(config: EvaluateConfig) -> tuple[EvaluationResult, list, bool]:
    """Load the checkpoint, check the split (every record and image), and score it; write the
    predictions when `predictions_path` is set. Also return the samples skipped as too long, and whether
    this is the rank that reports. Under a launcher, consecutive groups of `tp_size` ranks (default: all)
    hold the model's tensor-parallel shards, and the replicas share out the samples."""
    from cogvlm.launch.distributed import init_parallel_runtime, shutdown

    runtime = init_parallel_runtime(config.tp_size)
    try:
        return _evaluate_on_ranks(config, runtime)
    finally:
        shutdown(runtime)  # gloo's threads left to interpreter exit can abort the process


def _evaluate_on_ranks(config: EvaluateConfig, runtime) -> tuple[EvaluationResult, list, bool]:
    from cogvlm.checkpoints.resolve import resolve_checkpoint
    from cogvlm.checkpoints.tokenizer_fetch import checkpoint_tokenizer
    from cogvlm.train.checkpointing import load_finetuned_model
    from cogvlm.train.validation import load_checked_samples

    data_group = data_parallel_group(runtime.tp.rank, runtime.tp.size, runtime.data_parallel_size)
    tokenizer = checkpoint_tokenizer(config.from_pretrained, config.local_tokenizer, config.download)
    path = resolve_checkpoint(config.from_pretrained, config.download)
    device = config.device or runtime.device
    model, info, _ = load_finetuned_model(
        path, dtype=config.dtype, device=device, tp=runtime.tp, iteration=config.iteration
    )
    version = config.version or info.config.text_processor_version or "base"
    family = model_family(info.config.model_class).hf_prompts
    prompt_format = PromptFormat(version, config.prompt_style, family)  # before the data is tokenized
    samples = load_checked_samples(
        config.data_path,
        config.prompt,
        allow_outside=config.allow_outside_data,
        show_progress=runtime.is_first_rank,
    )
    dataset = VisionTextDataset(samples, tokenizer, info.config, version, config.max_length)
    count = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    share = len(range(count)[runtime.data_parallel_rank :: runtime.data_parallel_size])
    predictions, sink = _prediction_sink(config, runtime.tp.rank == 0, share)
    result = evaluate(
        model,
        tokenizer,
        dataset,
        version=version,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        indices=range(count),
        group=data_group,
        prompt_format=prompt_format,
        on_prediction=sink,
        show_progress=runtime.is_first_rank,
    )
    if data_group is not None:
        shares = [None] * runtime.data_parallel_size
        dist.all_gather_object(shares, predictions, group=data_group)
        predictions = [prediction for share in shares for prediction in share]
    if config.predictions_path and runtime.is_first_rank:
        write_predictions(predictions, config.predictions_path)
    return result, dataset.skipped, runtime.is_first_rank


def data_parallel_group(tp_rank: int, tp_size: int, data_parallel_size: int):
    """The (gloo) group of the ranks holding the same tensor-parallel slice in each data-parallel replica
    (consecutive ranks form a tensor-parallel group), or None without data parallelism. Every rank calls."""
    if data_parallel_size == 1:
        return None
    world = tp_size * data_parallel_size
    groups = [dist.new_group(list(range(r, world, tp_size)), backend="gloo") for r in range(tp_size)]
    return groups[tp_rank]
