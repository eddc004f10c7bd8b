"""Training samples: the reference captcha folder and JSONL files, tokenised once, batched without waste.

Over-long samples are reported (file and reason) and skipped, never truncated.
"""

from __future__ import annotations

import array
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvlm.image_processors import DualImageProcessor, ImageProcessor
from cogvlm.models.config import CogVLMConfig
from cogvlm.text_processors.image_slots import image_masks, position_ids_from_rope_mask
from cogvlm.text_processors.inference import check_no_image_marker
from cogvlm.text_processors.prompts import build_prompt
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.text_processors.training import IGNORE_INDEX, SampleTooLong, token_labels, training_tokens

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Sample:
    """One image, the question about it, the expected answer and earlier (question, answer) turns."""

    image: Path
    question: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()
    source: str = ""  # where it came from, for messages


@dataclass(frozen=True)
class SkippedSample:
    """A sample that was left out, and why."""

    source: str
    reason: str


def captcha_label(path: Path) -> str:
    """The reference's label: the file name up to its first dot."""
    return path.name.split(".")[0]


def captcha_samples(folder: Path, prompt: str = "CAPTCHA:") -> list[Sample]:
    """Every image under `folder` (recursively, sorted), labelled by its file name."""
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [Sample(path, prompt, captcha_label(path), (), str(path)) for path in images]


def _history(value, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        for turn in value
    ):
        raise ValueError(f"{where}: 'history' must be a list of [question, answer] string pairs")
    return tuple((question, answer) for question, answer in value)


