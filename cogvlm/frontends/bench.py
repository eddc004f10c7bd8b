"""`cogvlm bench`: image encoding, prefill and decode speed, memory and the bare-linears floor, as JSON.

The named configs and the protocol (fp32, 2 threads, batch 1, chat_old, one image, 64 greedy tokens with
no end token) are the ones the reference implementation was measured with (`bench_configs.json`), so
the figures compare side by side. Full-size presets (random weights) run on CUDA only.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cogvlm.checkpoints.loading import reset_computed_buffers
from cogvlm.checkpoints.sat_format import config_from_sat
from cogvlm.frontends.bench_protocol import (
    BENCH_CONFIGS_FILE,
    FULL_SIZE_PRESETS,
    bench_config_names,
    reference_configs,
)
from cogvlm.image_processors import DualImageProcessor, ImageProcessor
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.generate import GenerationConfig, iterate_batch, new_kv_cache
from cogvlm.inference.settings import GenerationDefaults, GenerationSettings, build_generation_config
from cogvlm.models import mixin_names
from cogvlm.models.builders import build_model
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.models.context import CrossMemory, ForwardContext
from cogvlm.models.presets import preset
from cogvlm.nn.attention import attention
from cogvlm.nn.quantized import VISION_TOWER_PREFIXES, decode_linears, quantize_, weight_bytes
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from cogvlm.text_processors import build_inference_inputs, build_prompt, load_tokenizer

FULL_SIZE_SEED = 20240620
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# `run_quant_comparison`: unquantized, int8, int4 (one scale per row, as `--quant` gives), and the
# figures it puts side by side (each unquantized / quantized ratio is a speed-up where above 1).
COMPARED_QUANT_BITS = (None, 8, 4)
COMPARED_FIGURES = (
    "decode_ms_per_token_batch_1",
    "bare_linears_ms_per_token",
    "prefill_ms",
    "first_token_ms",
)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: a named config, where, in which dtype, and how often."""

    name: str
    image: Path
    tokenizer: Path
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = 2
    new_tokens: int = 64
    batch_size: int = 4
    repeats: int = 3
    quant_bits: int | None = None
    decode_step: str = "eager"

    def __post_init__(self) -> None:
        names = bench_config_names()
        if self.name not in names:
            raise ValueError(f"unknown bench config {self.name!r}; known: {', '.join(names)}")
        if self.name in FULL_SIZE_PRESETS and not self.device.startswith("cuda"):
            raise ValueError(f"bench config {self.name!r} is full size: run it with --device cuda")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        for field_name in ("new_tokens", "batch_size", "repeats"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be >= 1, got {getattr(self, field_name)}")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 to time decoding, got {self.new_tokens}")


def model_config(name: str) -> tuple[CogVLMConfig, int]:
    """The model config and weight seed of a named bench config."""
    if name in FULL_SIZE_PRESETS:
        return preset(name), FULL_SIZE_SEED
    entry = reference_configs()[name]
    raw = dict(entry["sat_model_config"])
    if "cross_vision" in entry:
        cross = entry["cross_vision"]
        raw["cross_vision_args"] = {
            "width": cross["width"],
            "num_blocks": cross["layers"],
            "head_width": cross["head_width"],
        }
    return config_from_sat(raw, source=f"{BENCH_CONFIGS_FILE}:{name}"), entry["init_seed"]


def _init_value(name: str, shape: torch.Size) -> tuple[float, float, float]:
    """(offset, scale, fan-in divisor) of a parameter's N(0, 1) draw, by the golden set's rules."""
    if name.endswith("bias"):
        return 0.0, 0.1, 1.0
    if len(shape) == 1:
        return 1.0, 0.1, 1.0  # norm weights
    if "word_embeddings" in name:
        return 0.0, 1.0, 1.0
    if "position_embeddings" in name or "pos_embed" in name:
        return 0.0, 0.2, 1.0
    if name.rsplit(".", 1)[-1] in ("boi", "eoi", "cls_token"):
        return 0.0, 0.5, 1.0
    return 0.0, 1.0, float(torch.Size(shape[1:]).numel()) ** 0.5


