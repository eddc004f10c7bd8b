"""A seeded generator of images with questions and answers that exercise what CogVLM does.

Each scene holds a few coloured shapes (never two of the same colour and shape) and sometimes a short
code written in large letters. From a scene come samples of six tasks: a caption, VQA about colour,
shape, count and relative position, reading the text, grounding (`[[x1,y1,x2,y2]]` in thousandths of
the image size) and the reverse (a box to a description).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cogvlm.text_processors.grounding import PixelBox, format_boxes, from_pixels
from cogvlm.utils.atomic import atomic_file

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
TEXT_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"
TASKS = ("caption", "color", "shape", "count", "position", "text", "grounding", "box_caption")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


@dataclass(frozen=True)
class SceneConfig:
    """Image size, how many shapes, and how often a scene carries text."""

    image_px: int = 224
    min_objects: int = 1
    max_objects: int = 3
    text_probability: float = 0.5
    text_length: int = 4
    min_object_px: int = 40
    max_object_px: int = 72
    font_px: int = 36

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= len(COLORS) * len(SHAPES):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_object_px * 2 > self.image_px:
            raise ValueError(f"max_object_px={self.max_object_px} is too large for image_px={self.image_px}")


# The scenes the embedded model (`cogvlm.embedded`) was trained on; the same settings generate its test sets.
EMBEDDED_SCENE = SceneConfig(image_px=112, font_px=20, min_object_px=18, max_object_px=34)

Box = tuple[int, int, int, int]  # pixel corners x1, y1, x2, y2


@dataclass(frozen=True)
class SceneObject:
    """One shape: its colour and kind, and its bounding box in pixels."""

    color: str
    shape: str
    box: Box

    @property
    def name(self) -> str:
        """`red circle`."""
        return f"{self.color} {self.shape}"

    @property
    def center_x(self) -> float:
        """Horizontal centre in pixels."""
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one image."""

    objects: tuple[SceneObject, ...]
    text: str | None = None
    text_box: Box | None = None
    background: tuple[int, int, int] = (245, 245, 240)


@dataclass(frozen=True)
class Sample:
    """One question about one image and its reference answer."""

    task: str
    question: str
    answer: str
    boxes: tuple[Box, ...] = field(default=())


def _overlaps(box: Box, others: list[Box], margin: int = 6) -> bool:
    return any(
        box[0] < o[2] + margin
        and o[0] < box[2] + margin
        and box[1] < o[3] + margin
        and o[1] < box[3] + margin
        for o in others
    )


def _place(rng: random.Random, size: tuple[int, int], image_px: int, taken: list[Box]) -> Box | None:
    for _ in range(100):
        x = rng.randint(4, image_px - size[0] - 4)
        y = rng.randint(4, image_px - size[1] - 4)
        box = (x, y, x + size[0], y + size[1])
        if not _overlaps(box, taken):
            return box
    return None


def _font(config: SceneConfig) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=config.font_px)


def make_scene(rng: random.Random, config: SceneConfig) -> Scene:
    """A random scene: distinct (colour, shape) objects that do not overlap, and maybe a text code."""
    taken: list[Box] = []
    text, text_box = None, None
    if rng.random() < config.text_probability:
        text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(config.text_length))
        left, top, right, bottom = _font(config).getbbox(text)
        text_box = _place(rng, (right - left + 8, bottom - top + 8), config.image_px, taken)
        if text_box is None:
            text = None
        else:
            taken.append(text_box)
    kinds = rng.sample(
        [(c, s) for c in COLORS for s in SHAPES], rng.randint(config.min_objects, config.max_objects)
    )
    objects = []
    for color, shape in kinds:
        side = rng.randint(config.min_object_px, config.max_object_px)
        box = _place(rng, (side, side), config.image_px, taken)
        if box is not None:
            taken.append(box)
            objects.append(SceneObject(color, shape, box))
    return Scene(tuple(objects), text, text_box)


