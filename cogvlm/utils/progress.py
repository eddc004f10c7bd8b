"""Byte progress bars on stderr for long reads (extraction, checksums, CRCs): shown only on a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


def byte_bar(description: str, total: int | None, enabled: bool = True) -> tqdm:
    """A tqdm bar counting bytes on stderr; disabled when `enabled` is false or stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        file=sys.stderr,
        leave=False,
        disable=not enabled or not sys.stderr.isatty(),
    )
