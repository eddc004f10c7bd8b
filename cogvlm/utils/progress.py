"""Progress bars for long steps: a tqdm bar on stderr when stderr is a terminal, otherwise nothing.

Logs and pipes stay clean: under a launcher, in CI or with output redirected, no bar is drawn. Two kinds:
`progress` counts items (iterations, tensors, samples), `byte_bar` counts bytes (extraction, checksums, CRCs).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class SilentProgress:
    """The bar's interface, doing nothing: what a bar is when none is shown."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        """Ignored."""

    def set_postfix_str(self, text: str) -> None:
        """Ignored."""

    @staticmethod
    def write(text: str, file: TextIO | None = None) -> None:
        """Print `text` (tqdm's `write` prints it above the bar)."""
        print(text, file=sys.stdout if file is None else file, flush=True)

    def close(self) -> None:
        """Nothing to close."""


def _bar(iterable: Iterable | None, stream: TextIO | None, enabled: bool | None, **options):
    """A tqdm bar on `stream` (default stderr), or a SilentProgress when it is not shown.

    `enabled=None` shows it only when `stream` is a terminal; False never shows it; True always does.
    """
    stream = sys.stderr if stream is None else stream
    if not (is_terminal(stream) if enabled is None else enabled):
        return SilentProgress(iterable)
    return tqdm(iterable, file=stream, dynamic_ncols=True, **options)


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    stream: TextIO | None = None,
    enabled: bool | None = None,
):
    """A bar over `iterable` (or updated by hand), counting `unit`s; see `_bar` for when it is shown."""
    return _bar(iterable, stream, enabled, total=total, desc=desc, unit=unit)


def byte_bar(description: str, total: int | None, enabled: bool = True):
    """A bar counting bytes (in units of 1000) on stderr, shown when `enabled` and stderr is a terminal."""
    return _bar(
        None,
        None,
        None if enabled else False,
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        leave=False,
    )
