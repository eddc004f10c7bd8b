"""Run under torchrun: the golden CogAgent sharded over the group; rank 0 writes logits and greedy tokens."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from cogvlm.checkpoints.loading import load_model
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.models.context import ForwardContext
from cogvlm.parallel.groups import TensorParallel
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs
from tests.golden import golden_dir, load_json
from tests.golden_models import cases, image_inputs, tokenizer_file


def main(output_path: str) -> None:
    """Shard, run chat_q1's forward and greedy decode, and report from rank 0."""
    dist.init_process_group("gloo")
    tp = TensorParallel(dist.group.WORLD, dist.get_rank(), dist.get_world_size())
    model_dir = golden_dir() / "cogagent"
    model, _ = load_model(model_dir / "sat_checkpoint", tp=tp)
    tensors, pixels = cases(model_dir)["chat_q1"], image_inputs(model_dir)
    ctx = ForwardContext(
        position_ids=tensors["position_ids"],
        vision_token_mask=tensors["vision_expert_mask"].bool(),
        image_embed_mask=tensors["image_embed_mask"].bool(),
        pixel_values=pixels["pixel_values"],
        cross_pixel_values=pixels["cross_pixel_values"],
    )
    with torch.no_grad():
        logits = model(tensors["input_ids"], ctx).logits
    prompt = load_json(model_dir / "text_inputs.json")["chat_q1"]["prompt"]
    text = build_inference_inputs(
        LlamaTokenizer.from_file(tokenizer_file()), prompt, model.config.image_length
    )
    output = generate(
        model,
        text,
        GenerationConfig(max_new_tokens=12, end_token_ids=(2,)),
        pixel_values=pixels["pixel_values"],
        cross_pixel_values=pixels["cross_pixel_values"],
    )
    if tp.rank == 0:
        difference = float((logits - tensors["logits"]).abs().max())
        with open(output_path, "w") as handle:
            json.dump({"max_logit_difference": difference, "token_ids": output.token_ids}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
