"""One home for generation settings: a checkpoint's defaults, overridden by what a caller sets.

`GenerationDefaults` is what a loaded model implies (its context length, its tokenizer's end token, the
sampling its checkpoint recommends); `GenerationSettings` is what a front-end or a user chose, with None
meaning "the default". `build_generation_config` combines the two into the engine's `GenerationConfig`;
every front-end goes through it (via `CogVLM.generation_config`), so none has defaults of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from cogvlm.inference.decode_step import DecodeStepKind
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.sampling import SamplerSemantics, SamplingConfig

# The reference CLI's sampling: top_k 1 makes it greedy; temperature and top_p apply once top_k is raised.
REFERENCE_SAMPLING = SamplingConfig(temperature=0.8, top_k=1, top_p=0.4, semantics="reference")
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty", "semantics")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a loaded checkpoint implies for generation."""

    context_length: int
    end_token_ids: tuple[int, ...]
    sampling: SamplingConfig = REFERENCE_SAMPLING
    max_new_tokens: int | None = None

    @classmethod
    def from_hf_generation_config(
        cls, raw: Mapping, context_length: int, end_token_ids: tuple[int, ...]
    ) -> GenerationDefaults:
        """Defaults from an HF-style `generation_config.json` (unknown or absent keys keep the reference's).

        `do_sample: false` means greedy; otherwise `temperature`, `top_k` and `top_p` apply (standard
        semantics, as HF samples). `max_new_tokens` bounds the answer; `max_length` the whole sequence.
        """
        if not raw.get("do_sample", False):
            sampling = dataclasses.replace(REFERENCE_SAMPLING, top_k=1)
        else:
            sampling = SamplingConfig(
                temperature=float(raw.get("temperature", 1.0)),
                top_k=int(raw.get("top_k", 0)),
                top_p=float(raw.get("top_p", 1.0)),
                semantics="standard",
            )
        if "repetition_penalty" in raw:
            sampling = dataclasses.replace(sampling, repetition_penalty=float(raw["repetition_penalty"]))
        length = min(int(raw.get("max_length", context_length)), context_length)
        max_new = raw.get("max_new_tokens")
        return cls(length, end_token_ids, sampling, None if max_new is None else int(max_new))


@dataclass(frozen=True)
class GenerationSettings:
    """A caller's choices; None leaves a field to the checkpoint's defaults.

    `max_length` is capped at the model's context length: a longer sequence has no position to go to.
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    end_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    semantics: SamplerSemantics | None = None
    seed: int | None = None
    decode_step: DecodeStepKind = "eager"

    def sampling_overrides(self) -> dict:
        """The sampling fields this caller set."""
        return {name: getattr(self, name) for name in _SAMPLING_FIELDS if getattr(self, name) is not None}


def build_generation_config(defaults: GenerationDefaults, settings: GenerationSettings) -> GenerationConfig:
    """The engine's config: `defaults`, with every field `settings` sets put in its place."""
    sampling = dataclasses.replace(defaults.sampling, **settings.sampling_overrides())
    max_length = defaults.context_length
    if settings.max_length is not None:
        max_length = min(settings.max_length, defaults.context_length)
    max_new_tokens = defaults.max_new_tokens if settings.max_new_tokens is None else settings.max_new_tokens
    return GenerationConfig(
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        end_token_ids=defaults.end_token_ids if settings.end_token_ids is None else settings.end_token_ids,
        stop_strings=tuple(settings.stop_strings),
        sampling=sampling,
        seed=settings.seed,
        decode_step=settings.decode_step,
    )