def render(scene: Scene, config: SceneConfig) -> Image.Image:
    """Draw a scene as an RGB image."""
    image = Image.new("RGB", (config.image_px, config.image_px), scene.background)
    draw = ImageDraw.Draw(image)
    for item in scene.objects:
        fill = COLORS[item.color]
        x1, y1, x2, y2 = item.box
        if item.shape == "circle":
            draw.ellipse(item.box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(item.box, fill=fill)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    if scene.text is not None:
        font = _font(config)
        left, top, _, _ = font.getbbox(scene.text)
        draw.text(
            (scene.text_box[0] + 4 - left, scene.text_box[1] + 4 - top),
            scene.text,
            fill=(20, 20, 20),
            font=font,
        )
    return image


def format_box(box: Box, image_px: int) -> str:
    """`[[x1,y1,x2,y2]]` in thousandths of the image size, three digits per value."""
    return format_boxes(from_pixels(PixelBox(*box), image_px, image_px))


def with_article(name: str) -> str:
    """`a red circle`, `an orange square`."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def _list_names(names: list[str]) -> str:
    names = [with_article(name) for name in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption(scene: Scene) -> str:
    """Objects from left to right, then the text if any: `A red circle and a blue square.`."""
    ordered = sorted(scene.objects, key=lambda item: item.center_x)
    sentence = _list_names([item.name for item in ordered]) if ordered else "nothing"
    sentence = sentence[0].upper() + sentence[1:]
    if scene.text is not None:
        sentence += f', and the text "{scene.text}"'
    return sentence + "."


def _unique(scene: Scene, attribute: str) -> list[SceneObject]:
    values = [getattr(item, attribute) for item in scene.objects]
    return [item for item in scene.objects if values.count(getattr(item, attribute)) == 1]


def samples_for(scene: Scene, rng: random.Random, config: SceneConfig) -> Iterator[Sample]:
    """One sample per task that the scene can answer unambiguously."""
    yield Sample("caption", "Describe the image.", caption(scene))
    by_shape = _unique(scene, "shape")
    if by_shape:
        item = rng.choice(by_shape)
        yield Sample("color", f"What color is the {item.shape}?", item.color)
    by_color = _unique(scene, "color")
    if by_color:
        item = rng.choice(by_color)
        yield Sample("shape", f"What shape is the {item.color} object?", item.shape)
    yield Sample("count", "How many shapes are there?", NUMBER_WORDS[len(scene.objects)])
    if len(scene.objects) >= 2:
        first, second = rng.sample(list(scene.objects), 2)
        side = "left" if first.center_x < second.center_x else "right"
        yield Sample("position", f"Is the {first.name} left or right of the {second.name}?", side)
    if scene.text is not None:
        yield Sample("text", "What does the text say?", scene.text)
    if scene.objects:
        item = rng.choice(scene.objects)
        box = format_box(item.box, config.image_px)
        yield Sample("grounding", f"Where is the {item.name}?", box, (item.box,))
        yield Sample("box_caption", f"What is in {box}?", with_article(item.name), (item.box,))


@dataclass(frozen=True)
class DatasetConfig:
    """How many images, the seed, and the scene settings."""

    num_images: int
    seed: int
    scene: SceneConfig = field(default_factory=SceneConfig)


TRAINING_FILE = "data.jsonl"
TASKS_FILE = "tasks.jsonl"


def write_dataset(directory: str | Path, config: DatasetConfig) -> Path:
    """Write `images/NNNNNN.png`, `data.jsonl` (the fine-tuning format: image, question, answer) and
    `tasks.jsonl` (the same samples with their task and true boxes, for scoring); return data.jsonl."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    training, tasks = [], []
    for index in range(config.num_images):
        scene = make_scene(rng, config.scene)
        name = f"images/{index:06d}.png"
        render(scene, config.scene).save(directory / name)
        for sample in samples_for(scene, rng, config.scene):
            record = {"image": name, "question": sample.question, "answer": sample.answer}
            training.append(json.dumps(record))
            tasks.append(
                json.dumps({**record, "task": sample.task, "boxes": [list(box) for box in sample.boxes]})
            )
    (directory / TRAINING_FILE).write_text("\n".join(training) + "\n")
    (directory / TASKS_FILE).write_text("\n".join(tasks) + "\n")
    (directory / "dataset.json").write_text(json.dumps(asdict(config), indent=2))
    return directory / TRAINING_FILE


def corpus(directory: str | Path) -> list[str]:
    """Every question and answer of a dataset, for training its tokenizer."""
    lines = []
    for line in (Path(directory) / TRAINING_FILE).read_text().splitlines():
        record = json.loads(line)
        lines += [record["question"], record["answer"]]
    return lines


def _training_entry(record: dict, directory: Path, output: Path) -> str:
    """One fine-tuning JSONL line for a scoring record, its image path made relative to `output`."""
    entry = {"image": os.path.relpath(directory / record["image"], output.parent)}
    entry |= {"question": record["question"], "answer": record["answer"]}
    if record.get("history"):
        entry["history"] = record["history"]
    return json.dumps(entry)


def mix_tasks(
    directory: str | Path,
    weights: dict[str, float],
    output: str | Path,
    seed: int = 0,
    extra: Sequence[dict] = (),
) -> tuple[Path, dict[str, int]]:
    """Write a training JSONL that repeats each task's samples `weights[task]` times (default 1), shuffled.

    A fractional weight keeps each further copy with that probability (0.5: about half the samples).
    `extra` records (tasks.jsonl's form, optionally with a `history`) are added once each. Image paths
    are rewritten relative to `output`. Returns the file and the samples written per task.
    """
    directory, output = Path(directory), Path(output)
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; tasks are {list(TASKS)}")
    negative = {task: weight for task, weight in weights.items() if weight < 0}
    if negative:
        raise ValueError(f"task weights must be >= 0, got {negative}")
    rng = random.Random(seed)
    records, counts = [], dict.fromkeys(TASKS, 0)
    for line in (directory / TASKS_FILE).read_text().splitlines():
        record = json.loads(line)
        weight = weights.get(record["task"], 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        records += [_training_entry(record, directory, output)] * copies
        counts[record["task"]] += copies
    for record in extra:
        records.append(_training_entry(record, directory, output))
        kind = "multi_turn" if record.get("history") and record["task"] in TASKS else record["task"]
        counts[kind] = counts.get(kind, 0) + 1
    rng.shuffle(records)
    with atomic_file(output, "w") as handle:  # an interrupted run leaves no truncated training file
        handle.write("\n".join(records) + "\n")
    return output, counts
