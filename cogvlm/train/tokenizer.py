"""Training a LLaMA-style sentencepiece tokenizer for a model trained from scratch."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece

from cogvlm.utils.atomic import atomic_file


def train_tokenizer(texts: Iterable[str], output: str | Path, vocab_size: int) -> Path:
    """Train a BPE `tokenizer.model` with the options of LLaMA's (and the golden set's) tokenizer.

    Byte fallback (any text encodes), single digits (so box coordinates are digit by digit), the dummy
    prefix, no whitespace normalisation, ids unk=0, bos=1, eos=2 and no pad piece (pad falls back to unk).
    One training thread keeps the result identical from run to run.
    """
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    output = Path(output)
    with atomic_file(output) as handle:
        handle.write(model.getvalue())
    return output
