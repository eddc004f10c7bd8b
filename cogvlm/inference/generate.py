"""Autoregressive generation with a preallocated KV cache: one prefill, then one token per step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from cogvlm.errors import PromptTooLongError
from cogvlm.inference.sampling import SamplingConfig, sample_reference
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.context import ForwardContext
from cogvlm.nn.kv_cache import KVCache
from cogvlm.nn.rotary import reserve_rotary_positions
from cogvlm.parallel.collectives import broadcast_from_first_rank
from cogvlm.text_processors.inference import TextInputs


@dataclass(frozen=True)
class GenerationConfig:
    """When to stop and how to sample. `max_length` counts the whole sequence (prompt and image slots)."""

    max_length: int = 2048
    max_new_tokens: int | None = None
    end_token_ids: tuple[int, ...] = (2,)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

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
class GenerationStep:
    """One generated token, the logits it was sampled from, and its position id."""

    token_id: int
    logits: torch.Tensor  # [vocab] float32
    position_id: int


@dataclass(frozen=True)
class GenerationOutput:
    """Every generated token (an end token included), the step logits and whether an end token stopped it."""

    token_ids: list[int]
    step_logits: torch.Tensor  # [steps, vocab]
    position_ids: list[int]
    stopped_on_end_token: bool


def new_kv_cache(model: VisionLanguageModel, batch_size: int, max_length: int) -> KVCache:
    """A cache sized for this rank's heads (the layer's weight says how many it holds)."""
    layer = model.transformer.layers[0].attention
    head_dim = layer.head_dim
    local_heads = layer.query_key_value.weight.shape[0] // (3 * head_dim)
    weight = layer.query_key_value.weight
    return KVCache(
        num_layers=len(model.transformer.layers),
        batch_size=batch_size,
        num_heads=local_heads,
        head_dim=head_dim,
        max_length=max_length,
        dtype=weight.dtype,
        device=weight.device,
    )


def iterate_generation(
    model: VisionLanguageModel,
    text: TextInputs,
    config: GenerationConfig,
    *,
    pixel_values: torch.Tensor | None = None,
    cross_pixel_values: torch.Tensor | None = None,
) -> Iterator[GenerationStep]:
    """Yield generated tokens one by one; stops after an end token or when the budget is spent."""
    device = model.transformer.word_embeddings.weight.device
    budget = config.new_token_budget(text.seq_len)
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
    cache = new_kv_cache(model, 1, text.seq_len + budget)
    reserve_rotary_positions(model, int(text.position_ids.max()) + budget + 1)
    with torch.inference_mode():  # no autograd graph over the (large) cross tower's activations
        memory = model.encode_cross(cross_pixel_values.to(device)) if cross_pixel_values is not None else None
    ctx = ForwardContext(
        position_ids=text.position_ids.to(device),
        vision_token_mask=text.vision_expert_mask.to(device),
        image_embed_mask=text.image_embed_mask.to(device),
        pixel_values=pixel_values.to(device) if pixel_values is not None else None,
        cross_memory=memory,
        kv_cache=cache,
    )
    input_ids = text.input_ids.to(device)
    position = int(text.position_ids[0, -1])
    generated = torch.empty(1, 0, dtype=torch.long, device=device)
    for _ in range(budget):
        # The grad mode is per thread, not per generator: enter it around each step, never across a yield,
        # so that interleaved generations (a server advancing several) cannot switch it for each other.
        with torch.inference_mode():
            logits = model(input_ids, ctx).logits[:, -1].float()  # [1, vocab]
            # Every rank must continue with the same token, as the reference broadcasts it from rank 0.
            token = broadcast_from_first_rank(
                sample_reference(logits, generated, config.sampling, generator), model.tp
            )
        position += 1
        yield GenerationStep(int(token), logits[0], position)
        if int(token) in config.end_token_ids:
            return
        generated = torch.cat([generated, token[:, None]], dim=1)
        input_ids = token[:, None]
        ctx = ForwardContext(
            position_ids=torch.tensor([[position]], device=device), cross_memory=memory, kv_cache=cache
        )


def generate(
    model: VisionLanguageModel,
    text: TextInputs,
    config: GenerationConfig,
    *,
    pixel_values: torch.Tensor | None = None,
    cross_pixel_values: torch.Tensor | None = None,
) -> GenerationOutput:
    """Run `iterate_generation` to the end and collect its steps."""
    steps = list(
        iterate_generation(
            model, text, config, pixel_values=pixel_values, cross_pixel_values=cross_pixel_values
        )
    )
    return GenerationOutput(
        token_ids=[step.token_id for step in steps],
        step_logits=torch.stack([step.logits for step in steps]),
        position_ids=[step.position_id for step in steps],
        stopped_on_end_token=bool(steps) and steps[-1].token_id in config.end_token_ids,
    )
