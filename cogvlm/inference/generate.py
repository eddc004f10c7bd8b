"""Autoregressive generation with a preallocated KV cache: one prefill, then one token per step.

One engine serves a single prompt, a batch (left-padded, each row with its own positions, budget and
stopping), streaming and the benchmark. A row of a batch generates exactly what the same prompt gives
alone: same tokens, same sampling draws when seeded (each row owns a generator).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from cogvlm.errors import PromptTooLongError
from cogvlm.inference.batching import GenerationRequest, PromptBatch, collate
from cogvlm.inference.decode_step import (
    DECODE_STEP_KINDS,
    FIXED_SHAPE_KINDS,
    DecodeStepKind,
    build_decode_step,
)
from cogvlm.inference.sampling import SamplingConfig, sample
from cogvlm.inference.stopping import StopStrings
from cogvlm.inference.streaming import TextStream
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import ForwardContext
from cogvlm.nn.kv_cache import KVCache
from cogvlm.nn.rotary import reserve_rotary_positions
from cogvlm.parallel.collectives import broadcast_from_first_rank
from cogvlm.text_processors.inference import TextInputs
from cogvlm.text_processors.streaming import Decoder

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "GenerationRequest",
    "generate",
    "generate_batch",
    "iterate_batch",
    "kv_cache_bytes",
    "new_kv_cache",
    "stream_generation",
]


@dataclass(frozen=True)
class GenerationConfig:
    """When to stop and how to sample. `max_length` counts the whole sequence (prompt and image slots).

    Generation stops after an end token (kept in the output), at a stop string (text cut before it;
    needs a tokenizer), after `max_new_tokens`, or when the sequence reaches `max_length`.
    `decode_step` picks how steps after the prefill run (see `decode_step.py`): "eager" (CPU),
    "static" or "cuda_graph" (fixed shapes, one graph replay per token on CUDA).
    """

    max_length: int = 2048
    max_new_tokens: int | None = None
    end_token_ids: tuple[int, ...] = ()  # the engine knows no tokenizer: `CogVLM.generation_config` sets EOS
    stop_strings: tuple[str, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    decode_step: DecodeStepKind = "eager"

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        StopStrings(self.stop_strings)  # rejects empty strings
        if self.decode_step not in DECODE_STEP_KINDS:
            raise ValueError(f"decode_step must be one of {DECODE_STEP_KINDS}, got {self.decode_step!r}")

    def new_token_budget(self, prompt_length: int) -> int:
        """How many tokens may be generated after a prompt of `prompt_length`."""
        budget = self.max_length - prompt_length
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        if budget < 1:
            raise PromptTooLongError(
                f"the prompt has {prompt_length} tokens (image slots included) and "
                f"max_length is {self.max_length}: "
                "the prompt exceeds the context length limit"
            )
        return budget


@dataclass(frozen=True)
class BatchStep:
    """One decoding step of every row. Rows not in `is_live` had already stopped; ignore their token."""

    tokens: torch.Tensor  # [batch] long
    logits: torch.Tensor  # [batch, vocab] float32
    position_ids: torch.Tensor  # [batch] long
    is_live: tuple[bool, ...]
    stop_reasons: tuple[str | None, ...]  # set on the step that ends a row: its last token
    text_pieces: tuple[str, ...] | None  # new final text per row (with a tokenizer)


@dataclass(frozen=True)
class GenerationOutput:
    """Every generated token (an end token included), why generation stopped, and optional extras.

    `stop_reason` is "end_token", "stop_string" or "length". `text` (with a tokenizer) is the decoded
    continuation without special tokens, cut before a stop string. `step_logits` is empty unless asked for.
    """

    token_ids: list[int]
    step_logits: torch.Tensor  # [steps, vocab]
    position_ids: list[int]
    stop_reason: str
    text: str | None = None

    @property
    def stopped_on_end_token(self) -> bool:
        """True when an end token ended generation."""
        return self.stop_reason == "end_token"


def kv_cache_bytes(model: VisionLanguageModel, batch_size: int, max_length: int) -> int:
    """Bytes of the keys and values `new_kv_cache` allocates for these sizes on this rank."""
    layer = model.transformer.layers[0].attention
    width = layer.local_key_value_heads * layer.head_dim  # this rank's key/value heads
    element = model.transformer.word_embeddings.weight.element_size()
    return 2 * len(model.transformer.layers) * batch_size * max_length * width * element


def new_kv_cache(
    model: VisionLanguageModel, batch_size: int, max_length: int, *, zeroed: bool = True
) -> KVCache:
    """A cache sized for this rank's key/value heads (the layer says how many it holds); `zeroed=False`
    skips clearing it, for callers that read only the positions written (see `KVCache`)."""
    layer = model.transformer.layers[0].attention
    embedding = model.transformer.word_embeddings.weight
    return KVCache(
        num_layers=len(model.transformer.layers),
        batch_size=batch_size,
        num_heads=layer.local_key_value_heads,
        head_dim=layer.head_dim,
        max_length=max_length,
        dtype=embedding.dtype,
        device=embedding.device,
        zeroed=zeroed,
    )


def _generators(config: GenerationConfig, rows: int, device: torch.device) -> list[torch.Generator]:
    if config.seed is None:
        return []  # the global generator, as the reference uses
    return [torch.Generator(device=device).manual_seed(config.seed) for _ in range(rows)]


def prompt_tokens_seen(batch: PromptBatch, config: SamplingConfig, vocab: int) -> torch.Tensor | None:
    """Bool [batch, vocab]: tokens the repetition penalty covers before the first step."""
    if config.repetition_penalty == 1.0:
        return None
    seen = torch.zeros(batch.size, vocab, dtype=torch.bool, device=batch.input_ids.device)
    if config.penalises_prompt:
        text = ~batch.image_embed_mask
        if batch.key_is_valid is not None:
            text &= batch.key_is_valid
        seen.scatter_(1, torch.where(text, batch.input_ids, batch.input_ids[:, -1:]), True)
    return seen


class _Stopping:
    """Host-side bookkeeping of which rows are still generating, and why each stopped."""

    def __init__(self, budgets: list[int], config: GenerationConfig, tokenizer: Decoder | None) -> None:
        if config.stop_strings and tokenizer is None:
            raise ValueError(f"stop strings {config.stop_strings!r} need a tokenizer to decode the text")
        self.budgets = budgets
        self.end_ids = set(config.end_token_ids)
        self.streams = [TextStream(tokenizer, config.stop_strings) for _ in budgets] if tokenizer else None
        self.reasons: list[str | None] = [None] * len(budgets)

    @property
    def needs_token_values(self) -> bool:
        """True when each step's tokens must be read on the host (end tokens or text)."""
        return bool(self.end_ids) or self.streams is not None

    def update(self, step: int, tokens: list[int] | None) -> tuple[tuple, tuple, tuple | None]:
        """Record step `step`'s tokens; return (is_live, stop reasons, text pieces) per row."""
        is_live = tuple(reason is None for reason in self.reasons)
        pieces = tuple(
            self._update_row(row, step, None if tokens is None else tokens[row]) if live else ""
            for row, live in enumerate(is_live)
        )
        stop_reasons = tuple(
            reason if live else None for live, reason in zip(is_live, self.reasons, strict=True)
        )
        return is_live, stop_reasons, pieces if self.streams is not None else None

    def _update_row(self, row: int, step: int, token: int | None) -> str:
        """Stop the row if `token` ends it; return the row's newly final text."""
        stream = None if self.streams is None else self.streams[row]
        piece = "" if stream is None else stream.push(token)
        if token in self.end_ids:
            self.reasons[row] = "end_token"
        elif stream is not None and stream.hit_stop_string:
            self.reasons[row] = "stop_string"
        elif step + 1 >= self.budgets[row]:
            self.reasons[row] = "length"
        else:
            return piece
        return piece if stream is None else piece + stream.finish()

    @property
    def is_done(self) -> bool:
        """True when every row has stopped."""
        return all(reason is not None for reason in self.reasons)


