"""Streaming text pieces: whole characters only, stop strings cut and never shown."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogvlm.inference.stopping import StopStrings
from cogvlm.inference.streaming import TextStream
from cogvlm.text_processors.streaming import REPLACEMENT_CHAR
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden import golden_dir


@functools.cache
def tokenizer() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(golden_dir() / "tokenizer.model")


def _pieces(ids: list[int], stops=()) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer(), stops)
    return [stream.push(i) for i in ids] + [stream.finish()], stream


def test_stop_string_search_and_pending_tail():
    stops = StopStrings(["END", "\n\n"])
    assert stops.find("abc END x\n\n") == 4
    assert stops.find("abc") is None
    assert stops.pending_length("abc EN") == 2
    assert stops.pending_length("abc\n") == 1
    assert stops.pending_length("abc") == 0
    assert stops.find("END abc END", start=1) == 8
    assert stops.longest == 3


def test_each_search_reads_only_the_tail_a_new_piece_can_complete(monkeypatch):
    scanned = []
    original = StopStrings.find

    def recording_find(self, text, start=0):
        scanned.append(len(text) - start)
        return original(self, text, start)

    monkeypatch.setattr(StopStrings, "find", recording_find)
    ids = tokenizer().encode("a long answer " * 40)
    pieces, stream = _pieces(ids, ["STOP", "answer!"])
    assert "".join(pieces) == stream.text and len(stream.text) > 400
    # Every search covers the new piece plus at most len("answer!") - 1 characters before it, however
    # long the text has grown; the longest piece of this text is one token's few characters.
    assert scanned and max(scanned) <= max(len(tokenizer().decode([i])) for i in ids) + 6 + 1


def test_an_empty_stop_string_is_refused():
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        StopStrings(["a", ""])


def test_pieces_join_to_the_decoded_text_without_a_stop():
    ids = tokenizer().encode("A red box, a blue circle and a green triangle.")
    pieces, stream = _pieces(ids)
    assert "".join(pieces) == tokenizer().decode(ids, skip_special_tokens=True) == stream.text


def test_a_multibyte_character_is_never_split_across_pieces():
    ids = tokenizer().encode("caf\u00e9 \u2603 ok")  # byte-fallback pieces for é and ☃
    pieces, _ = _pieces(ids)
    assert not any(REPLACEMENT_CHAR in piece for piece in pieces)
    assert "".join(pieces) == "caf\u00e9 \u2603 ok"


def test_text_is_cut_before_the_stop_string_which_is_never_emitted():
    ids = tokenizer().encode("one two three four")
    pieces, stream = _pieces(ids, ["three"])
    assert "".join(pieces) == "one two "
    assert stream.hit_stop_string
    assert not any("thr" in piece for piece in pieces)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="ab c\u00e9\n", min_size=0, max_size=30),
    stop=st.sampled_from(["c a", "b\n", "\u00e9b"]),
)
def test_streamed_pieces_equal_the_whole_text_cut_at_the_first_stop(text, stop):
    ids = tokenizer().encode(text)
    pieces, _ = _pieces(ids, [stop])
    full = tokenizer().decode(ids, skip_special_tokens=True)
    cut = full.find(stop)
    assert "".join(pieces) == (full if cut < 0 else full[:cut])
    assert all(stop not in piece for piece in pieces)
