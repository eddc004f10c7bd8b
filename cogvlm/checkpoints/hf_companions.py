"""The files an HF checkpoint folder carries beside its weights, so other tools can use it as it is.

`transformers` with the published remote code reads `generation_config.json` and, for the tokenizer, a
`tokenizer.model` with `tokenizer_config.json` and `special_tokens_map.json` (CogVLM's HF repositories
ship none: their README points to vicuna-7b-v1.5). `hf_companions` gathers them for a conversion: files
the source (or the tokenizer's folder) already has are copied, the others are written from our config,
the reference's generation settings and the tokenizer itself.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cogvlm.checkpoints.loading import GENERATION_CONFIG_FILE
from cogvlm.errors import TokenizerError
from cogvlm.inference.settings import REFERENCE_SAMPLING
from cogvlm.models.config import CogVLMConfig
from cogvlm.text_processors.tokenizer import TOKENIZER_FILE, LlamaTokenizer, find_tokenizer

logger = logging.getLogger(__name__)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"


def hf_generation_config(config: CogVLMConfig) -> dict:
    """`generation_config.json` for `config`: the reference's sampling (greedy: top_k 1), whole context."""
    sampling = REFERENCE_SAMPLING
    raw: dict = {"do_sample": sampling.top_k != 1}
    if raw["do_sample"]:
        raw.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    raw.update(
        repetition_penalty=sampling.repetition_penalty,
        max_length=config.llm.max_sequence_length,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return raw


def special_tokens_map(tokenizer: LlamaTokenizer) -> dict:
    """`special_tokens_map.json` of a LLaMA sentencepiece tokenizer."""
    return {
        "bos_token": tokenizer.piece(tokenizer.bos_id),
        "eos_token": tokenizer.piece(tokenizer.eos_id),
        "unk_token": tokenizer.piece(tokenizer.unk_id),
        "pad_token": tokenizer.piece(tokenizer.pad_id),
    }


def hf_tokenizer_config(tokenizer: LlamaTokenizer, config: CogVLMConfig) -> dict:
    """`tokenizer_config.json` for `transformers`' LlamaTokenizer: BOS added, no EOS, the context length."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        **special_tokens_map(tokenizer),
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.llm.max_sequence_length,
    }


def _tokenizer_for(source: Path, config: CogVLMConfig, local_tokenizer: str | None) -> LlamaTokenizer | None:
    try:
        tokenizer = find_tokenizer(source, local_tokenizer)
    except TokenizerError as error:
        logger.warning("the converted folder gets no tokenizer files (%s); pass --local_tokenizer", error)
        return None
    if tokenizer.vocab_size > config.llm.vocab_size:
        logger.warning(
            "the converted folder gets no tokenizer files: %s has %d pieces, more than the model's "
            "vocab_size %d; pass --local_tokenizer",
            tokenizer.source,
            tokenizer.vocab_size,
            config.llm.vocab_size,
        )
        return None
    return tokenizer


@contextmanager
def hf_companions(
    source: Path, config: CogVLMConfig, local_tokenizer: str | None = None
) -> Iterator[dict[str, Path]]:
    """{name: file} of the generation and tokenizer files for an HF folder converted from `source`.

    The tokenizer is `local_tokenizer`, else the one beside `source`, else vicuna-7b-v1.5 from the HF
    cache (`find_tokenizer`); one whose vocabulary is larger than the model's is left out with a warning.
    Generated files live in a temporary folder until the context ends.
    """
    with tempfile.TemporaryDirectory(prefix="cogvlm-hf-files-") as scratch:

        def existing_or_written(name: str, folder: Path, content: dict) -> Path:
            if (folder / name).is_file():
                return folder / name
            path = Path(scratch) / name
            path.write_text(json.dumps(content, indent=2))
            return path

        files = {
            GENERATION_CONFIG_FILE: existing_or_written(
                GENERATION_CONFIG_FILE, source, hf_generation_config(config)
            )
        }
        tokenizer = _tokenizer_for(source, config, local_tokenizer)
        if tokenizer is not None:
            model_file = Path(tokenizer.source)
            files[TOKENIZER_FILE] = model_file
            files[TOKENIZER_CONFIG_FILE] = existing_or_written(
                TOKENIZER_CONFIG_FILE, model_file.parent, hf_tokenizer_config(tokenizer, config)
            )
            files[SPECIAL_TOKENS_FILE] = existing_or_written(
                SPECIAL_TOKENS_FILE, model_file.parent, special_tokens_map(tokenizer)
            )
        yield files
