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
    # Row indices into [batch * seq, hidden]: index_select / index_copy_ move whole rows (memcpy), several
    # times faster on CPU than boolean-mask indexing, and gather exactly the same matrices.
    flat_mask = vision_token_mask.reshape(-1)
    vision_rows = flat_mask.nonzero().squeeze(1)
    language_rows = (~flat_mask).nonzero().squeeze(1)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    vision_out = vision(flat.index_select(0, vision_rows))  # [vision tokens, out]
    language_out = language(flat.index_select(0, language_rows))  # [language tokens, out]
    output = vision_out.new_empty(flat_mask.shape[0], vision_out.shape[-1])  # [batch * seq, out]
    output.index_copy_(0, vision_rows, vision_out)
    output.index_copy_(0, language_rows, language_out)
    return output.view(*vision_token_mask.shape, -1)  # [batch, seq, out]
