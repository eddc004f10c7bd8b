"""Apply one of two functions to each token, chosen by a mask (the visual expert's routing)."""

from __future__ import annotations

from collections.abc import Callable

import torch

TokenFunction = Callable[[torch.Tensor], torch.Tensor]


def route_tokens(
    hidden_states: torch.Tensor,
    vision_token_mask: torch.Tensor | None,
    language: TokenFunction,
    vision: TokenFunction,
) -> torch.Tensor:
    """`vision` on the tokens where the mask is set, `language` on the others.

    Each expert runs on its own rows gathered into a [tokens, hidden] matrix, which reproduces the
    reference bit for bit (computing both on every token and selecting differs by BLAS blocking).
    """
    if vision_token_mask is None:
        return language(hidden_states)
    vision_out = vision(hidden_states[vision_token_mask])  # [vision tokens, out]
    language_out = language(hidden_states[~vision_token_mask])  # [language tokens, out]
    output = vision_out.new_empty(*vision_token_mask.shape, vision_out.shape[-1])  # [batch, seq, out]
    output[vision_token_mask] = vision_out
    output[~vision_token_mask] = language_out
    return output
