"""Reading the JSON files of a checkpoint (configs, shard indexes), with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from cogvlm.errors import CheckpointError


def read_json(path: Path) -> dict:
    """Parse a JSON file that must hold an object, naming the file in any error."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a checkpoint file") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