def iterate_batch(
    model: VisionLanguageModel,
    requests: Sequence[GenerationRequest],
    config: GenerationConfig,
    *,
    tokenizer: Decoder | None = None,
) -> Iterator[BatchStep]:
    """Prefill every request as one left-padded batch, then yield one `BatchStep` per decoding step."""
    device = model.transformer.word_embeddings.weight.device
    batch = batch_to_device(collate(list(requests)), device)
    budgets = [config.new_token_budget(length) for length in batch.lengths]
    steps = max(budgets)
    stopping = _Stopping(budgets, config, tokenizer)
    generators = _generators(config, batch.size, device)
    # Eager steps attend to the written positions only; the static ones read the whole buffer under a mask.
    zeroed = config.decode_step in FIXED_SHAPE_KINDS
    cache = new_kv_cache(model, batch.size, batch.seq_len + steps, zeroed=zeroed)
    reserve_rotary_positions(model, int(batch.position_ids.max()) + steps + 1)
    key_is_valid = None
    if batch.key_is_valid is not None:
        generated_keys = torch.ones(batch.size, steps, dtype=torch.bool, device=device)
        key_is_valid = torch.cat([batch.key_is_valid, generated_keys], dim=1)  # [batch, seq + steps]
    last_positions = batch.position_ids[:, -1]  # [batch]
    # The grad mode is per thread, not per generator: it is entered around each piece of work and never held
    # across a `yield`, so that interleaved generations (a server advancing several) cannot reset it.
    with torch.inference_mode():
        memory = None if batch.cross_pixel_values is None else model.encode_cross(batch.cross_pixel_values)
        logits = prefill(model, batch, cache, memory)
        decode = build_decode_step(config.decode_step, model, cache, key_is_valid, memory)
        seen = prompt_tokens_seen(batch, config.sampling, _vocab_size(model))
    for step in range(steps):
        with torch.inference_mode():
            # Every rank must continue with the same tokens, as the reference broadcasts them from rank 0.
            tokens = broadcast_from_first_rank(sample(logits, seen, config.sampling, generators), model.tp)
        positions = last_positions + (step + 1)
        values = tokens.tolist() if stopping.needs_token_values else None
        is_live, stop_reasons, pieces = stopping.update(step, values)
        yield BatchStep(tokens, logits, positions, is_live, stop_reasons, pieces)
        if stopping.is_done:
            return
        with torch.inference_mode():
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            logits = decode(tokens, positions)


