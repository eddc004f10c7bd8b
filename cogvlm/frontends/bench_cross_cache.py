"""Benchmark: CogAgent decoding with the cross memory kept vs. rebuilt at every step, as SAT does.

Both runs decode greedily with the self-attention KV cache. The cached run encodes the high-resolution
image and computes each layer's cross keys/values once; the recomputing run hands the model the cross
pixels at every step, so each step re-runs the EVA2-CLIP-L tower and every layer's `key_value` projection
(the SAT reference's behaviour). The tokens must be identical; the report is the per-token time saved.

Run `python -m cogvlm.frontends.bench_cross_cache --config small-cogagent` to print the JSON report.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from cogvlm.inference.generate import new_kv_cache
from cogvlm.models.builders import build_model
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.presets import preset
from cogvlm.nn.rotary import reserve_rotary_positions
from cogvlm.text_processors.image_slots import MARKER_ID, expand_markers, image_masks
from cogvlm.text_processors.inference import TextInputs, position_ids_from_rope_mask

DEFAULT_CONFIG = "small-cogagent"
# The reference's benchmark protocol: 12 text tokens after the image, float32, batch 1.
TEXT_TOKENS = 12
BOS_ID = 1


@dataclass(frozen=True)
class GreedyDecode:
    """Tokens of one greedy decode, its step logits, and each forward's wall and CPU time (prefill first)."""

    token_ids: list[int]
    step_logits: torch.Tensor  # [steps, vocab] float32
    step_seconds: list[float]
    step_cpu_seconds: list[float]  # all threads of this process; less disturbed by other processes


def synthetic_prompt(image_length: int, vocab_size: int, text_tokens: int, seed: int) -> TextInputs:
    """[BOS] + one image's slots + `text_tokens` random text ids, with the official masks and positions."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab_size, (text_tokens,), generator=generator).tolist()
    ids, eoi_positions = expand_markers([BOS_ID, MARKER_ID, *text], image_length)
    masks = image_masks(len(ids), eoi_positions, image_length)
    rope = torch.tensor([masks.image_rope_mask])
    return TextInputs(
        input_ids=torch.tensor([ids]),
        image_embed_mask=torch.tensor([masks.image_embed_mask]),
        vision_expert_mask=torch.tensor([masks.vision_expert_mask]),
        image_rope_mask=rope,
        position_ids=position_ids_from_rope_mask(rope),
        image_positions=eoi_positions,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_context(position: int, device, cache, memory, cross_pixel_values) -> ForwardContext:
    return ForwardContext(
        position_ids=torch.tensor([[position]], device=device),
        cross_memory=memory,
        cross_pixel_values=cross_pixel_values,
        kv_cache=cache,
    )


def decode_greedy(
    model: VisionLanguageModel,
    text: TextInputs,
    pixel_values: torch.Tensor,
    cross_pixel_values: torch.Tensor,
    new_tokens: int,
    *,
    reuse_cross_memory: bool,
) -> GreedyDecode:
    """Exactly `new_tokens` greedy tokens (no end token); the cross memory is kept or rebuilt per step."""
    device = model.transformer.word_embeddings.weight.device
    cache = new_kv_cache(model, 1, text.seq_len + new_tokens)
    reserve_rotary_positions(model, int(text.position_ids.max()) + new_tokens + 1)
    cross = cross_pixel_values.to(device)
    # Without a memory the model encodes `ctx.cross_pixel_values` (and recomputes K/V) at every forward.
    per_step_pixels = None if reuse_cross_memory else cross
    input_ids, position = text.input_ids.to(device), int(text.position_ids[0, -1])
    tokens, logits_per_step, seconds, cpu_seconds = [], [], [], []
    with torch.inference_mode():
        # The first step's time includes encoding the cross image.
        started, cpu_started = time.perf_counter(), time.process_time()
        memory = model.encode_cross(cross) if reuse_cross_memory else None
        ctx = ForwardContext(
            position_ids=text.position_ids.to(device),
            vision_token_mask=text.vision_expert_mask.to(device),
            image_embed_mask=text.image_embed_mask.to(device),
            pixel_values=pixel_values.to(device),
            cross_pixel_values=per_step_pixels,
            cross_memory=memory,
            kv_cache=cache,
        )
        for _ in range(new_tokens):
            logits = model(input_ids, ctx).logits[:, -1].float()  # [1, vocab]
            token = logits.argmax(dim=-1)
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            tokens.append(int(token))
            logits_per_step.append(logits[0].cpu())
            position += 1
            input_ids = token[:, None]
            ctx = _step_context(position, device, cache, memory, per_step_pixels)
            started, cpu_started = time.perf_counter(), time.process_time()
    return GreedyDecode(tokens, torch.stack(logits_per_step), seconds, cpu_seconds)


def cross_recompute_flops(config: CogVLMConfig) -> float:
    """Multiply-adds x 2 that rebuilding the cross memory costs per step: the tower plus every layer's K/V."""
    tower, cross = config.cross_vision, config.llm.cross_attention
    patches, width, hidden = tower.num_patches, tower.width, tower.mlp_hidden
    tokens = patches + 1
    patch_embedding = 2 * patches * tower.in_channels * tower.patch_size**2 * width
    # q, k, v, proj; scores and weighted sum; SwiGLU w1, w2, w3.
    block = 8 * tokens * width**2 + 4 * tokens**2 * width + 6 * tokens * width * hidden
    key_values = sum(cross.layers) * 2 * patches * width * 2 * config.llm.num_attention_heads * cross.head_dim
    return float(patch_embedding + (tower.num_blocks - 1) * block + key_values)


