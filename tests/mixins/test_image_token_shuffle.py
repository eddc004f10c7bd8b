"""Training's patch-order augmentation (`--shuffle_image_tokens`): what the LLM receives, and from where."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from cogvlm.cli import build_parser, finetune_config_from_args
from cogvlm.errors import ConfigError
from cogvlm.frontends.bench import build_random_model
from cogvlm.mixins.image_embedding import shuffle_patches
from cogvlm.models import mixin_names
from cogvlm.models.context import ForwardContext, PatchShuffle
from cogvlm.train.config import SHUFFLE_SCOPES
from cogvlm.train.loop import _patch_shuffle


def test_each_image_gets_a_permutation_of_its_own_patches():
    embeds = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    shuffled = shuffle_patches(embeds, torch.Generator().manual_seed(0))
    for image in range(2):
        rows = {tuple(row.tolist()) for row in shuffled[image]}
        assert rows == {tuple(row.tolist()) for row in embeds[image]}  # the same rows, whole
    assert not torch.equal(shuffled, embeds)
    order = (shuffled[..., 0] - embeds[:, :1, 0]) / 3  # each row's original patch index
    assert not torch.equal(order[0], order[1])  # the two images are shuffled differently
    again = shuffle_patches(embeds, torch.Generator().manual_seed(0))
    assert torch.equal(again, shuffled)


def test_within_rows_each_row_of_the_grid_keeps_its_place_and_is_permuted_inside():
    embeds = torch.arange(3 * 16, dtype=torch.float32).view(3, 16, 1).expand(-1, -1, 2).contiguous()
    shuffled = shuffle_patches(embeds, torch.Generator().manual_seed(1), within_rows=True)
    order = (shuffled[..., 0] - embeds[:, :1, 0]).long()  # each token's original patch index, [3, 16]
    rows = order.view(3, 4, 4)
    # Row r of the 4 x 4 grid holds patches 4r..4r+3, in some order; the row order is kept.
    expected = torch.arange(16).view(1, 4, 4).expand(3, -1, -1)
    assert torch.equal(rows.sort(dim=-1).values, expected)
    assert not torch.equal(order, torch.arange(16).expand(3, -1))
    assert not torch.equal(order[0], order[1])
    with pytest.raises(ValueError, match="needs a square patch grid, got 12 patches"):
        shuffle_patches(embeds[:, :12], torch.Generator(), within_rows=True)


def test_the_llm_receives_the_shuffled_patches_between_boi_and_eoi():
    model = build_random_model("tiny", "cpu", torch.float32)
    image = model.mixins[mixin_names.IMAGE]
    patches = model.config.image_length  # the tower's patches; boi and eoi come on top
    pixels = torch.rand(1, 3, model.config.vision.image_px, model.config.vision.image_px)
    input_ids = torch.ones(1, patches + 4, dtype=torch.long)
    slots = torch.zeros(1, patches + 4, dtype=torch.bool)
    slots[0, 1 : patches + 3] = True
    plain_ctx = ForwardContext(pixel_values=pixels, image_embed_mask=slots)
    shuffled_ctx = ForwardContext(
        pixel_values=pixels,
        image_embed_mask=slots,
        image_token_shuffle=PatchShuffle(torch.Generator().manual_seed(3)),
    )
    with torch.no_grad():
        plain = image.embed_tokens(model.transformer, input_ids, plain_ctx)
        shuffled = image.embed_tokens(model.transformer, input_ids, shuffled_ctx)
        expected = shuffle_patches(image.encode_images(pixels), torch.Generator().manual_seed(3))
    assert torch.equal(shuffled[0, 2 : patches + 2], expected[0])
    assert not torch.equal(shuffled, plain)
    # boi, eoi and the text around them are untouched
    for position in (0, 1, patches + 2, patches + 3):
        assert torch.equal(shuffled[0, position], plain[0, position])


def _run(shuffle: bool, seed: int = 7, data_rank: int = 0, scope: str = "all"):
    return SimpleNamespace(
        config=SimpleNamespace(shuffle_image_tokens=shuffle, shuffle_scope=scope, seed=seed),
        layout=SimpleNamespace(data_rank=data_rank),
    )


def test_the_orders_depend_on_seed_step_and_rank_only():
    assert _patch_shuffle(_run(False), 5) is None
    assert not _patch_shuffle(_run(True), 5).within_rows
    assert _patch_shuffle(_run(True, scope="within_rows"), 5).within_rows

    def draws(run, step):
        return torch.randperm(64, generator=_patch_shuffle(run, step).generator)

    assert torch.equal(draws(_run(True), 5), draws(_run(True), 5))  # a resumed run draws the same orders
    assert not torch.equal(draws(_run(True), 5), draws(_run(True), 6))
    assert not torch.equal(draws(_run(True), 5), draws(_run(True, data_rank=1), 5))
    assert not torch.equal(draws(_run(True), 5), draws(_run(True, seed=8), 5))


def test_the_flag_reaches_the_run_config_and_its_json():
    argv = [
        "finetune",
        "--from_pretrained",
        "ckpt",
        "--train_data",
        "data",
        "--save",
        "out",
        "--train_iters",
        "9",
    ]
    assert not finetune_config_from_args(build_parser().parse_args(argv)).shuffle_image_tokens
    config = finetune_config_from_args(build_parser().parse_args([*argv, "--shuffle_image_tokens"]))
    assert config.shuffle_image_tokens and config.shuffle_scope == "all"
    assert config.to_json()["shuffle_image_tokens"] is True
    rows = finetune_config_from_args(
        build_parser().parse_args([*argv, "--shuffle_image_tokens", "within_rows"])
    )
    assert rows.shuffle_image_tokens and rows.to_json()["shuffle_scope"] == "within_rows"
    # The parser's choices are the config's scopes (the CLI does not import the config, to start fast).
    action = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["finetune"]._actions
        if a.dest == "shuffle_image_tokens"
    )
    assert tuple(action.choices) == SHUFFLE_SCOPES
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--shuffle_image_tokens", "diagonal"])
    with pytest.raises(ConfigError, match="shuffle_scope='diagonal', expected one of"):
        dataclasses.replace(rows, shuffle_scope="diagonal")
