"""Incremental detokenization for streaming output, safe against split UTF-8 byte sequences."""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    """Anything that decodes ids to text the way `LlamaTokenizer.decode` does."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        ...


class IncrementalDecoder:
    """Turns generated ids, fed one at a time, into text pieces for streaming.

    Like the official `--stream_chat`, it decodes everything generated so far and emits the new suffix, but
    waits while the text ends with U+FFFD (a byte-fallback character whose remaining bytes have not been
    generated yet). Special tokens (`</s>`, `<unk>`, ...) are skipped: they produce no text, and with them the
    legacy decoder would insert spaces *before* text it has already emitted. The concatenation of every
    `push` result and `flush()` equals `tokenizer.decode(all_ids, skip_special_tokens=True)`.
    """

    def __init__(self, tokenizer: Decoder):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    @property
    def ids(self) -> list[int]:
        """The ids pushed so far."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that is now final ("" while waiting)."""
        self._ids.append(int(token_id))
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._take(text)

    def flush(self) -> str:
        """Return everything not yet emitted, incomplete characters included (as U+FFFD)."""
        return self._take(self._tokenizer.decode(self._ids, skip_special_tokens=True))

    def _take(self, text: str) -> str:
        """Emit the part of `text` after what was already emitted."""
        # sentencepiece decoding only appends once the text no longer ends in U+FFFD, so emitted text
        # is always a prefix of later decodes; checked by tests with random and byte-fallback ids.
        assert text.startswith(self._emitted), (self._emitted, text)
        new = text[len(self._emitted) :]
        self._emitted = text
        return new
