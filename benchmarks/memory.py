"""Peak device and host memory while loading and generating, per dtype and quantization; prints JSON.

For each model it writes one seeded random SAT checkpoint, then loads it in a fresh process per case
(`cogvlm.api.load`, the path every command uses) and generates a few tokens about an image. A sampler
thread reads the process's anonymous resident memory (heap: not the page cache of mapped checkpoint
files) every 2 ms; on CUDA the device peak is `torch.cuda.max_memory_allocated`. Figures per case:

- `model_bytes`: the loaded model's parameters and buffers (quantized integers and scales included);
- `one_fp16_layer_bytes`: the largest transformer layer of any tower in 16 bits (the loader's unit);
- `load_peak_device_bytes` / `generate_peak_device_bytes` (on CPU the device is the host);
- `load_host_peak_above_baseline_bytes`: host heap growth while loading, over the process baseline
  (torch and cogvlm imported, CUDA context made); on CPU it includes the model itself;
- the targets of the issue: `device_peak_over_budget` = load peak / (model bytes + one fp16 layer), at most
  1.15 for int4; `host_transient_bytes` = host growth beyond what stays resident (CPU: minus the model),
  at most 2 GB for any model size.

Usage:
  python benchmarks/memory.py --device cpu --models small-cogvlm small-cogagent --workdir /tmp/mem
  python benchmarks/memory.py --device cpu --models deep-small-cogvlm --quants 4 8   # bigger than the budget
  python benchmarks/memory.py --device cuda --models cogvlm-17b-490:4:8 --dtypes bfloat16
A model is a bench/preset name, optionally `name:LLM_LAYERS[:VISION_LAYERS]` to change depths (full widths).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from process_memory import rss_anon_bytes  # beside this script

HOST_BUDGET_BYTES = 2 * 1024**3
INT4_DEVICE_TARGET = 1.15
# `deep-small-cogvlm`: small-cogvlm's widths with enough layers to be larger than the host budget in fp32.
DEEP_SMALL_LAYERS = 96
GENERATED_TOKENS = 8


class HostPeak:
    """The largest anonymous resident size seen by a 2 ms sampler since the last `reset`."""

    def __init__(self) -> None:
        self.peak = rss_anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_bytes())
            time.sleep(0.002)

    def reset(self) -> None:
        self.peak = rss_anon_bytes()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_anon_bytes())


def model_config(spec: str):
    """The config of `name[:llm_layers[:vision_layers]]` (a preset or a bench config name)."""
    from cogvlm.frontends import bench
    from cogvlm.models.presets import PRESETS

    name, *depths = spec.split(":")
    if name == "deep-small-cogvlm":
        name, depths = "small-cogvlm", [str(DEEP_SMALL_LAYERS), *depths]
    config = PRESETS[name] if name in PRESETS else bench.model_config(name)[0]
    if depths:
        layers = int(depths[0])
        cross = config.llm.cross_attention  # CogAgent: one flag per LLM layer
        if cross is not None:
            cross = dataclasses.replace(cross, layers=(True,) * layers)
        llm = dataclasses.replace(config.llm, num_layers=layers, cross_attention=cross)
        config = dataclasses.replace(config, llm=llm)
    if len(depths) > 1:
        tower = dataclasses.replace(config.vision.transformer, num_layers=int(depths[1]))
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, transformer=tower))
    return config


def one_fp16_layer_bytes(config) -> int:
    """16-bit bytes of the largest layer (index 0) of any tower: LLM (with its mixins), EVA, cross."""
    from cogvlm.models.builders import build_model

    totals: dict[str, int] = {}
    for key, value in build_model(config, device="meta").state_dict().items():
        index = re.search(r"\.(\d+)\.", key)
        if index is None or index.group(1) != "0":
            continue
        tower = "eva" if key.startswith("mixins.eva.") else "llm"
        tower = "cross" if key.startswith("mixins.encoder.") else tower
        totals[tower] = totals.get(tower, 0) + value.numel() * 2
    return max(totals.values())


def write_checkpoint(spec: str, directory: Path, dtype_name: str) -> Path:
    """A seeded random SAT checkpoint of `spec` in `dtype_name`, written once (reused if present)."""

    from cogvlm.checkpoints.loading import reset_computed_buffers
    from cogvlm.checkpoints.sat_format import save_sat_checkpoint
    from cogvlm.frontends.bench import DTYPES, init_random_weights
    from cogvlm.models.builders import build_model

    target = directory / f"{spec.replace(':', '_')}-{dtype_name}"
    if (target / "model_config.json").is_file():
        return target
    config = model_config(spec)
    model = build_model(config, device="meta").to(DTYPES[dtype_name]).to_empty(device="cpu")
    reset_computed_buffers(model)
    init_random_weights(model, seed=20240620)
    save_sat_checkpoint(target, config, [model.state_dict()])
    return target


def _tensor_bytes(model) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_case(
    checkpoint: Path, spec: str, device: str, dtype_name: str, quant: int | None, trace: bool = False
) -> dict:
    """Load and generate in this (fresh) process; the figures of one case (`trace`: CUDA only, also the
    largest allocations alive at the load's peak, with where they were made)."""
    import torch

    import cogvlm
    from cogvlm.embedded import embedded_checkpoint, example_image
    from cogvlm.frontends.bench import DTYPES
    from cogvlm.inference.generate import generate_batch

    torch.set_num_threads(min(torch.get_num_threads(), 16))
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=device)  # the CUDA context belongs to the baseline
    if trace:
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=2_000_000)
    host = HostPeak()
    baseline = rss_anon_bytes()
    host.reset()
    started = time.perf_counter()
    tokenizer = str(embedded_checkpoint() / "tokenizer.model")
    model = cogvlm.load(
        checkpoint, dtype=DTYPES[dtype_name], device=device, quant_bits=quant, local_tokenizer=tokenizer
    )
    load_s = time.perf_counter() - started
    load_host_peak = host.peak
    figures = {"model_bytes": _tensor_bytes(model.model), "load_seconds": load_s}
    figures.update(_device_peak(device, "load", load_host_peak - baseline))
    if trace:
        figures["load_peak_allocations"] = _allocations_at_peak(torch.cuda.memory._snapshot())
        torch.cuda.memory._record_memory_history(enabled=None)
    host.reset()
    generation = model.generation_config(max_new_tokens=GENERATED_TOKENS, end_token_ids=())
    # Token ids only: random weights pick ids beyond the stand-in tokenizer's vocabulary.
    generate_batch(model.model, [model.request(example_image(), "Describe the image.")], generation)
    figures.update(_device_peak(device, "generate", host.stop() - baseline))
    figures["load_host_peak_above_baseline_bytes"] = load_host_peak - baseline
    return _with_targets(figures, spec, device, quant)


