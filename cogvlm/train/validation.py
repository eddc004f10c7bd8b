"""A data set checked whole before training starts, so that no bad record surfaces at step N.

Every record must be well-formed, and every image must lie inside the data folder (the image folder,
or the JSONL file's folder; symbolic links resolved), exist, decode, and hold at most `max_pixels`
pixels. The error names the first offending records with their reasons and counts them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cogvlm.errors import DatasetError, ImageError
from cogvlm.image_processors.loading import DEFAULT_MAX_PIXELS, load_image
from cogvlm.train.data import Sample, SkippedSample, data_root, describe_problems, read_records
from cogvlm.utils.progress import progress


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symbolic link resolved, lies under `root` (also resolved)."""
    return path.resolve().is_relative_to(root.resolve())


def sample_problem(sample: Sample, root: Path, allow_outside: bool, max_pixels: int) -> str | None:
    """Why `sample` cannot be trained on, or None when it can."""
    if not sample.answer.strip():
        return "the answer is empty"
    image = sample.image
    if not allow_outside and not is_inside(image, root):
        return (
            f"image {image} lies outside the data folder {root} (symbolic links resolved); "
            "--allow_outside_data allows it"
        )
    if not image.is_file():
        return f"image {image} not found"
    try:
        load_image(image, max_pixels=max_pixels)
    except ImageError as error:
        return str(error)
    return None


def check_samples(
    samples: Sequence[Sample],
    root: Path,
    *,
    allow_outside: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "checking data",
    show_progress: bool = True,
) -> list[SkippedSample]:
    """Every sample that cannot be trained on, with its reason (a progress bar on a terminal)."""
    problems = []
    enabled = None if show_progress else False
    for sample in progress(samples, total=len(samples), desc=desc, unit="image", enabled=enabled):
        reason = sample_problem(sample, root, allow_outside, max_pixels)
        if reason is not None:
            problems.append(SkippedSample(sample.source or str(sample.image), reason))
    return problems


def load_checked_samples(
    path: str | Path,
    prompt: str = "CAPTCHA:",
    *,
    allow_outside: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    what: str = "data",
    show_progress: bool = True,
) -> list[Sample]:
    """The samples at `path`, all checked; any problem raises `DatasetError` listing the offenders."""
    samples, malformed = read_records(path, prompt)
    problems = malformed + check_samples(
        samples,
        data_root(path),
        allow_outside=allow_outside,
        max_pixels=max_pixels,
        desc=f"checking {what} data",
        show_progress=show_progress,
    )
    if problems:
        total = len(samples) + len(malformed)
        raise DatasetError(describe_problems(problems, f"{what} data {path} ({total} records)"))
    return samples