def prefill(model, batch: PromptBatch, cache: KVCache, memory) -> torch.Tensor:
    """The prompt's forward pass: fills the cache, returns the last position's logits [batch, vocab]."""
    ctx = ForwardContext(
        position_ids=batch.position_ids,
        attention_mask=batch.prefill_attention_mask(),
        vision_token_mask=batch.vision_token_mask,
        image_embed_mask=batch.image_embed_mask,
        pixel_values=batch.pixel_values,
        cross_memory=memory,
        kv_cache=cache,
    )
    return model(batch.input_ids, ctx, last_position_only=True).logits[:, -1].float()


def batch_to_device(batch: PromptBatch, device: torch.device) -> PromptBatch:
    moved = {
        name: value.to(device) if isinstance(value, torch.Tensor) else value
        for name, value in vars(batch).items()
    }
    return PromptBatch(**moved)


def _vocab_size(model: VisionLanguageModel) -> int:
    return model.config.llm.vocab_size


def generate_batch(
    model: VisionLanguageModel,
    requests: Sequence[GenerationRequest],
    config: GenerationConfig,
    *,
    tokenizer: Decoder | None = None,
    keep_step_logits: bool = False,
) -> list[GenerationOutput]:
    """Generate for every request together; output i equals `generate` on request i alone."""
    rows = len(requests)
    tokens: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    logits: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    positions: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    texts = [""] * rows
    reasons = ["length"] * rows
    for step in iterate_batch(model, requests, config, tokenizer=tokenizer):
        for row in range(rows):
            if not step.is_live[row]:
                continue
            tokens[row].append(step.tokens[row])
            positions[row].append(step.position_ids[row])
            if keep_step_logits:
                logits[row].append(step.logits[row])
            if step.text_pieces is not None:
                texts[row] += step.text_pieces[row]
            reasons[row] = step.stop_reasons[row] or reasons[row]
    return [
        GenerationOutput(
            token_ids=torch.stack(tokens[row]).tolist(),
            step_logits=torch.stack(logits[row]) if keep_step_logits else torch.empty(0),
            position_ids=torch.stack(positions[row]).tolist(),
            stop_reason=reasons[row],
            text=texts[row] if tokenizer is not None else None,
        )
        for row in range(rows)
    ]


def generate(
    model: VisionLanguageModel,
    text: TextInputs,
    config: GenerationConfig,
    *,
    pixel_values: torch.Tensor | None = None,
    cross_pixel_values: torch.Tensor | None = None,
    tokenizer: Decoder | None = None,
    keep_step_logits: bool = True,
) -> GenerationOutput:
    """Generate for one prompt (and its image); returns every token, and the step logits if kept."""
    request = GenerationRequest(text, pixel_values, cross_pixel_values)
    return generate_batch(model, [request], config, tokenizer=tokenizer, keep_step_logits=keep_step_logits)[0]


def stream_generation(
    model: VisionLanguageModel,
    text: TextInputs,
    config: GenerationConfig,
    tokenizer: Decoder,
    *,
    pixel_values: torch.Tensor | None = None,
    cross_pixel_values: torch.Tensor | None = None,
) -> Iterator[str]:
    """Yield the continuation's text in pieces, none ending inside a UTF-8 character.

    The pieces add up to `generate(...).text` for the same inputs.
    """
    request = GenerationRequest(text, pixel_values, cross_pixel_values)
    for step in iterate_batch(model, [request], config, tokenizer=tokenizer):
        if step.text_pieces[0]:
            yield step.text_pieces[0]
