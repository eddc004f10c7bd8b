"""Samples that teach the embedded model an honest reply to what it cannot answer, and multi-turn use.

They are built from a `synth-data` dataset (its `tasks.jsonl`) with a generator of their own, so the scenes
and questions that `synth-data` writes, and with them every test set, stay what they were. Off-topic
questions come in two disjoint pools: `train` for training and `test` for scoring what was learnt.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from cogvlm.train.synthetic import TASKS_FILE
from cogvlm.utils.atomic import atomic_file

UNANSWERABLE = "unanswerable"
# What the model says to anything but its eight kinds of question: short, true, and pointing to one it knows.
UNANSWERABLE_REPLY = 'I cannot answer that. Try "Describe the image."'

_OFF_TOPIC = (
    "What is in this image?", "What is this?", "Who are you?", "What is the capital of France?",
    "Hello", "How old are you?", "Tell me a joke.", "What time is it?", "Is this a photo of a cat?",
    "What is the weather like?", "Can you read this document?", "Who painted this picture?",
    "What breed is the dog?", "Translate this into French.", "Summarize the image in detail.",
    "What is 2+2?", "Write a poem about the sea.", "Where was this photo taken?", "thanks",
    "What is the person doing?", "How many people are there?", "What is the license plate?",
    "这是什么？", "图片里有什么？", "描述这张图片。", "有几个形状？", "红色的圆在哪里？", "你好",
    "这张图片是什么颜色的？", "图中的文字是什么？", "你是谁？", "请详细描述图片。",
    "Qu'est-ce que c'est ?", "Was ist auf dem Bild?", "¿Qué hay en la imagen?", "これは何ですか？",
    "Что на картинке?", "Describe the photo.", "What color is the sky?", "Is it raining?",
    "What color is the hexagon?", "What shape is the pink object?", "Where is the blue star?",
    "How many cars are there?", "What does the sign say?", "Is the dog left or right of the cat?",
)  # fmt: skip
_WH = ("What", "Who", "Where", "Why", "How", "When", "Which", "Is", "Can", "Does")
_VERBS = ("is", "are", "does", "can", "will", "was", "should", "did")
_NOUNS = (
    "car", "tree", "man", "woman", "dog", "cat", "city", "river", "book", "phone", "house", "sky", "food",
    "computer", "star", "hexagon", "bird", "flower", "ocean", "mountain", "picture", "price", "weather",
)  # fmt: skip
_ENDINGS = ("doing", "made of", "for", "like", "called", "worth", "in the picture", "happening")
_CJK_WORDS = ("图片", "颜色", "形状", "文字", "什么", "哪里", "多少", "为什么", "天气", "汽车", "房子", "猫")


def fixed_off_topic(split: str) -> tuple[str, ...]:
    """The fixed off-topic questions of `split` (`train` or `test`): every other one of one list."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _OFF_TOPIC[split == "test" :: 2]  # every other fixed question belongs to the test pool


def off_topic_question(rng: random.Random, split: str) -> str:
    """A question the model cannot answer: a fixed one of `split`'s pool, a made-up one, or noise."""
    pool = fixed_off_topic(split)
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(pool)
    if kind < 0.75:
        noun, ending = rng.choice(_NOUNS), rng.choice(_ENDINGS)
        return f"{rng.choice(_WH)} {rng.choice(_VERBS)} the {noun} {ending}?"
    if kind < 0.9:
        return "".join(rng.choice(_CJK_WORDS) for _ in range(rng.randint(1, 4))) + rng.choice("？?。")
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    return "".join(rng.choice(letters) for _ in range(rng.randint(1, 24))).strip() or "?"


def _scenes(dataset: Path) -> list[list[dict]]:
    """The dataset's task records grouped by image, in file order."""
    groups: dict[str, list[dict]] = {}
    for line in (dataset / TASKS_FILE).read_text().splitlines():
        record = json.loads(line)
        groups.setdefault(record["image"], []).append(record)
    return list(groups.values())


def _turn(record: dict) -> tuple[str, str]:
    return record["question"], record["answer"]


def dialogue_records(
    dataset: str | Path, count: int, rng: random.Random, split: str, multi_turn: bool
) -> Iterator[dict]:
    """`count` scoring records (image, question, answer, task, boxes, history) about the dataset's images.

    `multi_turn`: one to two earlier turns about the same image (right answers, and sometimes an off-topic
    question with its honest reply), then one of the scene's questions. Else one off-topic question, with
    an earlier turn half the time. Image paths stay relative to `dataset`.
    """
    scenes = _scenes(Path(dataset))
    for _ in range(count):
        records = scenes[rng.randrange(len(scenes))]
        off_topic = (off_topic_question(rng, split), UNANSWERABLE_REPLY)
        if multi_turn:
            picked = rng.sample(records, min(len(records), rng.randint(2, 3)))
            history = [_turn(record) for record in picked[:-1]]
            if rng.random() < 0.25:
                history.insert(rng.randint(0, len(history)), off_topic)
            final = picked[-1]
        else:
            history = [_turn(rng.choice(records))] if rng.random() < 0.5 else []
            final = {"image": records[0]["image"], "task": UNANSWERABLE, "boxes": []}
            final["question"], final["answer"] = off_topic
        yield {**final, "history": [list(turn) for turn in history]}


def dialogue_extras(
    dataset: str | Path, unanswerable: int, multi_turn: int, seed: int, split: str = "train"
) -> list[dict]:
    """`unanswerable` off-topic and `multi_turn` multi-turn records about a dataset's images, seeded."""
    rng = random.Random(seed)
    records = list(dialogue_records(dataset, unanswerable, rng, split, multi_turn=False))
    return records + list(dialogue_records(dataset, multi_turn, rng, split, multi_turn=True))


def write_dialogue_set(
    dataset: str | Path, output: str | Path, unanswerable: int, multi_turn: int, seed: int
) -> Path:
    """A scoring set (`output/tasks.jsonl`, images left in `dataset`) from the `test` pool of questions."""
    dataset, output = Path(dataset), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in dialogue_extras(dataset, unanswerable, multi_turn, seed, split="test"):
        image = os.path.relpath(dataset / record["image"], output)
        lines.append(json.dumps({**record, "image": image}))
    with atomic_file(output / TASKS_FILE, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return output / TASKS_FILE
