"""Where the golden vectors are, and the cases they hold (discovered from the files, never listed here)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

GOLDEN_ENV = "COGVLM_GOLDEN"
# Files a model folder may hold; a folder with none of them (e.g. a model-parallel split) is not a model.
MODEL_FILES = (
    "text_inputs.json",
    "train_text_processor.json",
    "generation.json",
    "image_inputs.safetensors",
    "cases.safetensors",
)


def golden_dir() -> Path:
    """`$COGVLM_GOLDEN`, else `<repo>/../shared/golden`; raises if it does not exist."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "golden"
    path = Path(os.environ.get(GOLDEN_ENV) or default)
    if not path.is_dir():
        raise FileNotFoundError(f"golden directory {path} not found; set {GOLDEN_ENV} to its location")
    return path


def model_dirs() -> list[Path]:
    """Every folder of the golden directory that holds per-model golden files, sorted by name."""
    found = [p for p in golden_dir().iterdir() if p.is_dir() and any((p / f).is_file() for f in MODEL_FILES)]
    return sorted(found)


def load_json(path: Path) -> Any:
    """Parsed JSON of `path`."""
    return json.loads(path.read_text())


def json_cases(filename: str) -> list[tuple[Path, str, dict[str, Any]]]:
    """(model folder, case name, case) for every case of `filename` in every model folder that has it."""
    cases = []
    for model_dir in model_dirs():
        path = model_dir / filename
        if path.is_file():
            cases += [(model_dir, name, case) for name, case in load_json(path).items()]
    return cases


def case_id(case: tuple[Path, str, Any]) -> str:
    """`<model>/<case>`, for pytest ids."""
    return f"{case[0].name}/{case[1]}"


def tokenizer_path(model_dir: Path) -> Path:
    """The model folder's own `tokenizer.model` if it has one, else the shared one."""
    own = model_dir / "tokenizer.model"
    return own if own.is_file() else golden_dir() / "tokenizer.model"


def image_length(model_dir: Path) -> int | None:
    """`image_length` from the model folder's `model_info.json` (SAT model config), if recorded."""
    info = model_dir / "model_info.json"
    if not info.is_file():
        return None
    config = load_json(info).get("sat_model_config", {})
    return config.get("image_length")


def golden_image_path() -> Path:
    """The image the golden pixel values were computed from."""
    return golden_dir() / "test_image.png"


def prompts(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The prompt cases of a model folder (`text_inputs.json`), by case name."""
    return load_json(model_dir / "text_inputs.json")


def generations(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The generation records of a model folder (`generation.json`), by case name."""
    return load_json(model_dir / "generation.json")


def greedy_cases(model_dir: Path) -> list[str]:
    """Prompt cases with a plain greedy continuation (its own `max_new_tokens`), sorted by name."""
    records = generations(model_dir)
    return sorted(name for name in prompts(model_dir) if "max_new_tokens" in records.get(name, {}))


def max_new_tokens(model_dir: Path) -> int:
    """The new-token budget the reference's greedy runs had (the largest, should cases differ)."""
    records = generations(model_dir)
    return max(records[name]["max_new_tokens"] for name in greedy_cases(model_dir))


def continued_case(model_dir: Path, name: str) -> str:
    """The prompt case a generation record continues: the longest prompt its `output_ids` start with."""
    output = generations(model_dir)[name]["output_ids"]
    starts = {
        case: p["input_ids"]
        for case, p in prompts(model_dir).items()
        if output[: len(p["input_ids"])] == p["input_ids"]
    }
    if not starts:
        raise ValueError(f"{model_dir / 'generation.json'}: {name} continues no prompt of text_inputs.json")
    return max(starts, key=lambda case: len(starts[case]))


def find_case(model_dir: Path, what: str, accept: Callable[[dict, dict], bool] = lambda p, g: True) -> str:
    """The first greedy case whose (prompt, generation) `accept` takes; skips the test, saying `what` was
    looked for, when the set has none."""
    records = generations(model_dir)
    for name in greedy_cases(model_dir):
        if accept(prompts(model_dir)[name], records[name]):
            return name
    pytest.skip(f"{model_dir.name}: the golden set has no greedy case {what}")


def sequence_budget(model_dir: Path, name: str) -> int:
    """Prompt length plus the reference's new-token budget of a case: the `max_length` of its run."""
    return len(prompts(model_dir)[name]["input_ids"]) + generations(model_dir)[name]["max_new_tokens"]


def golden_splits() -> list[tuple[Path, Path, int]]:
    """Reference-made model-parallel splits `<model>_mp<N>`: (split folder, model folder, N)."""
    found = []
    for path in sorted(golden_dir().iterdir()):
        match = re.fullmatch(r"(.+)_mp(\d+)", path.name)
        if match and (path / "model_config.json").is_file():
            found.append((path, golden_dir() / match.group(1), int(match.group(2))))
    return found


def parallel_sizes() -> tuple[int, ...]:
    """The model-parallel sizes the set's reference splits use (2 when it has none)."""
    return tuple(sorted({size for _, _, size in golden_splits()})) or (2,)


def stop_string_in(text: str, length: int = 3) -> str:
    """A piece of `text` that first occurs past its start: a stop string that cuts a reply mid-way.
    Looks from the middle towards the start first, so that the reply goes on after it; avoids whitespace at
    its ends and the replacement character (an incomplete byte sequence while streaming)."""
    middle = len(text) // 2
    for start in [*range(middle, 0, -1), *range(middle + 1, len(text) - length + 1)]:
        piece = text[start : start + length]
        if (
            len(piece) == length
            and piece == piece.strip()
            and "\ufffd" not in piece
            and text.index(piece) > 0
        ):
            return piece
    pytest.skip(f"no stop string of {length} characters inside the golden reply {text!r}")


def first_appearance_up_to(ids: list[int], index: int) -> int:
    """The last position at or before `index` whose token does not occur earlier in `ids`: a token that,
    made an end token, stops a greedy run right there (position 0 always qualifies)."""
    return max(k for k in range(min(index, len(ids) - 1) + 1) if ids[k] not in ids[:k])
