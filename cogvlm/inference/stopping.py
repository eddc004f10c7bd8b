"""Stop strings: where generated text must end, and how much of its tail may still grow into one."""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """A set of strings at whose first occurrence generated text is cut."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        empty = [s for s in stop_strings if not s]
        if empty:
            raise ValueError(f"stop strings must not be empty, got {list(stop_strings)!r}")
        self.strings = tuple(stop_strings)

    def __bool__(self) -> bool:
        return bool(self.strings)

    @property
    def longest(self) -> int:
        """Length of the longest stop string (0 when there is none)."""
        return max(map(len, self.strings), default=0)

    def find(self, text: str, start: int = 0) -> int | None:
        """Index where the earliest stop string starts in `text` at or after `start`, or None."""
        found = [index for s in self.strings if (index := text.find(s, start)) >= 0]
        return min(found) if found else None

    def pending_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string.

        Streaming holds that tail back: the next tokens may complete the stop string, which is never shown.
        """
        longest = 0
        for stop in self.strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
