"""Training's patch-order augmentation (`--shuffle_image_tokens`): what the LLM receives, and from where."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from cogvlm.cli import build_parser, finetune_config_from_args
from cogvlm.frontends.bench import build_random_model
from cogvlm.mixins.image_embedding import shuffle_patches
from cogvlm.models import mixin_names
from cogvlm.models.context import ForwardContext
from cogvlm.train.loop import _patch_order_generator


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
        pixel_values=pixels, image_embed_mask=slots, image_token_shuffle=torch.Generator().manual_seed(3)
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


def _run(shuffle: bool, seed: int = 7, data_rank: int = 0):
    return SimpleNamespace(
        config=SimpleNamespace(shuffle_image_tokens=shuffle, seed=seed),
        layout=SimpleNamespace(data_rank=data_rank),
    )


def test_the_orders_depend_on_seed_step_and_rank_only():
    assert _patch_order_generator(_run(False), 5) is None

    def draws(run, step):
        return torch.randperm(64, generator=_patch_order_generator(run, step))

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
    assert config.shuffle_image_tokens
    assert config.to_json()["shuffle_image_tokens"] is True
