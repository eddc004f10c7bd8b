"""Tests of cogvlm.text_processors.tokenizer."""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
import sentencepiece

from cogvlm.errors import TokenizerError
from cogvlm.text_processors.tokenizer import LlamaTokenizer, hub_cache_dir, resolve_tokenizer_path
from tests.golden import case_id, golden_dir, json_cases, tokenizer_path

GENERATION_CASES = [c for c in json_cases("generation.json") if "decoded_full" in c[2]]

# Pieces random strings are built from: ASCII, whitespace runs, digits, accents, CJK, emoji (with modifiers
# and ZWJ), combining marks, invisible characters, and the strings the tokenizer treats specially elsewhere.
ALPHABET = [
    *"abcdefxyzABCQ0123456789.,?![]<>/-_'\"",
    *[" ", "  ", "   ", "\t", "\n", "\r\n", "\x00", "\u00a0", "\u200b", "\ufffd"],
    *["é", "ü", "ß", "中", "文", "Ж", "e\u0301", "😀", "👍🏽", "👨\u200d👩\u200d👧"],
    *["<s>", "</s>", "<unk>", "<EOI>", "[INST]", " the", " red box"],
]


@functools.cache
def load(path: Path) -> LlamaTokenizer:
    """A tokenizer per file, loaded once."""
    return LlamaTokenizer.from_file(path)


def golden_tokenizer() -> LlamaTokenizer:
    """The shared golden tokenizer."""
    return load(golden_dir() / "tokenizer.model")


def random_strings(seed: int, count: int) -> list[str]:
    """`count` seeded random strings of 0 to 24 alphabet pieces."""
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24))) for _ in range(count)]


@pytest.mark.parametrize("case", GENERATION_CASES, ids=case_id)
def test_decode_reproduces_golden_decoded_full(case):
    model_dir, _, golden = case
    tokenizer = load(tokenizer_path(model_dir))
    assert tokenizer.decode(golden["output_ids"]) == golden["decoded_full"]


def test_encode_equals_plain_sentencepiece_on_random_strings():
    tokenizer = golden_tokenizer()
    plain = _plain_golden_tokenizer()
    for text in random_strings(seed=20240601, count=400):
        assert tokenizer.encode(text) == plain.encode(text), repr(text)


def test_encode_keeps_the_dummy_prefix_and_adds_no_bos_or_eos():
    tokenizer = golden_tokenizer()
    ids = tokenizer.encode(" [INST]")
    assert "".join(tokenizer.piece(i) for i in ids).startswith("\u2581\u2581")  # dummy prefix + own space
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
    assert tokenizer.encode("") == []


def test_decode_of_encode_returns_the_text_minus_one_leading_space():
    tokenizer = golden_tokenizer()
    for text in random_strings(seed=7, count=400):
        if "\u2581" in text:  # a literal "▁" decodes to a space, by design of sentencepiece
            continue
        expected = text[1:] if text.startswith(" ") else text
        assert tokenizer.decode(tokenizer.encode(text)) == expected, repr(text)


def test_decode_renders_special_tokens_with_the_legacy_spacing():
    tokenizer = golden_tokenizer()
    a, b = tokenizer.encode("a")[0], tokenizer.encode("b")[0]
    assert tokenizer.decode([tokenizer.bos_id, tokenizer.eos_id]) == "<s></s>"
    # legacy=True puts a space before the text run that precedes a special token
    assert tokenizer.decode([a, tokenizer.eos_id]) == " a</s>"
    assert tokenizer.decode([tokenizer.bos_id, a, b, tokenizer.eos_id, tokenizer.bos_id]) == "<s> a b</s><s>"
    assert tokenizer.decode([tokenizer.unk_id] * 3) == "<unk><unk><unk>"


def test_decode_skip_special_tokens_drops_bos_eos_and_unk():
    tokenizer = golden_tokenizer()
    ids = tokenizer.encode("a red box")
    noisy = [tokenizer.bos_id, tokenizer.unk_id, *ids, tokenizer.eos_id]
    assert tokenizer.decode(noisy, skip_special_tokens=True) == "a red box"
    assert tokenizer.decode([tokenizer.eos_id], skip_special_tokens=True) == ""


def _plain_golden_tokenizer() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(golden_dir() / "tokenizer.model"))