def _random_model(config_name: str, seed: int, device: str, dtype: torch.dtype) -> VisionLanguageModel:
    config = preset(config_name)
    if not config.has_cross_vision:
        raise ValueError(f"preset {config_name!r} is a {config.model_class}; the benchmark needs a CogAgent")
    torch.manual_seed(seed)
    return build_model(config).to(device=device, dtype=dtype).eval()


def _milliseconds(seconds: list[float]) -> float:
    # The median: other processes on a shared machine add long outliers to single steps.
    return round(1000 * statistics.median(seconds), 3)


def measure_cross_cache(
    config_name: str = DEFAULT_CONFIG,
    new_tokens: int = 32,
    threads: int = 2,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Time greedy decoding with the cross memory cached vs. recomputed per step; return the JSON report.

    Raises:
        RuntimeError: the two decodes produced different tokens.
    """
    if new_tokens < 2:
        raise ValueError(
            f"new_tokens must be >= 2 (one prefill and at least one decoding step), got {new_tokens}"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _random_model(config_name, seed, device, dtype)
        config = model.config
        text = synthetic_prompt(config.image_length, config.llm.vocab_size, TEXT_TOKENS, seed)
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(1, 3, config.vision.image_px, config.vision.image_px, generator=generator)
        cross_px = config.cross_vision.image_px
        cross_pixels = torch.randn(1, 3, cross_px, cross_px, generator=generator)
        pixels, cross_pixels = pixels.to(dtype), cross_pixels.to(dtype)
        decode_greedy(model, text, pixels, cross_pixels, 2, reuse_cross_memory=True)  # warm-up
        cached = decode_greedy(model, text, pixels, cross_pixels, new_tokens, reuse_cross_memory=True)
        recomputed = decode_greedy(model, text, pixels, cross_pixels, new_tokens, reuse_cross_memory=False)
    finally:
        torch.set_num_threads(previous_threads)
    if cached.token_ids != recomputed.token_ids:
        raise RuntimeError(
            "cached and recomputed cross-attention decodes differ: "
            f"{cached.token_ids} vs {recomputed.token_ids}"
        )
    return _report(config_name, config, text, threads, device, dtype, cached, recomputed)


def _report(config_name, config, text, threads, device, dtype, cached, recomputed) -> dict:
    cached_ms = _milliseconds(cached.step_seconds[1:])
    recomputed_ms = _milliseconds(recomputed.step_seconds[1:])
    return {
        "benchmark": "cross_attention_memory_cache",
        "config": config_name,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "prompt_tokens": text.seq_len,
        "new_tokens": len(cached.token_ids),
        "cross_image_px": config.cross_vision.image_px,
        "cross_patches": config.cross_vision.num_patches,
        "tokens_identical": True,
        "max_abs_step_logit_difference": float((cached.step_logits - recomputed.step_logits).abs().max()),
        "prefill_ms": {
            "cached": _milliseconds(cached.step_seconds[:1]),
            "recomputed": _milliseconds(recomputed.step_seconds[:1]),
        },
        "decode_ms_per_token": {"cached": cached_ms, "recomputed": recomputed_ms},
        "decode_cpu_ms_per_token": {
            "cached": _milliseconds(cached.step_cpu_seconds[1:]),
            "recomputed": _milliseconds(recomputed.step_cpu_seconds[1:]),
        },
        "saving_ms_per_token": round(recomputed_ms - cached_ms, 3),
        "recompute_gflop_per_token": round(cross_recompute_flops(config) / 1e9, 3),
        "speedup": round(recomputed_ms / cached_ms, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the JSON report for the preset and sizes given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a CogAgent preset name")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    report = measure_cross_cache(
        args.config, args.new_tokens, args.threads, device=args.device, dtype=getattr(torch, args.dtype)
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
