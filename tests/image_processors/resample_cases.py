"""The cases of the resample reference fixture, shared by its generator and its tests.

`tools/make_resample_fixtures.py` runs these cases through Pillow 13.0.0 and stores the results in
`data/resample_reference.npz`; `test_resample.py` runs them through `resize_bicubic` under whatever Pillow
is installed. Source pixels come from a counter-based hash (splitmix64), not from a numpy random
generator, so they are the same on every numpy version and need not be stored.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE_PATH = Path(__file__).parent / "data" / "resample_reference.npz"
REFERENCE_PILLOW = "13.0.0"
FULL_ARRAY_MAX_PIXELS = 32 * 32  # larger results are stored as a SHA-256 digest and channel sums

# One-axis grid: every input length against every output length, on a one-row grey image.
GRID_INPUTS = (1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 56, 64, 84, 97, 127, 224, 225, 300, 490, 640, 799, 1000)
GRID_INPUTS += (1080, 1119, 1120, 1121, 1500, 1920, 2048, 3001, 4000)
GRID_OUTPUTS = (1, 2, 3, 5, 7, 14, 42, 56, 84, 99, 223, 224, 225, 333, 490, 491, 1120)

_BANDS = {"1": 1, "L": 1, "P": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "La": 2, "PA": 2}
_BANDS |= {"RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4}


@dataclass(frozen=True)
class ResampleCase:
    """One image through `load_image` and a bicubic resize to `target` (width, height)."""

    name: str
    mode: str
    source: tuple[int, int]  # (width, height)
    target: tuple[int, int]
    content: str = "noise"  # "noise", "photo" (smooth with noise) or "edges" (black and white blocks)
    seed: int = 0
    encoding: str = ""  # "PNG" or "JPEG": the image is given as these bytes, stored in the fixture
    transparency: bool = False  # mode P only: a tRNS-style transparency table


def hashed_bytes(seed: int, count: int) -> np.ndarray:
    """`count` pseudo-random uint8 values, a pure function of (`seed`, position): splitmix64's finaliser."""
    offset = np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    x = np.arange(count, dtype=np.uint64) + offset
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) >> np.uint64(56)).astype(np.uint8)