def test_special_ids_and_pad_fall_back_to_unk_without_a_pad_piece():
    tokenizer, plain = golden_tokenizer(), _plain_golden_tokenizer()
    assert plain.pad_id() == -1  # the golden README: no pad piece, as in LLaMA's tokenizer
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (
        plain.unk_id(),
        plain.bos_id(),
        plain.eos_id(),
    )
    assert tokenizer.pad_id == tokenizer.unk_id
    assert tokenizer.vocab_size == plain.get_piece_size()


def test_decode_rejects_out_of_range_ids_naming_the_id():
    size = golden_tokenizer().vocab_size
    with pytest.raises(TokenizerError, match=f"token id {size} is out of range for vocabulary size {size}"):
        golden_tokenizer().decode([5, size])


def test_from_file_accepts_the_containing_directory():
    assert load(golden_dir()).encode("a red box") == golden_tokenizer().encode("a red box")


def test_from_file_of_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(
        TokenizerError, match=re.escape(f"tokenizer model not found: {tmp_path / 'tokenizer.model'}")
    ):
        LlamaTokenizer.from_file(tmp_path)


def test_from_file_of_corrupt_tokenizer_names_the_path(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match=re.escape(f"tokenizer {bad}: not a sentencepiece model")):
        LlamaTokenizer.from_file(bad)


def make_hub_snapshot(hub: Path, repo_id: str, revision: str, with_ref: bool = True) -> Path:
    """A hub-cache layout `models--a--b/snapshots/<rev>/tokenizer.model`, optionally with `refs/main`."""
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.model").write_bytes((golden_dir() / "tokenizer.model").read_bytes())
    if with_ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision + "\n")
    return snapshot / "tokenizer.model"


def test_resolve_accepts_a_file_and_a_directory():
    assert resolve_tokenizer_path(str(golden_dir() / "tokenizer.model")) == golden_dir() / "tokenizer.model"
    assert resolve_tokenizer_path(str(golden_dir())) == golden_dir() / "tokenizer.model"


def test_resolve_finds_a_repo_id_in_the_hub_cache_following_refs_main(tmp_path):
    make_hub_snapshot(tmp_path / "hub", "lmsys/vicuna-7b-v1.5", "old")
    wanted = make_hub_snapshot(tmp_path / "hub", "lmsys/vicuna-7b-v1.5", "abc123")
    assert resolve_tokenizer_path("lmsys/vicuna-7b-v1.5", hf_home=tmp_path) == wanted
    assert resolve_tokenizer_path(None, hf_home=tmp_path) == wanted


def test_resolve_reads_hf_hub_cache_from_the_environment(tmp_path, monkeypatch):
    wanted = make_hub_snapshot(tmp_path / "cache", "org/tok", "r1", with_ref=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"
    assert resolve_tokenizer_path("org/tok") == wanted


def test_hub_cache_dir_prefers_hf_hub_cache_then_hf_home():
    assert hub_cache_dir(environ={"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert hub_cache_dir(environ={"HF_HOME": "/b"}) == Path("/b/hub")
    assert hub_cache_dir(environ={}) == Path("~/.cache/huggingface/hub").expanduser()


def test_resolve_of_missing_tokenizer_lists_the_paths_tried(tmp_path):
    expected = "tokenizer 'org/missing' not found .*" + re.escape(
        str(tmp_path / "hub" / "models--org--missing")
    )
    with pytest.raises(TokenizerError, match=expected):
        resolve_tokenizer_path("org/missing", hf_home=tmp_path)
    with pytest.raises(TokenizerError, match=re.escape(f"tried: {tmp_path}, {tmp_path / 'tokenizer.model'}")):
        resolve_tokenizer_path(str(tmp_path))


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("caf\udce9 au lait", "caf\ufffd au lait"),  # an undecodable byte kept by `surrogateescape`
        ("a\ud800b", "a\ufffdb"),  # a lone high surrogate, as JSON's "\ud800" gives
        ("end \udfff", "end \ufffd"),
    ],
)
def test_lone_surrogates_encode_as_the_replacement_character(text, clean):
    tokenizer = golden_tokenizer()
    plain = sentencepiece.SentencePieceProcessor(model_file=str(golden_dir() / "tokenizer.model"))
    with pytest.raises(RuntimeError):  # what sentencepiece itself does with them
        plain.encode(text)
    assert tokenizer.encode(text) == tokenizer.encode(clean) == plain.encode(clean)
    assert tokenizer.encode("ok é 中 😀") == plain.encode("ok é 中 😀")  # valid text is untouched
