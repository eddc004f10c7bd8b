"""Write tests/image_processors/data/resample_reference.npz: Pillow 13.0.0's bicubic resizes of the cases.

The cases (tests/image_processors/resample_cases.py) go through our `load_image` and then Pillow's own
`Image.resize(size, BICUBIC)`, the reference of the golden vectors; `test_resample.py` checks that
`resize_bicubic` gives the same pixels under any installed Pillow. The script refuses to run unless Pillow
is exactly 13.0.0. It imports cogvlm (and so torch), hence a venv that sees the system packages:

    python3 -m venv --system-site-packages /tmp/pil13 && /tmp/pil13/bin/pip install pillow==13.0.0
    PYTHONPATH=. /tmp/pil13/bin/python tools/make_resample_fixtures.py
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import numpy as np
import PIL
from PIL import Image

from cogvlm.image_processors.loading import load_image
from tests.image_processors.resample_cases import (
    CASES,
    FIXTURE_PATH,
    FULL_ARRAY_MAX_PIXELS,
    GRID_INPUTS,
    GRID_OUTPUTS,
    REFERENCE_PILLOW,
    ResampleCase,
    cases_description,
    encode,
    grid_row,
    source_image,
)


def reference_pixels(case: ResampleCase, encoded: bytes | None) -> np.ndarray:
    """Pillow's resize of the case's image as our loader decodes it: uint8 [height, width, 3]."""
    image = load_image(encoded if encoded is not None else source_image(case))
    return np.asarray(image.resize(case.target, Image.Resampling.BICUBIC))


def case_arrays(case: ResampleCase) -> dict[str, np.ndarray]:
    """The fixture entries of one case: digest and channel sums, the full array if small, its encoding."""
    encoded = encode(case) if case.encoding else None
    pixels = reference_pixels(case, encoded)
    arrays = {
        f"digest__{case.name}": np.frombuffer(hashlib.sha256(pixels.tobytes()).digest(), dtype=np.uint8),
        f"sums__{case.name}": pixels.reshape(-1, 3).sum(axis=0, dtype=np.int64),
    }
    if case.target[0] * case.target[1] <= FULL_ARRAY_MAX_PIXELS:
        arrays[f"pixels__{case.name}"] = pixels
    if encoded is not None:
        arrays[f"encoded__{case.name}"] = np.frombuffer(encoded, dtype=np.uint8)
    return arrays


def grid_values() -> np.ndarray:
    """Every grid result, one-row grey images, input length major: uint8 [len(GRID_INPUTS) * sum(outputs)]."""
    results = []
    for length in GRID_INPUTS:
        row = Image.fromarray(grid_row(length)[None, :])  # mode L, [1, length]
        results += [np.asarray(row.resize((size, 1), Image.Resampling.BICUBIC))[0] for size in GRID_OUTPUTS]
    return np.concatenate(results)


def main() -> None:
    if PIL.__version__ != REFERENCE_PILLOW:
        sys.exit(
            f"make_resample_fixtures: needs Pillow {REFERENCE_PILLOW} exactly, this is {PIL.__version__}"
        )
    arrays = {
        "pillow_version": np.array(PIL.__version__),
        "cases": np.array(cases_description()),
        "grid": grid_values(),
    }
    for case in CASES:
        arrays |= case_arrays(case)
    FIXTURE_PATH.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed over it, so a failed run leaves the old fixture whole.
    handle, temporary = tempfile.mkstemp(dir=FIXTURE_PATH.parent, suffix=".npz")
    os.chmod(temporary, 0o644)  # mkstemp makes it private; the fixture is an ordinary tracked file
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, FIXTURE_PATH)
    except BaseException:
        os.unlink(temporary)
        raise
    print(f"wrote {FIXTURE_PATH}: {len(CASES)} cases, {FIXTURE_PATH.stat().st_size} bytes")


if __name__ == "__main__":
    main()