@torch.no_grad()
def init_random_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: each parameter from its own generator, in sorted-name order."""
    for index, (name, param) in enumerate(sorted(model.named_parameters())):
        generator = torch.Generator(device=param.device).manual_seed(seed + index)
        offset, scale, fan_in = _init_value(name, param.shape)
        param.normal_(0.0, 1.0, generator=generator).mul_(scale / fan_in).add_(offset)


def build_random_model(name: str, device: str, dtype: torch.dtype) -> VisionLanguageModel:
    """The named config's model with seeded random weights, on `device` in `dtype`."""
    config, seed = model_config(name)
    model = build_model(config, device="meta").to(dtype)
    model.to_empty(device=device)
    reset_computed_buffers(model)
    init_random_weights(model, seed)
    return model.eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(run: Callable[[], object], device: torch.device) -> float:
    """ms of one call of `run`."""
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _median_ms(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    return statistics.median(_time_ms(run, device) for _ in range(repeats))


def _time_decode(model, requests, config: GenerationConfig, device) -> float:
    """ms per decoding step of one generation, from its first token to its last (the clock read at both
    ends only)."""
    first = None
    steps = 0
    for step in iterate_batch(model, requests, config):
        if first is None:
            step.tokens.sum().item()  # wait for the first token
            first = time.perf_counter()
        steps += 1
    _synchronize(device)
    return (time.perf_counter() - first) * 1e3 / (steps - 1)


def _first_token(model, requests, config: GenerationConfig) -> None:
    """Run a generation up to its first token and stop it there."""
    for step in iterate_batch(model, requests, config):
        step.tokens.sum().item()  # wait for the first token
        break


def _time_bare_linears(model, batch_size: int, device, dtype, steps: int) -> float:
    """ms per decoding step of the linears a step runs, each called alone on a random input."""
    layers = decode_linears(model)
    inputs = {
        module.in_features: torch.randn(batch_size, 1, module.in_features, device=device, dtype=dtype)
        for module in layers
    }

    def one_step():
        for module in layers:
            module(inputs[module.in_features])

    with torch.inference_mode():
        one_step()
        return _time_ms(lambda: [one_step() for _ in range(steps)], device) / steps


def _cross_patches(model: VisionLanguageModel) -> int:
    """Patches of CogAgent's cross tower: the keys of every cross-attention."""
    return model.mixins[mixin_names.CROSS_VISION].pos_embed.shape[0]


_LinearWork = tuple[nn.Module, int]  # a linear and the number of tokens it multiplies


def _prefill_linear_tokens(model: VisionLanguageModel, request: GenerationRequest) -> list[_LinearWork]:
    """Each linear of the LLM's prompt pass with the number of tokens it multiplies.

    Text weights take the text tokens, vision experts the image tokens (boi included), cross-attention's
    query and output every token, its key/value the cross tower's patches (once per image), and the head
    the last position.
    """
    mask = request.text.vision_expert_mask
    image_tokens = int(mask.sum())
    counts = {"text": mask.numel() - image_tokens, "vision": image_tokens, "all": mask.numel()}
    if model.config.has_cross_vision:
        counts["cross"] = _cross_patches(model)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, ColumnParallelLinear | RowParallelLinear) or name.startswith(
            VISION_TOWER_PREFIXES
        ):
            continue
        if "vision" in name:
            found.append((module, counts["vision"]))
        elif name.endswith("cross_attention.key_value"):
            found.append((module, counts["cross"]))
        elif name.endswith("lm_head"):
            found.append((module, 1))  # the prompt's logits: the last position only
        elif ".cross_attention." in name:
            found.append((module, counts["all"]))
        else:
            found.append((module, counts["text"]))
    return found


def _prefill_linears_pass(model: VisionLanguageModel, request: GenerationRequest, device, dtype):
    """The prompt pass's linears, each called alone on random rows: the prefill's floor."""
    work = _prefill_linear_tokens(model, request)
    shapes = {(tokens, module.in_features) for module, tokens in work}
    inputs = {shape: torch.randn(1, *shape, device=device, dtype=dtype) for shape in shapes}

    def one_pass():
        for module, tokens in work:
            module(inputs[tokens, module.in_features])

    return one_pass


# An attention call of the prompt pass: query shape, key (and value) shape, causal.
AttentionWork = tuple[tuple[int, ...], tuple[int, ...], bool]


def prefill_attention_work(model: VisionLanguageModel, request: GenerationRequest) -> list[AttentionWork]:
    """Each softmax attention of the LLM's prompt pass: per layer its causal self-attention over the prompt
    and, for CogAgent, its cross-attention from every token to the cross tower's patches."""
    length = request.text.seq_len
    patches = _cross_patches(model) if model.config.has_cross_vision else 0
    work = []
    for layer in model.transformer.layers:
        self_attention = layer.attention
        query_heads = self_attention.local_qkv_widths[0] // self_attention.head_dim
        key_shape = (1, self_attention.local_key_value_heads, length, self_attention.head_dim)
        work.append(((1, query_heads, length, self_attention.head_dim), key_shape, True))
        cross = layer.cross_attention
        if cross is not None and patches:
            heads = cross.query.weight.shape[0] // cross.head_dim
            work.append(((1, heads, length, cross.head_dim), (1, heads, patches, cross.head_dim), False))
    return work


