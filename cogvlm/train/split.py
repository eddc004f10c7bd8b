"""`cogvlm split-data`: a seeded train / valid / test split of a captcha folder or a JSONL file.

Files are copied, never moved, and each split is written atomically.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from cogvlm.train.data import IMAGE_SUFFIXES
from cogvlm.utils.atomic import atomic_directory

SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Source (image folder or `.jsonl`), destination folder, split fractions and seed."""

    source: str
    destination: str
    fractions: tuple[float, float, float] = (0.8, 0.05, 0.15)
    seed: int = 2023

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if (
            len(self.fractions) != 3
            or any(f < 0 for f in self.fractions)
            or abs(sum(self.fractions) - 1) > 1e-6
        ):
            raise ValueError(
                f"split fractions {self.fractions} must be three non-negative numbers summing to 1"
            )


def split_counts(total: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of the three splits: train and valid rounded, test the rest (10000 -> 8000/500/1500)."""
    train = round(total * fractions[0])
    valid = min(total - train, round(total * fractions[1]))
    return train, valid, total - train - valid


def _write_splits(items: list, destination: Path, config: SplitConfig, write_split) -> dict[str, int]:
    """Shuffle `items` with the seed, cut them into the three splits and write each with
    `write_split(staging, split_name, chunk)`, all in one atomic write; return the sizes."""
    items = list(items)
    random.Random(config.seed).shuffle(items)
    counts = split_counts(len(items), config.fractions)
    with atomic_directory(destination) as staging:
        start = 0
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            write_split(staging, name, items[start : start + count])
            start += count
    return dict(zip(SPLIT_NAMES, counts, strict=True))


def _copy_images(staging: Path, name: str, images: list[Path]) -> None:
    (staging / name).mkdir()
    for path in images:
        shutil.copy2(path, staging / name / path.name)


def _write_lines(staging: Path, name: str, lines: list[str]) -> None:
    (staging / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _split_folder(source: Path, destination: Path, config: SplitConfig) -> dict[str, int]:
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    names = [p.name for p in images]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{source}: file names occur in several sub-folders: {duplicates[:5]}")
    return _write_splits(images, destination, config, _copy_images)


def _absolute_image(line: str, base: Path, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError(f"{where}: expected an object with an 'image' path")
    image = Path(record["image"])
    record["image"] = str(image if image.is_absolute() else (base / image).resolve())
    return json.dumps(record, ensure_ascii=False)


def _split_jsonl(source: Path, destination: Path, config: SplitConfig) -> dict[str, int]:
    lines = [
        _absolute_image(line, source.parent, f"{source}:{number}")
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    if not lines:
        raise ValueError(f"{source}: no records")
    return _write_splits(lines, destination, config, _write_lines)


def split_dataset(config: SplitConfig) -> dict[str, int]:
    """Write `<destination>/{train,valid,test}` (folders of images, or `.jsonl` files); return the sizes."""
    source, destination = Path(config.source), Path(config.destination)
    if source.resolve() == destination.resolve() or destination.resolve().is_relative_to(source.resolve()):
        raise ValueError(f"destination {destination} must lie outside the source {source}")
    if source.is_dir():
        return _split_folder(source, destination, config)
    if source.suffix == ".jsonl" and source.is_file():
        return _split_jsonl(source, destination, config)
    if not source.exists():
        raise FileNotFoundError(f"split source {source} does not exist")
    raise ValueError(f"split source {source}: expected a folder of images or a .jsonl file")
