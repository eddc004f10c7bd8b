"""Training a LLaMA-style tokenizer for a model trained from scratch."""

from __future__ import annotations

from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.train.tokenizer import train_tokenizer

TEXTS = [
    f"What color is the {shape}? It is {color}, at [[{i:03d},{2 * i:03d},{i + 50:03d},{i + 90:03d}]]."
    for i, (shape, color) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")] * 40)
]


def test_trained_tokenizer_has_the_llama_conventions(tmp_path):
    path = train_tokenizer(TEXTS, tmp_path / "tokenizer.model", vocab_size=320)
    tokenizer = LlamaTokenizer.from_file(path)
    assert tokenizer.vocab_size == 320
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 0)
    digits = [tokenizer.piece(i) for i in tokenizer.encode("[[123,456")]
    assert [p for p in digits if any(c.isdigit() for c in p)] == ["1", "2", "3", "4", "5", "6"]
    unseen = "Ünïcødé ✓ 漢字"
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen  # byte fallback covers any text


def test_training_is_deterministic(tmp_path):
    first = train_tokenizer(TEXTS, tmp_path / "a.model", vocab_size=300).read_bytes()
    second = train_tokenizer(TEXTS, tmp_path / "b.model", vocab_size=300).read_bytes()
    assert first == second
