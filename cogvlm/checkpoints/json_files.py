"""Reading the JSON files of a checkpoint (configs, shard indexes), with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from cogvlm.errors import CheckpointError

MAX_JSON_BYTES = 64 << 20  # a 17B model's shard index is 0.1 MB; its config a few KB


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """Parse a JSON file that must hold an object, naming the file in any error; at most `max_bytes` read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise CheckpointError(f"{path}: larger than {max_bytes} bytes; not a checkpoint's JSON file")
        value = json.loads(data.decode())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a checkpoint file") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