def source_values(content: str, seed: int, width: int, height: int, bands: int) -> np.ndarray:
    """uint8 [height, width, bands] of the given kind of content."""
    noise = hashed_bytes(seed, height * width * bands).reshape(height, width, bands).astype(np.int64)
    if content == "noise":
        return noise.astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    if content == "photo":
        ramps = [xs * 255 // max(width, 1), ys * 255 // max(height, 1), (xs + 2 * ys) % 256]
        smooth = np.stack([ramps[band % 3] for band in range(bands)], axis=-1)
        return np.clip(smooth + noise // 8 - 16, 0, 255).astype(np.uint8)
    if content == "edges":
        cells = hashed_bytes(seed + 1, (height // 5 + 1) * (width // 3 + 1) * bands)
        cells = cells.reshape(height // 5 + 1, width // 3 + 1, bands)
        return np.where(cells[ys // 5, xs // 3] > 127, 255, 0).astype(np.uint8)
    raise ValueError(f"unknown content {content!r}")


def source_image(case: ResampleCase) -> Image.Image:
    """The case's decoded source image in its mode (before any encoding)."""
    width, height = case.source
    values = source_values(case.content, case.seed, width, height, _BANDS[case.mode])
    if case.mode == "1":
        return Image.fromarray(values[..., 0] > 127)
    if case.mode == "I":
        return Image.fromarray(values[..., 0].astype(np.int32) * 1000 - 40000)  # beyond 16 bits: stretched
    if case.mode == "I;16":
        low = hashed_bytes(case.seed + 2, width * height).reshape(height, width)
        wide = values[..., 0].astype(np.uint32) * 256 + low  # full 16-bit range
        return Image.frombytes("I;16", (width, height), wide.astype("<u2").tobytes())
    if case.mode == "F":
        return Image.fromarray(values[..., 0].astype(np.float32) / 255)
    image = Image.frombytes(case.mode, (width, height), values.tobytes())
    if case.mode in ("P", "PA"):
        image.putpalette(hashed_bytes(case.seed + 3, 768).tobytes())
    if case.transparency:
        image.info["transparency"] = hashed_bytes(case.seed + 4, 256).tobytes()
    return image


def encode(case: ResampleCase) -> bytes:
    """The source image saved in the case's encoding (done once, by the fixture generator)."""
    buffer = io.BytesIO()
    options = {"quality": 90} if case.encoding == "JPEG" else {}
    source_image(case).save(buffer, format=case.encoding, **options)
    return buffer.getvalue()


def grid_row(length: int) -> np.ndarray:
    """The one-row grey source of the grid for input length `length`: uint8 [length]."""
    return hashed_bytes(10_000 + length, length)


def _cases() -> tuple[ResampleCase, ...]:
    """Every 2-D case: sizes on RGB, then each mode, then encoded files."""
    sizes = [
        ((1, 1), (5, 3)), ((1, 7), (3, 2)), ((9, 1), (4, 6)), ((1, 50), (224, 224)), ((50, 1), (7, 9)),
        ((37, 23), (11, 13)), ((13, 17), (41, 29)), ((64, 88), (42, 42)), ((100, 100), (90, 80)),
        ((100, 100), (90, 79)), ((97, 73), (56, 56)), ((97, 73), (84, 84)), ((500, 3), (224, 224)),
        ((3, 500), (224, 224)), ((2000, 100), (224, 224)), ((100, 2000), (224, 224)),
        ((225, 225), (224, 224)), ((223, 223), (224, 224)), ((491, 489), (490, 490)),
        ((1121, 1121), (1120, 1120)), ((1119, 1119), (1120, 1120)), ((1500, 1500), (224, 224)),
        ((1500, 1000), (224, 224)),
        ((3000, 200), (224, 224)), ((2400, 1800), (224, 224)), ((1500, 1000), (1120, 1120)),
        ((640, 480), (224, 224)), ((640, 480), (490, 490)), ((640, 480), (1120, 1120)),
        ((480, 640), (490, 490)), ((800, 600), (490, 490)), ((1920, 1080), (490, 490)),
        ((1080, 1920), (1120, 1120)), ((300, 200), (17, 301)), ((123, 456), (789, 10)), ((60, 40), (60, 41)),
        ((60, 40), (61, 40)), ((32, 32), (32, 32)),
    ]  # fmt: skip
    contents = ("noise", "photo", "edges")
    cases = [
        ResampleCase(f"rgb-{s[0]}x{s[1]}-to-{t[0]}x{t[1]}-{contents[i % 3]}", "RGB", s, t, contents[i % 3], i)
        for i, (s, t) in enumerate(sizes)
    ]
    modes = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
    modes += ("I", "I;16", "F")
    for i, mode in enumerate(modes):
        cases.append(ResampleCase(f"{mode}-61x47-to-224x224", mode, (61, 47), (224, 224), "photo", 100 + i))
        cases.append(ResampleCase(f"{mode}-300x200-to-56x56", mode, (300, 200), (56, 56), "noise", 200 + i))
    cases.append(
        ResampleCase("P-transparent-80x60-to-84x84", "P", (80, 60), (84, 84), seed=300, transparency=True)
    )
    cases += [
        ResampleCase("png-RGBA-120x90-to-224x224", "RGBA", (120, 90), (224, 224), "photo", 400, "PNG"),
        ResampleCase("png-P-100x80-to-56x56", "P", (100, 80), (56, 56), "edges", 401, "PNG"),
        ResampleCase("jpeg-RGB-320x240-to-224x224", "RGB", (320, 240), (224, 224), "photo", 402, "JPEG"),
        ResampleCase("jpeg-L-200x150-to-84x84", "L", (200, 150), (84, 84), "photo", 403, "JPEG"),
        ResampleCase("jpeg-CMYK-64x64-to-56x56", "CMYK", (64, 64), (56, 56), "photo", 404, "JPEG"),
    ]
    return tuple(cases)


CASES = _cases()


def cases_description() -> str:
    """The case list as text: the fixture stores it, so that a changed list asks for a new fixture."""
    rows = [repr(sorted(asdict(case).items())) for case in CASES]
    return "\n".join(rows + [f"grid {GRID_INPUTS} x {GRID_OUTPUTS}", f"full<={FULL_ARRAY_MAX_PIXELS}"])


@cache
def load_fixture() -> dict[str, np.ndarray]:
    """The reference arrays, loaded once: keys `digest__<case>`, `sums__<case>`, `pixels__<case>` (small
    results), `encoded__<case>` (encoded cases), `grid`, `cases` and `pillow_version`."""
    with np.load(FIXTURE_PATH) as arrays:
        return {name: arrays[name] for name in arrays.files}
