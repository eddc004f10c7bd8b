"""The compiled decoding step traces into one graph: a graph break costs a guard check and a Python
round trip each time, which made the step slower than eager when it had one per routed projection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cogvlm.inference.batching import GenerationRequest, collate
from cogvlm.inference.decode_step import last_logits
from cogvlm.inference.generate import new_kv_cache, prefill
from cogvlm.models.context import ForwardContext
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs, build_prompt
from tests.golden_models import checkpoint_dirs, golden_model, image_inputs, require_builder, tokenizer_file


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda path: path.name)
def test_a_decoding_step_after_an_image_prompt_is_one_graph_without_breaks(model_dir: Path):
    require_builder(model_dir)
    model = golden_model(model_dir)
    tokenizer = LlamaTokenizer.from_file(tokenizer_file())
    text = build_inference_inputs(
        tokenizer, build_prompt("chat_old", "Describe it."), model.config.image_length
    )
    pixels = image_inputs(model_dir)
    batch = collate([GenerationRequest(text, pixels["pixel_values"], pixels.get("cross_pixel_values"))])
    cache = new_kv_cache(model, 1, batch.seq_len + 2)
    with torch.inference_mode():
        memory = None if batch.cross_pixel_values is None else model.encode_cross(batch.cross_pixel_values)
        logits = prefill(model, batch, cache, memory)
        # The context a decoding step builds (as EagerDecodeStep does): no masks, the cache and the memory.
        positions = batch.position_ids[:, -1:] + 1
        ctx = ForwardContext(position_ids=positions, cross_memory=memory, kv_cache=cache)
        tokens = logits.argmax(-1, keepdim=True)
        explanation = torch._dynamo.explain(last_logits)(model, tokens, ctx)
    assert explanation.graph_break_count == 0, [str(reason) for reason in explanation.break_reasons]
    assert explanation.graph_count == 1