def _prefill_attention_pass(model: VisionLanguageModel, request: GenerationRequest, device, dtype):
    """The prompt pass's attention alone (SDPA on random tensors of its shapes): what the linears-only
    floor leaves out."""

    def random(shape):
        return torch.randn(shape, device=device, dtype=dtype)

    shapes = prefill_attention_work(model, request)
    work = [(random(query), random(keys), causal) for query, keys, causal in shapes]

    def one_pass():
        for query, keys, causal in work:
            attention(query, keys, keys, is_causal=causal)

    return one_pass


def _requests(model: VisionLanguageModel, config: BenchConfig, protocol: dict, rows: int):
    tokenizer = load_tokenizer(str(config.tokenizer))
    prompt = build_prompt(protocol["version"], protocol["query"], protocol["history"])
    text = build_inference_inputs(tokenizer, prompt, model.config.image_length)
    dtype = DTYPES[config.dtype]
    if model.config.has_cross_vision:
        views = DualImageProcessor(model.config.vision.image_px, model.config.cross_vision.image_px)(
            config.image
        )
        request = GenerationRequest(text, views.pixel_values.to(dtype), views.cross_pixel_values.to(dtype))
    else:
        pixels = ImageProcessor(model.config.vision.image_px)(config.image).to(dtype)
        request = GenerationRequest(text, pixels)
    return [request] * rows


def _encode_image(model: VisionLanguageModel, request: GenerationRequest, device) -> None:
    with torch.inference_mode():
        model.mixins[mixin_names.IMAGE].encode_images(request.pixel_values.to(device))
        if request.cross_pixel_values is not None:
            model.encode_cross(request.cross_pixel_values.to(device))


def _prefill_pass(model: VisionLanguageModel, request: GenerationRequest, device) -> Callable[[], object]:
    """The prompt's forward pass alone: no tower (image slots hold token embeddings), but CogAgent's
    cross-attention runs, on the cross tower's output encoded beforehand, its keys and values computed in
    the pass as generation does."""
    text = request.text
    inputs = {name: getattr(text, name).to(device) for name in ("input_ids", "position_ids")}
    encoded = None
    if request.cross_pixel_values is not None:
        with torch.inference_mode():
            encoded = model.encode_cross(request.cross_pixel_values.to(device)).encoder_outputs

    def forward():
        cache = new_kv_cache(model, 1, text.seq_len, zeroed=False)  # the pass writes every slot
        ctx = ForwardContext(
            position_ids=inputs["position_ids"],
            vision_token_mask=text.vision_expert_mask.to(device),
            cross_memory=None if encoded is None else CrossMemory(encoded),
            kv_cache=cache,
        )
        return model(inputs["input_ids"], ctx, last_position_only=True)

    return forward