def _allocations_at_peak(snapshot: dict, shown: int = 8) -> list[dict]:
    """Replay the allocator's trace: the `shown` largest blocks alive when the most bytes were, each with
    the innermost cogvlm/torch frames that made it."""
    live: dict[int, dict] = {}
    total = peak = 0
    at_peak: list[dict] = []
    for event in snapshot["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    largest = sorted(at_peak, key=lambda event: -event["size"])[:shown]
    return [
        {
            "bytes": event["size"],
            "where": [
                f"{Path(frame['filename']).name}:{frame['line']} {frame['name']}"
                for frame in event.get("frames", [])
                if "cogvlm" in frame["filename"] or "benchmarks" in frame["filename"]
            ][:4],
        }
        for event in largest
    ]


def _device_peak(device: str, phase: str, host_growth: int) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {f"{phase}_peak_device_bytes": host_growth}
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return {f"{phase}_peak_device_bytes": peak}


def _with_targets(figures: dict, spec: str, device: str, quant: int | None) -> dict:
    layer = one_fp16_layer_bytes(model_config(spec))
    on_host = 0 if device.startswith("cuda") else figures["model_bytes"]
    ratio = figures["load_peak_device_bytes"] / (figures["model_bytes"] + layer)
    transient = figures["load_host_peak_above_baseline_bytes"] - on_host
    figures.update(
        one_fp16_layer_bytes=layer,
        device_peak_over_budget=round(ratio, 4),
        host_transient_bytes=transient,
        host_transient_within_budget=transient <= HOST_BUDGET_BYTES,
    )
    if quant == 4:
        figures["int4_device_target_met"] = ratio <= INT4_DEVICE_TARGET
    return figures


def run_case(
    checkpoint: Path, spec: str, device: str, dtype_name: str, quant: int | None, trace: bool = False
) -> dict:
    """`measure_case` in a fresh interpreter, so that each case starts from the same baseline."""
    command = [sys.executable, __file__, "--child", str(checkpoint), "--models", spec, "--device", device]
    command += ["--trace_peak"] if trace else []
    command += ["--dtypes", dtype_name, "--quants", "none" if quant is None else str(quant)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quant(value: str) -> int | None:
    return None if value == "none" else int(value)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--models", nargs="+", default=["small-cogvlm", "small-cogagent"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 and bfloat16")
    parser.add_argument("--quants", nargs="+", default=["none", "8", "4"], help="none, 8, 4")
    parser.add_argument("--checkpoint_dtype", default=None, help="on disk (CUDA: bfloat16)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cogvlm-memory-bench"))
    parser.add_argument(
        "--trace_peak", action="store_true", help="CUDA: list the allocations alive at each load's peak"
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtypes = args.dtypes or (["bfloat16"] if args.device.startswith("cuda") else ["float32", "bfloat16"])
    if args.child is not None:
        quant = _quant(args.quants[0])
        figures = measure_case(args.child, args.models[0], args.device, dtypes[0], quant, args.trace_peak)
        print(json.dumps(figures))
        return
    stored = args.checkpoint_dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    runs = []
    for spec in args.models:
        checkpoint = write_checkpoint(spec, args.workdir, stored)
        for dtype_name in dtypes:
            for quant in map(_quant, args.quants):
                case = {"model": spec, "device": args.device, "dtype": dtype_name, "quant": quant}
                figures = run_case(checkpoint, spec, args.device, dtype_name, quant, args.trace_peak)
                runs.append({**case, **figures})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"checkpoint_dtype": stored, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
