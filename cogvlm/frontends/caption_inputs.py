"""What `cogvlm caption` reads: a folder of images, a JSONL of {"image", "query"} records, or a glob.

Every input gets an `id` (a JSONL record's own "id", else the image path as written) and a query (the
record's, else the command's). The pair (id, query) names an input in the output, so a rerun can tell
which inputs are done; two inputs with the same pair are an error.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class CaptionInput:
    """One image and its question; `image` is the path as the output names it, `path` where it is read."""

    id: str | int
    image: str
    query: str
    path: Path

    @property
    def key(self) -> tuple[str | int, str]:
        """What names this input in the output (its record's "id" and "query")."""
        return (self.id, self.query)


def list_inputs(source: str, default_query: str) -> list[CaptionInput]:
    """The inputs `source` names, in a fixed order: a folder (its images, recursively, by path), a
    `.jsonl` file (its records in file order) or a glob pattern (its files, by path).

    Raises:
        FileNotFoundError: `source` is none of these, or names no file.
        ValueError: a JSONL record is malformed, or two inputs share an id and query.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        inputs = [_image_input(p, default_query) for p in files]
    elif path.is_file() and path.suffix == ".jsonl":
        inputs = _read_jsonl(path, default_query)
    elif GLOB_CHARACTERS & set(source):
        files = sorted(Path(name) for name in glob.glob(source, recursive=True) if Path(name).is_file())
        inputs = [_image_input(p, default_query) for p in files]
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        inputs = [_image_input(path, default_query)]
    else:
        raise FileNotFoundError(
            f"caption input {source}: not a folder, a .jsonl file, an image or a glob pattern "
            "(quote the pattern so that the shell does not expand it)"
        )
    if not inputs:
        raise FileNotFoundError(f"caption input {source}: no images found")
    _check_unique(inputs, source)
    return inputs


def _image_input(path: Path, query: str) -> CaptionInput:
    return CaptionInput(id=str(path), image=str(path), query=query, path=path)


def _read_jsonl(path: Path, default_query: str) -> list[CaptionInput]:
    """Records {"image": path, "query"?: text, "id"?: name}; relative paths start at the file's folder."""
    inputs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                inputs.append(_record_input(path, number, line, default_query))
    return inputs


def _record_input(path: Path, number: int, line: str, default_query: str) -> CaptionInput:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f'{where}: expected an object with an "image" key, got {type(record).__name__}')
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f'{where}: "image" must be a non-empty path string, got {image!r}')
    query = record.get("query", default_query)
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f'{where}: "query" must be a non-empty string, got {query!r}')
    record_id = record.get("id", image)
    if not isinstance(record_id, str | int) or isinstance(record_id, bool):
        raise ValueError(f'{where}: "id" must be a string or an integer, got {record_id!r}')
    return CaptionInput(id=record_id, image=image, query=query, path=path.parent / image)


def _check_unique(inputs: list[CaptionInput], source: str) -> None:
    first: dict[tuple[str | int, str], int] = {}
    for index, item in enumerate(inputs):
        earlier = first.setdefault(item.key, index)
        if earlier != index:
            raise ValueError(
                f"caption input {source}: inputs {earlier + 1} and {index + 1} have the same id {item.id!r} "
                f'and query {item.query!r}; give the records distinct "id"s'
            )
