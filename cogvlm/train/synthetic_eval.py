"""Scoring a model on a synthetic test set: exact match per task, and IoU >= 0.5 for grounding."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cogvlm.text_processors.grounding import PixelBox, parse_boxes, to_pixels
from cogvlm.train.synthetic import TASKS_FILE

IOU_THRESHOLD = 0.5
# answer([(image, question, history), ...]); history: earlier [question, answer] pairs, oldest first.
BatchAnswerer = Callable[[list[tuple[Path, str, list]]], list[str]]


@dataclass(frozen=True)
class TaskScore:
    """How many samples of one task were answered correctly."""

    task: str
    total: int
    correct: int

    @property
    def accuracy(self) -> float:
        """Fraction correct (0 for an empty task)."""
        return self.correct / self.total if self.total else 0.0


def iou(first: PixelBox, second: PixelBox) -> float:
    """Intersection over union of two pixel boxes."""
    width = max(0.0, min(first.x2, second.x2) - max(first.x1, second.x1))
    height = max(0.0, min(first.y2, second.y2) - max(first.y1, second.y1))
    intersection = width * height
    area = (first.x2 - first.x1) * (first.y2 - first.y1) + (second.x2 - second.x1) * (second.y2 - second.y1)
    return intersection / (area - intersection) if area > intersection else 0.0


def is_correct(record: dict, answer: str, image_px: int) -> bool:
    """Grounding: the first predicted box overlaps the true one with IoU >= 0.5; else exact match."""
    if record["task"] != "grounding":
        return answer.strip() == record["answer"]
    boxes = parse_boxes(answer)
    if not boxes:
        return False
    predicted = to_pixels(boxes[0], image_px, image_px)
    return iou(predicted, PixelBox(*record["boxes"][0])) >= IOU_THRESHOLD


def read_records(dataset: Path, per_task: int | None = None) -> list[dict]:
    """The dataset's samples, at most `per_task` of each task, in file order."""
    records, counts = [], {}
    for line in (dataset / TASKS_FILE).read_text().splitlines():
        record = json.loads(line)
        if per_task is None or counts.get(record["task"], 0) < per_task:
            counts[record["task"]] = counts.get(record["task"], 0) + 1
            records.append(record)
    return records


def evaluate(
    answer: BatchAnswerer,
    dataset: str | Path,
    image_px: int,
    per_task: int | None = None,
    batch_size: int = 16,
) -> dict[str, TaskScore]:
    """Ask `answer([(image_path, question, history), ...])` every question, in batches; score per task."""
    dataset = Path(dataset)
    records = read_records(dataset, per_task)
    totals: dict[str, list[int]] = {}
    for record, reply in zip(records, answer_records(answer, dataset, records, batch_size), strict=True):
        counts = totals.setdefault(record["task"], [0, 0])
        counts[0] += 1
        counts[1] += is_correct(record, reply, image_px)
    return {task: TaskScore(task, total, correct) for task, (total, correct) in sorted(totals.items())}


def answer_records(
    answer: BatchAnswerer, dataset: Path, records: list[dict], batch_size: int = 16
) -> list[str]:
    """`answer`'s reply to each record of `dataset` (image, question, history), `batch_size` at a time."""
    replies = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        replies += answer([(dataset / r["image"], r["question"], r.get("history", [])) for r in chunk])
    return replies


def session_answerer(session, max_new_tokens: int = 32) -> BatchAnswerer:
    """Greedy batched answers of a loaded `cogvlm.api.CogVLM`; a question's history is optional."""
    generation = session.generation_config(
        max_new_tokens=max_new_tokens, top_k=1
    )  # the card's scores: greedy

    def answer(questions: list[tuple]) -> list[str]:
        turns = [
            (str(image), question, tuple(map(tuple, rest[0])) if rest else ())
            for image, question, *rest in questions
        ]
        return [result.response for result in session.chat_batch(turns, generation)]

    return answer
