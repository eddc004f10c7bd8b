"""Generated token ids to text pieces: never inside a UTF-8 character, never showing a stop string."""

from __future__ import annotations

from collections.abc import Sequence

from cogvlm.inference.stopping import StopStrings
from cogvlm.text_processors.streaming import Decoder, IncrementalDecoder


class TextStream:
    """Feeds one sequence's generated ids through an `IncrementalDecoder` and cuts at stop strings.

    `push` returns the text that became final; `finish` returns the rest. Their concatenation equals
    `text`, which is `decode(ids, skip_special_tokens=True)` cut before the first stop string.
    """

    def __init__(self, tokenizer: Decoder, stop_strings: Sequence[str] = ()) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = StopStrings(stop_strings)
        self._text = ""
        self._emitted = 0
        self.hit_stop_string = False

    @property
    def text(self) -> str:
        """The text so far (cut before a stop string once one was seen)."""
        return self._text

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly final text ("" while waiting or after a stop string)."""
        if self.hit_stop_string:
            return ""
        self._extend(self._decoder.push(token_id))
        if self.hit_stop_string:
            return self._emit(len(self._text))
        return self._emit(len(self._text) - self._stops.pending_length(self._text))

    def finish(self) -> str:
        """Everything not yet returned (an incomplete character at the very end shows as U+FFFD)."""
        if not self.hit_stop_string:
            self._extend(self._decoder.flush())
        return self._emit(len(self._text))

    def _extend(self, piece: str) -> None:
        # The text before `piece` held no stop string, so one can only end inside `piece`: search its tail
        # alone, which keeps a long generation linear in its length.
        start = max(0, len(self._text) - self._stops.longest + 1)
        self._text += piece
        cut = self._stops.find(self._text, start)
        if cut is not None:
            self._text = self._text[:cut]
            self.hit_stop_string = True

    def _emit(self, end: int) -> str:
        end = max(end, self._emitted)
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece
