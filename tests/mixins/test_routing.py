"""The visual expert's routing: each expert gets exactly its own rows, whether they form one run or not."""

from __future__ import annotations

import pytest
import torch

from cogvlm.mixins.routing import TokenRoutes, route_tokens
from cogvlm.models.context import ForwardContext


def _experts(hidden: int, out: int):
    generator = torch.Generator().manual_seed(0)
    language = torch.nn.Linear(hidden, out, bias=False)
    vision = torch.nn.Linear(hidden, out, bias=False)
    for linear in (language, vision):
        linear.weight.data = torch.randn(out, hidden, generator=generator)
    return language, vision


def _by_mask(states, mask, language, vision):
    """The routing written out with boolean indexing: each expert on its rows, in order."""
    expected = torch.empty(*mask.shape, language.out_features)
    expected[mask] = vision(states[mask])
    expected[~mask] = language(states[~mask])
    return expected


@pytest.mark.parametrize(
    ("image_runs", "span"),
    [
        ([(0, 2, 9)], (2, 9)),  # one image in one row: a contiguous run, read as a view
        ([(0, 1, 5), (1, 3, 7)], None),  # a batch of two rows: gathered by index
    ],
)
def test_each_expert_gets_exactly_its_rows(image_runs, span):
    rows = 1 + max(row for row, _, _ in image_runs)
    mask = torch.zeros(rows, 12, dtype=torch.bool)
    for row, start, stop in image_runs:
        mask[row, start:stop] = True
    routes = TokenRoutes.from_mask(mask)
    assert routes.vision_span == span
    assert routes.vision_rows.tolist() == mask.reshape(-1).nonzero().squeeze(1).tolist()
    states = torch.randn(rows, 12, 16)
    language, vision = _experts(16, 8)
    routed = route_tokens(states, routes, language, vision)
    assert torch.equal(routed, _by_mask(states, mask, language, vision))


def test_a_mask_with_no_image_token_sends_everything_to_language():
    mask = torch.zeros(1, 6, dtype=torch.bool)
    routes = TokenRoutes.from_mask(mask)
    assert routes.vision_span is None and routes.vision_rows.numel() == 0
    states = torch.randn(1, 6, 16)
    language, vision = _experts(16, 8)
    assert torch.equal(route_tokens(states, routes, language, vision), language(states))


def test_the_routes_are_found_once_per_forward_pass():
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :3] = True
    ctx = ForwardContext(vision_token_mask=mask)
    assert ctx.token_routes is ctx.token_routes
    assert ForwardContext().token_routes is None