def _jsonl_record(line: str, where: str, base: Path) -> Sample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [key for key in ("image", "question", "answer") if not isinstance(record.get(key), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string field(s) {missing}")
    unknown = set(record) - {"image", "question", "answer", "history"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    history = _history(record.get("history"), where)
    # The marker would become a second run of image slots for the one image: refused here as chat and
    # evaluation refuse it.
    texts = {"'question'": record["question"], "'answer'": record["answer"]}
    for turn, (question, answer) in enumerate(history):
        texts |= {f"history turn {turn}'s question": question, f"history turn {turn}'s answer": answer}
    for field, text in texts.items():
        check_no_image_marker(text, f"{where}: {field}")
    image = Path(record["image"])
    image = image if image.is_absolute() else base / image
    return Sample(image, record["question"], record["answer"], history, where)


def jsonl_records(path: Path) -> tuple[list[Sample], list[SkippedSample]]:
    """The well-formed records of a JSONL file, and every malformed one with its reason (file:line)."""
    samples, problems = [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                samples.append(_jsonl_record(line, where, path.parent))
            except ValueError as error:
                problems.append(SkippedSample(where, str(error).removeprefix(f"{where}: ")))
    if not samples and not problems:
        raise ValueError(f"{path}: no records")
    return samples, problems


def jsonl_samples(path: Path) -> list[Sample]:
    """Records `{"image", "question", "answer", "history"?}`; image paths are relative to the file."""
    return read_samples(path)


def describe_problems(problems: Sequence[SkippedSample], what: str, shown: int = 10) -> str:
    """`what` with the count of `problems` and the first `shown` of them, one per line."""
    lines = [f"{what}: {len(problems)} problem(s)" + (f", first {shown}:" if len(problems) > shown else ":")]
    lines += [f"  {problem.source}: {problem.reason}" for problem in problems[:shown]]
    return "\n".join(lines)


def data_root(path: str | Path) -> Path:
    """The folder a data set's images must lie in: the image folder, or the JSONL file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_records(path: str | Path, prompt: str = "CAPTCHA:") -> tuple[list[Sample], list[SkippedSample]]:
    """Samples of a captcha folder or a `.jsonl` file, and the malformed records (JSONL only)."""
    path = Path(path)
    if path.is_dir():
        return captcha_samples(path, prompt), []
    if path.suffix == ".jsonl" and path.is_file():
        return jsonl_records(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    raise ValueError(f"data path {path}: expected a folder of images or a .jsonl file")


def read_samples(path: str | Path, prompt: str = "CAPTCHA:") -> list[Sample]:
    """Samples of a captcha folder or a `.jsonl` file; malformed records are an error naming the first
    few of them, with the count of all."""
    samples, problems = read_records(path, prompt)
    if problems:
        raise ValueError(describe_problems(problems, f"{path}: malformed record(s)"))
    return samples


@dataclass(frozen=True)
class TokenizedSample:
    """A sample's training tokens, kept compact: the unpadded ids (int32) and what labels, masks and
    positions derive from, built on access (each [length]). Tensors per sample, padded, took 9.5 GB of
    heap for 171k samples; this takes about 4 bytes a token."""

    sample: Sample
    ids: array.array  # "i": BOS, prompt, image slots, caption, EOS
    eoi_positions: tuple[int, ...]
    context_length: int
    image_length: int

    @property
    def length(self) -> int:
        """Tokens before padding."""
        return len(self.ids)

    def tensors(self) -> dict[str, torch.Tensor]:
        """input_ids, labels, position_ids, image_embed_mask and vision_expert_mask, each [length]."""
        masks = image_masks(self.length, self.eoi_positions, self.image_length)
        labels = token_labels(self.ids, self.context_length, masks.image_embed_mask)
        rope = torch.tensor(masks.image_rope_mask, dtype=torch.bool)
        return {
            "input_ids": torch.frombuffer(self.ids, dtype=torch.int32).long(),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": position_ids_from_rope_mask(rope),
            "image_embed_mask": torch.tensor(masks.image_embed_mask, dtype=torch.bool),
            "vision_expert_mask": torch.tensor(masks.vision_expert_mask, dtype=torch.bool),
        }

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tensors()["input_ids"]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors()["labels"]


def sample_prompt(sample: Sample, version: str) -> str:
    """The prompt (with `<EOI>`) the model sees before the answer."""
    return build_prompt(version, sample.question, sample.history)


def tokenize_sample(
    sample: Sample, tokenizer: LlamaTokenizer, version: str, image_length: int, max_length: int
) -> TokenizedSample | SampleTooLong:
    """The reference's training inputs for one sample, without the padding."""
    tokens = training_tokens(
        tokenizer,
        sample.answer,
        sample_prompt(sample, version),
        version=version,
        image_length=image_length,
        max_target_length=max_length,
        on_overflow="skip",
    )
    if isinstance(tokens, SampleTooLong):
        return tokens
    return TokenizedSample(
        sample, array.array("i", tokens.ids), tokens.eoi_positions, tokens.context_length, image_length
    )


def image_processor_for(config: CogVLMConfig) -> ImageProcessor | DualImageProcessor:
    """The pixel preprocessing a model of `config` expects."""
    if config.has_cross_vision:
        return DualImageProcessor(config.vision.image_px, config.cross_vision.image_px)
    return ImageProcessor(config.vision.image_px)


class VisionTextDataset(torch.utils.data.Dataset):
    """Tokenised samples (over-long ones skipped and listed in `skipped`); images load on access."""

    def __init__(
        self,
        samples: Sequence[Sample],
        tokenizer: LlamaTokenizer,
        model_config: CogVLMConfig,
        version: str,
        max_length: int,
    ) -> None:
        self.processor = image_processor_for(model_config)
        self.items: list[TokenizedSample] = []
        self.skipped: list[SkippedSample] = []
        for sample in samples:
            result = tokenize_sample(sample, tokenizer, version, model_config.image_length, max_length)
            if isinstance(result, SampleTooLong):
                self.skipped.append(SkippedSample(sample.source, result.describe()))
            else:
                self.items.append(result)
        if not self.items:
            raise ValueError(
                f"every one of the {len(samples)} samples is too long for max_length {max_length}; "
                f"first: {self.skipped[0].source}: {self.skipped[0].reason}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        pixels = self.processor(item.sample.image)
        result = {"item": item}
        if isinstance(self.processor, DualImageProcessor):
            result["pixel_values"] = pixels.pixel_values[0]
            result["cross_pixel_values"] = pixels.cross_pixel_values[0]
        else:
            result["pixel_values"] = pixels[0]  # [3, px, px]
        return result


def log_skipped(skipped: Sequence[SkippedSample], what: str, shown: int = 5) -> None:
    """Report skipped samples: a count and the first few with their reasons."""
    if not skipped:
        return
    logger.warning("%s: %d sample(s) skipped as too long", what, len(skipped))
    for entry in skipped[:shown]:
        logger.warning("  %s: %s", entry.source, entry.reason)


@dataclass(frozen=True)
class Batch:
    """A padded batch; token tensors are [batch, longest], images [batch, 3, px, px]."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    image_embed_mask: torch.Tensor
    vision_token_mask: torch.Tensor
    pixel_values: torch.Tensor
    cross_pixel_values: torch.Tensor | None
    samples: tuple[Sample, ...]
    num_tokens: int  # real tokens, padding excluded

    @property
    def num_target_tokens(self) -> int:
        """Tokens that contribute to the loss (answers and EOS)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Batch:
        """The batch on `device`, images in `dtype`."""
        cross = self.cross_pixel_values
        return Batch(
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            position_ids=self.position_ids.to(device),
            image_embed_mask=self.image_embed_mask.to(device),
            vision_token_mask=self.vision_token_mask.to(device),
            pixel_values=self.pixel_values.to(device, dtype),
            cross_pixel_values=None if cross is None else cross.to(device, dtype),
            samples=self.samples,
            num_tokens=self.num_tokens,
        )


def _pad(tensors: Sequence[torch.Tensor], length: int, value) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(t, (0, length - t.shape[0]), value=value) for t in tensors])


def collate(examples: Sequence[dict], pad_id: int) -> Batch:
    """Pad to the longest sample of the batch.

    The reference pads to `max_length`; with causal attention, tokens after a sample's end cannot change
    its logits, so padding less changes nothing but the cost. Positions continue through the padding.
    """
    items = [example["item"] for example in examples]
    parts = [item.tensors() for item in items]
    longest = max(item.length for item in items)
    positions = [
        torch.cat([p["position_ids"], p["position_ids"][-1] + torch.arange(1, longest - item.length + 1)])
        for item, p in zip(items, parts, strict=True)
    ]
    has_cross = "cross_pixel_values" in examples[0]
    return Batch(
        input_ids=_pad([p["input_ids"] for p in parts], longest, pad_id),
        labels=_pad([p["labels"] for p in parts], longest, IGNORE_INDEX),
        position_ids=torch.stack(positions),
        image_embed_mask=_pad([p["image_embed_mask"] for p in parts], longest, False),
        vision_token_mask=_pad([p["vision_expert_mask"] for p in parts], longest, False),
        pixel_values=torch.stack([example["pixel_values"] for example in examples]),
        cross_pixel_values=torch.stack([e["cross_pixel_values"] for e in examples]) if has_cross else None,
        samples=tuple(item.sample for item in items),
        num_tokens=sum(item.length for item in items),
    )
