"""Tests of cogvlm.text_processors.streaming."""

from __future__ import annotations

import functools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cogvlm.text_processors.streaming import REPLACEMENT_CHAR, IncrementalDecoder
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden import golden_dir


@functools.cache
def tokenizer() -> LlamaTokenizer:
    """The shared golden tokenizer."""
    return LlamaTokenizer.from_file(golden_dir() / "tokenizer.model")


def _byte_piece(value: int) -> int:
    """Id of `<0xNN>`."""
    return tokenizer().piece_id(f"<0x{value:02X}>")


def stream(ids: list[int]) -> list[str]:
    """The pieces an IncrementalDecoder returns for `ids`, flush last."""
    decoder = IncrementalDecoder(tokenizer())
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def check_stream(ids: list[int]) -> None:
    """No pushed piece ends inside a character, and all pieces add up to the full decode."""
    pieces = stream(ids)
    assert not any(p.endswith(REPLACEMENT_CHAR) for p in pieces[:-1]), pieces
    assert "".join(pieces) == tokenizer().decode(ids, skip_special_tokens=True)


# Ids drawn from the whole vocabulary, from byte-fallback pieces of multi-byte UTF-8 lead and continuation
# bytes, from specials, and from the space pieces whose leading "▁" decoding strips.
SOME_IDS = st.one_of(
    st.integers(0, 1023),
    st.integers(3, 258),
    st.sampled_from([0, 1, 2, 290, 962]),
    st.sampled_from([0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80]).map(_byte_piece),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(SOME_IDS, max_size=16))
def test_stream_never_ends_a_piece_mid_character_and_concatenates_to_decode(ids):
    check_stream(ids)


def test_stream_of_seeded_random_ids_concatenates_to_decode():
    rng = random.Random(1234)
    for _ in range(300):
        check_stream([rng.randrange(tokenizer().vocab_size) for _ in range(rng.randint(1, 24))])


def test_stream_waits_for_the_last_byte_of_a_character():
    emoji = [_byte_piece(b) for b in "😀".encode()]
    a = tokenizer().encode("a")
    assert stream([*a, *emoji]) == ["a", "", "", "", "😀", ""]


def test_flush_returns_an_incomplete_character_as_replacement():
    pieces = stream([*tokenizer().encode("a"), _byte_piece(0xE2), _byte_piece(0x82)])
    assert pieces[:3] == ["a", "", ""]
    assert pieces[-1].endswith(REPLACEMENT_CHAR)


def test_stream_of_golden_like_continuation_matches_skip_special_decode():
    ids = tokenizer().encode("A red box and a blue circle.") + [tokenizer().eos_id]
    assert "".join(stream(ids)) == "A red box and a blue circle."
