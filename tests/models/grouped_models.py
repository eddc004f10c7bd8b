"""A tiny grouped-query CogVLM with seeded weights and fixed inputs, shared by tests and their workers."""

from __future__ import annotations

import dataclasses

import torch

from cogvlm.models.builders import build_model
from cogvlm.models.context import ForwardContext
from cogvlm.models.presets import preset
from cogvlm.text_processors.inference import TextInputs, position_ids_from_rope_mask


def grouped_config(kv_heads: int = 2, rotary_base: float = 500000.0):
    """tiny-cogvlm with `kv_heads` key/value heads (of 4) and LLaMA 3's rotary base."""
    base = preset("tiny-cogvlm")
    llm = dataclasses.replace(base.llm, num_key_value_heads=kv_heads, rotary_base=rotary_base)
    return dataclasses.replace(base, llm=llm)


def seeded_model(config, seed: int = 0):
    """The model of `config` with N(0, 0.2) weights from `seed`, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


def sample_text(config, length: int = 30) -> TextInputs:
    """Seeded token ids with one image block after BOS, laid out as the reference's text processor does."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, config.llm.vocab_size, (1, length), generator=generator)
    start, count = 1, config.image_length
    image_embed = torch.zeros(1, length, dtype=torch.bool)
    image_embed[0, start : start + count + 2] = True  # boi, image tokens, eoi
    vision = image_embed.clone()
    vision[0, start + count + 1] = False  # eoi goes to the language expert
    rope = torch.zeros(1, length, dtype=torch.bool)
    rope[0, start + 1 : start + count + 1] = True
    return TextInputs(
        input_ids=input_ids,
        image_embed_mask=image_embed,
        vision_expert_mask=vision,
        image_rope_mask=rope,
        position_ids=position_ids_from_rope_mask(rope),
        image_positions=(start + count + 1,),
    )


def sample_pixels(config) -> torch.Tensor:
    """A seeded image [1, 3, px, px] at the model's resolution."""
    generator = torch.Generator().manual_seed(2)
    return torch.randn(1, 3, config.vision.image_px, config.vision.image_px, generator=generator)


def sample_inputs(config, length: int = 30) -> tuple[torch.Tensor, ForwardContext]:
    """Token ids and the forward context of `sample_text` and `sample_pixels`."""
    text = sample_text(config, length)
    return text.input_ids, ForwardContext(
        position_ids=text.position_ids,
        vision_token_mask=text.vision_expert_mask,
        image_embed_mask=text.image_embed_mask,
        pixel_values=sample_pixels(config),
    )
