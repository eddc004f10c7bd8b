"""A torchrun worker for the tensor-parallel tests: loads a golden model sharded over all ranks, runs every
golden prompt (logits) and greedy continuation, and rank 0 writes the results.

Usage: torchrun --nproc-per-node N tp_worker.py CHECKPOINT GOLDEN_MODEL_DIR TOKENIZER OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cogvlm.checkpoints.loading import load_model
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.launch.distributed import init_parallel_runtime, shutdown
from cogvlm.models.context import ForwardContext
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs


def _cases(golden: Path) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(golden / "cases.safetensors").items():
        case, name = key.split(".", 1)
        grouped.setdefault(case, {})[name] = tensor
    return {case: tensors for case, tensors in grouped.items() if "logits" in tensors}


def main(checkpoint: str, golden_dir: str, tokenizer_path: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    runtime = init_parallel_runtime()
    golden = Path(golden_dir)
    model, _ = load_model(checkpoint, tp=runtime.tp)
    pixels = load_file(golden / "image_inputs.safetensors")
    logits, continuations = {}, {}
    tokenizer = LlamaTokenizer.from_file(tokenizer_path)
    prompts = json.loads((golden / "text_inputs.json").read_text())
    records = json.loads((golden / "generation.json").read_text())
    for case, tensors in _cases(golden).items():
        ctx = ForwardContext(
            position_ids=tensors["position_ids"],
            vision_token_mask=tensors["vision_expert_mask"].bool(),
            image_embed_mask=tensors["image_embed_mask"].bool(),
            pixel_values=pixels["pixel_values"],
            cross_pixel_values=pixels.get("cross_pixel_values"),
        )
        with torch.no_grad():
            logits[case] = model(tensors["input_ids"], ctx).logits.contiguous()
        text = build_inference_inputs(tokenizer, prompts[case]["prompt"], model.config.image_length)
        output = generate(
            model,
            text,
            GenerationConfig(
                max_length=text.seq_len + records[case]["max_new_tokens"], end_token_ids=(tokenizer.eos_id,)
            ),
            pixel_values=pixels["pixel_values"],
            cross_pixel_values=pixels.get("cross_pixel_values"),
        )
        continuations[case] = output.token_ids
    if runtime.is_first_rank:
        out = Path(output_dir)
        save_file(logits, out / "logits.safetensors")
        (out / "continuations.json").write_text(json.dumps(continuations))
        (out / "tp.json").write_text(json.dumps({"tp_size": runtime.tp.size}))
    shutdown(runtime)


if __name__ == "__main__":
    main(*sys.argv[1:5])
