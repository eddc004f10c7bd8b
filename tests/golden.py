"""Where the golden vectors are, and the cases they hold (discovered from the files, never listed here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
