"""The output of `cogvlm caption`: JSONL records appended as answers come, read back to resume, merged.

A record is {"id", "image", "query", "answer"} or, for an input that could not be answered (an unreadable
image, a prompt over the context), {"id", "image", "query", "error"}. Each record is one line written and
flushed at once, so a killed run leaves whole lines and at most one half-written last line, which the
next run cuts off before it appends. Data-parallel writers each append to a part file beside the output
(`<output>.part-<rank>`); `merge_records` folds them into the output in input order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from cogvlm.frontends.caption_inputs import CaptionInput
from cogvlm.utils.atomic import atomic_file

logger = logging.getLogger(__name__)
PART_INFIX = ".part-"
Key = tuple[str | int, str]


def answer_record(item: CaptionInput, answer: str) -> dict:
    """The record of an answered input."""
    return {"id": item.id, "image": item.image, "query": item.query, "answer": answer}


def error_record(item: CaptionInput, error: Exception) -> dict:
    """The record of an input that could not be answered; the run goes on."""
    return {"id": item.id, "image": item.image, "query": item.query, "error": str(error)}


def record_key(record: dict) -> Key:
    """(id, query): what names a record's input."""
    return (record["id"], record["query"])


def part_path(output: Path, rank: int) -> Path:
    """Where data-parallel rank `rank` appends its records."""
    return output.with_name(f"{output.name}{PART_INFIX}{rank:05d}")


def part_files(output: Path) -> list[Path]:
    """The part files beside `output` (from this run or an interrupted one with any number of ranks)."""
    prefix = output.name + PART_INFIX
    if not output.parent.is_dir():
        return []
    return sorted(p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.is_file())


def read_records(path: Path) -> list[dict]:
    """The records of `path` (none if it does not exist), after repairing an unterminated last line.

    A last line without its newline is what a killed run leaves: it is completed if it holds a whole
    record, else cut off the file.

    Raises:
        ValueError: a complete line is not a record (the file is not a caption output).
    """
    if not path.exists():
        return []
    records, good_end, tail = [], 0, b""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                tail = line  # only the last line can lack its newline
                break
            record = _parse(line)
            if record is None:
                raise ValueError(
                    f"{path} line {number}: not a caption record ({line[:80]!r}); this file was not written "
                    "by `cogvlm caption`, or was edited: fix or move it"
                )
            if record:
                records.append(record)
            good_end += len(line)
    if tail:
        records.extend(_repair_tail(path, good_end, tail))
    return records


def _repair_tail(path: Path, good_end: int, tail: bytes) -> list[dict]:
    """Complete an unterminated last line holding a whole record, or cut it off; its record, if any."""
    record = _parse(tail + b"\n")
    with path.open("r+b") as handle:
        if record:
            handle.seek(0, 2)
            handle.write(b"\n")
            return [record]
        logger.warning("%s: cutting off a half-written last line (%d bytes)", path, len(tail))
        handle.truncate(good_end)
    return []


def _parse(line: bytes) -> dict | None:
    """The record on a complete line, {} for a blank line, None when it is not a record."""
    if not line.strip():
        return {}
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("query"), str):
        return None
    if not isinstance(record.get("id"), str | int) or isinstance(record.get("id"), bool):
        return None
    return record


def done_keys(output: Path) -> set[Key]:
    """The inputs the output and its part files already hold a record of (repairing their last lines)."""
    return {record_key(r) for path in [output, *part_files(output)] for r in read_records(path)}


class RecordWriter:
    """Appends records to a JSONL file, one line each, flushed at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.count = 0

    def write(self, record: dict) -> None:
        """Append `record` as one line and flush it to the operating system."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def merge_records(output: Path, order: Mapping[Key, int]) -> list[dict]:
    """Rewrite `output` with its records and its part files', one per input, in input order.

    `order` gives each input's position; records of inputs it does not know (an input list changed
    between runs) keep their place after the known ones. The output is replaced atomically, then the
    part files are deleted, so an interruption at any point loses nothing. Returns the records.
    """
    parts = part_files(output)
    current = read_records(output)
    unique: dict[Key, dict] = {}
    for record in _chain(current, parts):
        unique.setdefault(record_key(record), record)
    merged = sorted(unique.values(), key=lambda r: order.get(record_key(r), len(order)))
    if merged != current:
        with atomic_file(output, "wb") as handle:
            for record in merged:
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    for part in parts:
        part.unlink()
    return merged


def _chain(first: list[dict], parts: Iterable[Path]) -> Iterable[dict]:
    yield from first
    for part in parts:
        yield from read_records(part)
