"""Choosing the next token from logits: the reference's (SAT `BaseStrategy`) semantics or the usual ones.

`reference` reproduces SAT exactly: the repetition penalty divides the logits of tokens *generated so far*
(negative ones too), top-p only runs inside the top-k branch (top_k = 0 turns both filters off), and
filtered logits are set to -65504 instead of -inf. `standard` is what most libraries do: the penalty
covers prompt and generated tokens and pushes every such logit towards "less likely" (divide positive,
multiply negative), top-k and top-p are independent, and filtered logits become -inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

# SAT masks filtered logits with the smallest fp16 value rather than -inf.
FILTER_VALUE = -65504.0
SamplerSemantics = Literal["standard", "reference"]
SEMANTICS: tuple[str, ...] = ("standard", "reference")


@dataclass(frozen=True)
class SamplingConfig:
    """Temperature, top-k, top-p and repetition penalty. The defaults are the reference CLI's (greedy).

    `temperature = 0` or `top_k = 1` choose the arg-max (after the repetition penalty).
    """

    temperature: float = 0.8
    top_k: int = 1
    top_p: float = 0.4
    repetition_penalty: float = 1.0
    semantics: SamplerSemantics = "standard"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {SEMANTICS}, got {self.semantics!r}")

    @property
    def is_greedy(self) -> bool:
        """True when the choice is always the arg-max of the (penalised) logits."""
        return self.top_k == 1 or self.temperature == 0

    @property
    def penalises_prompt(self) -> bool:
        """True when the repetition penalty also covers the prompt's tokens (standard semantics)."""
        return self.semantics == "standard"


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor | None, config: SamplingConfig
) -> torch.Tensor:
    """Penalise the tokens marked in `seen` (bool [batch, vocab]) as the semantics say."""
    if seen is None or config.repetition_penalty == 1.0:
        return logits
    penalty = config.repetition_penalty
    if config.semantics == "reference":
        # SAT divides every generated token's logit, negative ones included.
        return torch.where(seen, logits / penalty, logits)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def filter_logits(logits: torch.Tensor, seen: torch.Tensor | None, config: SamplingConfig) -> torch.Tensor:
    """Penalty, temperature, top-k and top-p on float logits [batch, vocab]; filtered entries are masked."""
    logits = apply_repetition_penalty(logits.float(), seen, config)
    if config.temperature > 0:
        logits = logits / config.temperature
    if config.semantics == "reference":
        if config.top_k > 0:
            logits = _top_k(logits, config.top_k, FILTER_VALUE)
            if config.top_p < 1.0:
                logits = _nucleus(logits, config.top_p, FILTER_VALUE)
        return logits
    if config.top_k > 0:
        logits = _top_k(logits, config.top_k, float("-inf"))
    if config.top_p < 1.0:
        logits = _nucleus(logits, config.top_p, float("-inf"))
    return logits


def _top_k(logits: torch.Tensor, top_k: int, fill: float) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # [batch, 1]
    return logits.masked_fill(logits < kth, fill)


def _nucleus(logits: torch.Tensor, top_p: float, fill: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(1, order, remove), fill)


def sample(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    config: SamplingConfig,
    generators: Sequence[torch.Generator | None] = (),
) -> torch.Tensor:
    """Next token ids [batch] from logits [batch, vocab].

    Row i draws from `generators[i]` (the global generator where there is none), so a row of a batch
    samples exactly as the same prompt alone with the same seed.
    """
    if config.is_greedy:
        return apply_repetition_penalty(logits.float(), seen, config).argmax(dim=-1)
    probs = filter_logits(logits, seen, config).softmax(dim=-1)  # [batch, vocab]
    if len(generators) <= 1:
        generator = generators[0] if generators else None
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    rows = [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(rows).squeeze(-1)


def filter_reference(
    logits: torch.Tensor, generated: torch.Tensor | None, config: SamplingConfig
) -> torch.Tensor:
    """SAT's filtering, with the penalty given as generated token ids [batch, steps]."""
    return filter_logits(logits, _seen_ids(logits, generated), _as_reference(config))


def sample_reference(
    logits: torch.Tensor,
    generated: torch.Tensor | None,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [batch] under the reference semantics; top_k == 1 is an exact arg-max."""
    return sample(logits, _seen_ids(logits, generated), _as_reference(config), (generator,))


def _as_reference(config: SamplingConfig) -> SamplingConfig:
    if config.semantics == "reference":
        return config
    return SamplingConfig(
        config.temperature, config.top_k, config.top_p, config.repetition_penalty, "reference"
    )


def _seen_ids(logits: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor | None:
    """A bool [batch, vocab] mask of the ids in `ids` [batch, n]."""
    if ids is None or ids.numel() == 0:
        return None
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return seen.scatter_(1, ids, True)
