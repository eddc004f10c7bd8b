"""Choosing the next token from logits, with the reference (SAT `BaseStrategy`) semantics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# SAT masks filtered logits with the smallest fp16 value rather than -inf.
FILTER_VALUE = -65504.0


@dataclass(frozen=True)
class SamplingConfig:
    """Temperature, top-k, top-p and repetition penalty. The defaults are the reference CLI's (greedy)."""

    temperature: float = 0.8
    top_k: int = 1
    top_p: float = 0.4
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def is_greedy(self) -> bool:
        """True when the choice is always the arg-max (top_k == 1)."""
        return self.top_k == 1


def filter_reference(
    logits: torch.Tensor, generated: torch.Tensor | None, config: SamplingConfig
) -> torch.Tensor:
    """Apply SAT's penalty, temperature, top-k and (only with top-k) top-p to logits [batch, vocab]."""
    logits = logits.float()
    if generated is not None and generated.numel() and config.repetition_penalty != 1.0:
        # SAT divides every generated token's logit, negative ones included.
        penalised = logits.gather(1, generated) / config.repetition_penalty
        logits = logits.scatter(1, generated, penalised)
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, FILTER_VALUE)
        if config.top_p < 1.0:
            logits = _nucleus(logits, config.top_p)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(1, order, remove), FILTER_VALUE)


def sample_reference(
    logits: torch.Tensor,
    generated: torch.Tensor | None,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [batch] under the reference semantics; top_k == 1 is an exact arg-max."""
    if config.is_greedy and config.repetition_penalty == 1.0:
        return logits.argmax(dim=-1)
    filtered = filter_reference(logits, generated, config)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)
