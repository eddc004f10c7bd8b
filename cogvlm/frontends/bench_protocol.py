"""The bench's named configs, protocol and default assets, without torch: the CLI parser lists them.

The configs and the protocol are the ones the reference implementation was measured with
(`bench_configs.json`); the full-size presets (random weights) run on CUDA only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cogvlm.embedded import embedded_checkpoint, example_image

BENCH_CONFIGS_FILE = Path(__file__).with_name("bench_configs.json")
GOLDEN_ENV = "COGVLM_GOLDEN"
FULL_SIZE_PRESETS = ("cogvlm-17b-490", "cogagent-18b")


def _embedded_assets() -> dict[str, Path]:
    return {"tokenizer.model": embedded_checkpoint() / "tokenizer.model", "test_image.png": example_image()}


def default_asset(name: str) -> Path:
    """A golden-set file (the protocol's image, tokenizer): from `$COGVLM_GOLDEN` when set, else from
    ../shared/golden; without a golden set, the embedded model's tokenizer or example image instead
    (the figures then differ a little from the reference's: other prompt tokens, another picture)."""
    if os.environ.get(GOLDEN_ENV):
        candidates = [Path(os.environ[GOLDEN_ENV])]
    else:
        candidates = [Path("../shared/golden"), Path(__file__).resolve().parents[3] / "shared" / "golden"]
    for directory in candidates:
        if (directory / name).is_file():
            return directory / name
    return _embedded_assets().get(name, candidates[0] / name)


def reference_configs() -> dict:
    """The reference's bench configs and protocol, as `bench_configs.json` holds them."""
    return json.loads(BENCH_CONFIGS_FILE.read_text())


def bench_config_names() -> tuple[str, ...]:
    """The reference's configs followed by the full-size presets."""
    return tuple(name for name in reference_configs() if not name.startswith(("_", "protocol"))) + (
        FULL_SIZE_PRESETS
    )
