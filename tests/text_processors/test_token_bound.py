"""`LlamaTokenizer.min_token_count` never exceeds the real token count, whatever the text."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogvlm.frontends.text_checks import prefix_token_bound
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden_models import tokenizer_file

EMBEDDED = Path(__file__).resolve().parents[2] / "cogvlm" / "embedded" / "model" / "tokenizer.model"
TOKENIZERS = {"golden": tokenizer_file(), "embedded": EMBEDDED}
SAMPLES = [
    "",
    "word " * 2000,
    "x" * 5000,
    " " * 3000,
    "\t\n \u3000\u00a0" * 400,
    "é中文😀" * 300,
    "\ufb01\u2126\u212b" * 500,  # characters NFKC rewrites
    "<s></s><unk>" * 200,
]


@functools.cache
def _golden() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(TOKENIZERS["golden"])


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request) -> LlamaTokenizer:
    return LlamaTokenizer.from_file(TOKENIZERS[request.param])


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_the_bound_is_at_most_the_token_count(tokenizer, index):
    text = SAMPLES[index]
    assert tokenizer.min_token_count(text) <= len(tokenizer.encode(text))


def test_the_bound_grows_with_the_text(tokenizer):
    # A bound of 0 would be a valid but useless lower bound: a long text must give a large one.
    text = "word " * 20_000
    assert tokenizer.min_token_count(text) >= len(text) // tokenizer.max_piece_chars


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_the_bound_holds_for_any_text(text):
    tokenizer = _golden()
    assert tokenizer.min_token_count(text) <= len(tokenizer.encode(text))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=0, max_value=400))
def test_the_bound_from_a_prefix_holds_for_any_text_and_cut(text, prefix_chars):
    tokenizer = _golden()
    assert prefix_token_bound(tokenizer, text, prefix_chars) <= len(tokenizer.encode(text))


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_the_bound_from_a_prefix_holds_at_every_cut(tokenizer, index):
    text = SAMPLES[index][:600]
    count = len(tokenizer.encode(text))
    assert all(prefix_token_bound(tokenizer, text, cut) <= count for cut in range(0, len(text), 7))
