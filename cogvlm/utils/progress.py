"""Progress bars for long steps: a tqdm bar on stderr when stderr is a terminal, otherwise nothing.

Logs and pipes stay clean: under a launcher, in CI or with output redirected, no bar is drawn. tqdm is
an optional dependency (the `train` extra); without it the bar is silently left out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class SilentProgress:
    """The bar's interface, doing nothing: what `progress` returns when no bar is shown."""

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


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    stream: TextIO | None = None,
    enabled: bool | None = None,
):
    """A tqdm bar over `iterable` (or updated by hand) on `stream` (default stderr).

    `enabled=None` shows it only when `stream` is a terminal; False never shows it.
    """
    stream = sys.stderr if stream is None else stream
    show = is_terminal(stream) if enabled is None else enabled
    if show:
        try:
            from tqdm import tqdm
        except ImportError:
            show = False
    if not show:
        return SilentProgress(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