def _bandwidth_gb_s(device: torch.device) -> float:
    """Device memory bandwidth measured by copying 1 GiB (bytes read + written per second)."""
    source = torch.empty(1 << 28, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    ms = _median_ms(lambda: target.copy_(source), device, 5)
    return 2 * source.numel() * 4 / (ms / 1e3) / 1e9


def _decode_bytes_per_token(model, prompt_tokens: int, new_tokens: int) -> int:
    """Weights read by one decoding step plus the KV cache read at the average decode length."""
    llm = model.config.llm
    weights = sum(weight_bytes(module) for module in decode_linears(model))
    average_length = prompt_tokens + new_tokens / 2
    element = model.transformer.word_embeddings.weight.element_size()
    kv = 2 * llm.num_layers * llm.attention_width * average_length * element
    return int(weights + kv)


def _protocol_generation(model: VisionLanguageModel, config: BenchConfig) -> GenerationConfig:
    """Greedy with SAT's strategy and no end token: exactly `new_tokens` are generated."""
    defaults = GenerationDefaults(model.config.llm.max_sequence_length, end_token_ids=())
    settings = GenerationSettings(max_new_tokens=config.new_tokens, top_k=1, decode_step=config.decode_step)
    return build_generation_config(defaults, settings)


@dataclass(frozen=True)
class _Prepared:
    """A config's model, warmed up, with its generation settings and requests."""

    config: BenchConfig
    model: VisionLanguageModel
    generation: GenerationConfig
    single: list[GenerationRequest]
    batch: list[GenerationRequest]


def _progress(message: str, started: float) -> None:
    """A line on stderr per long step (full-size configs take minutes); stdout holds only the JSON."""
    print(f"bench: {message} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)


def _prepare(config: BenchConfig) -> _Prepared:
    """Build (and quantize) the model, and warm it up on one and on `batch_size` rows."""
    started = time.perf_counter()
    protocol = reference_configs()["protocol"]
    model = build_random_model(config.name, config.device, DTYPES[config.dtype])
    _progress(f"built {config.name} with random weights", started)
    if config.quant_bits is not None:
        quantize_(model, config.quant_bits)
        _progress(f"quantized to int{config.quant_bits}", started)
    prepared = _Prepared(
        config,
        model,
        _protocol_generation(model, config),
        _requests(model, config, protocol, 1),
        _requests(model, config, protocol, config.batch_size),
    )
    # Warm-up: allocator, and with decode_step="compiled" the compilation of the batch-1 step (the batch-N
    # run warms up its own, after every batch-1 figure: see `_batch_figures`).
    _time_decode(model, prepared.single, prepared.generation, torch.device(config.device))
    _progress("warmed up", started)
    return prepared


# A repeat times the first token and its floors in this many rounds. A round takes one sample of each back
# to back (well under a second), so that its ratios compare figures taken under one load: these machines
# change speed from second to second, and ratios of figures taken seconds apart swung by ±0.15.
ROUNDS = 5


def _first_token_work(prepared: _Prepared) -> dict[str, Callable[[], object]]:
    """What each first-token figure times, built once per repeat and run once before timing."""
    model, request, device = prepared.model, prepared.single[0], torch.device(prepared.config.device)
    dtype = DTYPES[prepared.config.dtype]
    work = {
        "first_token_ms": lambda: _first_token(model, prepared.single, prepared.generation),
        "image_encoding_ms": lambda: _encode_image(model, request, device),
        "prefill_ms": _prefill_pass(model, request, device),
        "prefill_linears_ms": _prefill_linears_pass(model, request, device, dtype),
        "prefill_attention_ms": _prefill_attention_pass(model, request, device, dtype),
    }
    with torch.inference_mode():
        for run in work.values():
            run()
    return work


def _first_token_rounds(prepared: _Prepared) -> list[dict[str, float]]:
    """`ROUNDS` rounds of the first-token figures, each with its ratios."""
    work = _first_token_work(prepared)
    device = torch.device(prepared.config.device)
    rounds = []
    with torch.inference_mode():
        for _ in range(ROUNDS):
            figures = {name: _time_ms(run, device) for name, run in work.items()}
            rounds.append(figures | _first_token_ratios(figures))
    return rounds


def _measure_repeat(prepared: _Prepared) -> dict[str, float | list]:
    """One repeat of every figure: a decode run with its floor, then the first-token rounds. Every figure
    and ratio is the median of the rounds' (`rounds` lists them)."""
    model, device = prepared.model, torch.device(prepared.config.device)
    dtype = DTYPES[prepared.config.dtype]
    decode_ms = _time_decode(model, prepared.single, prepared.generation, device)
    floor_ms = _time_bare_linears(model, 1, device, dtype, prepared.config.new_tokens)
    rounds = _first_token_rounds(prepared)
    figures = {
        "decode_ms_per_token_batch_1": decode_ms,
        "bare_linears_ms_per_token": floor_ms,
        "decode_over_bare_linears": decode_ms / floor_ms,
    }
    figures |= {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    return figures | {"rounds": rounds}


def _first_token_ratios(figures: dict[str, float]) -> dict[str, float]:
    """The first token over its floors, from one round's figures."""
    # The floor: the towers (measured as they run) plus the prompt's bare linears.
    floor = figures["image_encoding_ms"] + figures["prefill_linears_ms"]
    return {
        "first_token_over_encoding_plus_prefill_linears": figures["first_token_ms"] / floor,
        # The same with the prompt's attention added to the floor (what the linears leave out).
        "first_token_over_encoding_plus_prefill_linears_and_attention": figures["first_token_ms"]
        / (floor + figures["prefill_attention_ms"]),
    }


def _batch_figures(prepared: _Prepared, repeats: int) -> dict[str, float]:
    """The batch-N decode (warm-up, then the median of `repeats` runs), taken after every batch-1 figure:
    the peak memory up to here is the reference protocol's (batch 1), reported apart from the overall one."""
    device = torch.device(prepared.config.device)
    figures = {f"{name}_batch_1": value for name, value in _peak_memory(device).items()}
    _time_decode(prepared.model, prepared.batch, prepared.generation, device)
    runs = [_time_decode(prepared.model, prepared.batch, prepared.generation, device) for _ in range(repeats)]
    return {"batch_decode_ms": statistics.median(runs), **figures}


def _result(prepared: _Prepared, repeats: list[dict[str, float]], batch: dict[str, float]) -> dict:
    """The JSON figures of a prepared model from its batch-1 repeats (medians) and its batch-N figures."""
    config, model, device = prepared.config, prepared.model, torch.device(prepared.config.device)
    figures = {name: statistics.median(r[name] for r in repeats) for name in repeats[0] if name != "rounds"}
    batch = dict(batch)
    batch_ms = batch.pop("batch_decode_ms")
    result = {
        "config": config.name,
        "model_class": model.config.model_class,
        "device": str(device),
        "dtype": config.dtype,
        "threads": torch.get_num_threads(),
        "quant_bits": config.quant_bits,
        "decode_step": config.decode_step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weight_bytes(model),
        "image": str(config.image),
        "tokenizer": str(config.tokenizer),
        "prefill_tokens": prepared.single[0].text.seq_len,
        "new_tokens": config.new_tokens,
        **figures,
        "decode_tokens_per_s_batch_1": 1e3 / figures["decode_ms_per_token_batch_1"],
        "batch_size": config.batch_size,
        "decode_tokens_per_s_batch_n": config.batch_size * 1e3 / batch_ms,
        "repeats": config.repeats,
        **batch,
        **_peak_memory(device),
        "per_repeat": repeats,  # every repeat's figures, in order, for the spread behind the medians
    }
    if device.type == "cuda":
        result.update(_bandwidth_figures(model, result))
    return result


def run_bench(config: BenchConfig) -> dict:
    """Build the model, run the protocol and return the figures (medians over repeats) as a dict."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    prepared = _prepare(config)
    started, repeats = time.perf_counter(), []
    for index in range(config.repeats):
        repeats.append(_measure_repeat(prepared))
        _progress(f"repeat {index + 1}/{config.repeats}", started)
    batch = _batch_figures(prepared, config.repeats)
    _progress(f"batch of {config.batch_size}", started)
    return _result(prepared, repeats, batch)


def run_quant_comparison(config: BenchConfig) -> dict:
    """The config unquantized, with int8 and with int4 (per row) in one process, and their speed ratios.

    The three models are built first; each repeat then measures them back to back, so that a ratio
    compares figures taken under the same load, and each ratio is the median of the repeats' ratios.
    Peak memory is the process's, with the three models loaded.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    prepared = [_prepare(replace(config, quant_bits=bits)) for bits in COMPARED_QUANT_BITS]
    repeats = [[] for _ in prepared]
    started = time.perf_counter()
    for index in range(config.repeats):
        for runs, model in zip(repeats, prepared, strict=True):
            runs.append(_measure_repeat(model))
        _progress(f"repeat {index + 1}/{config.repeats}", started)
    batches = [_batch_figures(model, config.repeats) for model in prepared]
    results = [_result(*parts) for parts in zip(prepared, repeats, batches, strict=True)]
    labels = [config.dtype if bits is None else f"int{bits}" for bits in COMPARED_QUANT_BITS]
    comparison = {
        f"{figure}_{label}": result[figure]
        for figure in COMPARED_FIGURES
        for label, result in zip(labels, results, strict=True)
    }
    for label, runs in zip(labels[1:], repeats[1:], strict=True):
        for figure in COMPARED_FIGURES:
            ratios = [
                base[figure] / quantized[figure] for base, quantized in zip(repeats[0], runs, strict=True)
            ]
            comparison[f"{figure}_{config.dtype}_over_{label}"] = statistics.median(ratios)
    return {"comparison": comparison, "runs": results}


def _bandwidth_figures(model: VisionLanguageModel, result: dict) -> dict:
    """Decode speed as a fraction of what the measured memory bandwidth allows."""
    bandwidth = _bandwidth_gb_s(torch.device(result["device"]))
    bytes_per_token = _decode_bytes_per_token(model, result["prefill_tokens"], result["new_tokens"])
    bound = bandwidth * 1e9 / bytes_per_token
    return {
        "measured_bandwidth_gb_s": bandwidth,
        "decode_bytes_per_token": bytes_per_token,
        "bandwidth_bound_tokens_per_s": bound,
        "fraction_of_bandwidth_bound": result["decode_tokens_per_s_batch_1"] / bound,
    }


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device)}
    # ru_maxrss is in KiB on Linux: the peak resident set of the whole process.
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
