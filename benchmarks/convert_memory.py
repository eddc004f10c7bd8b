"""Peak memory and time of `cogvlm convert` (SAT -> HF -> SAT) on a real-width checkpoint; prints JSON.

The checkpoint has CogVLM-17B's widths with fewer layers (flags), bf16, so it is a few GB. Each conversion
runs in a fresh process that samples its anonymous resident memory (heap, not the page cache of the files
it maps) every 5 ms. Usage: python benchmarks/convert_memory.py --workdir /tmp/bench [--llm_layers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_checkpoint(directory: Path, llm_layers: int, eva_layers: int) -> None:
    """A bf16 SAT checkpoint with the 17B widths and the given depths (values are not random: speed)."""
    import torch

    from cogvlm.checkpoints.sat_format import save_sat_checkpoint
    from cogvlm.models.builders import build_model
    from cogvlm.models.presets import preset

    config = preset("cogvlm-17b-490")
    llm = dataclasses.replace(config.llm, num_layers=llm_layers)
    vision = dataclasses.replace(
        config.vision, transformer=dataclasses.replace(config.vision.transformer, num_layers=eva_layers)
    )
    config = dataclasses.replace(config, llm=llm, vision=vision)
    shapes = build_model(config, device="meta").state_dict()
    state = {key: torch.full(value.shape, 0.5, dtype=torch.bfloat16) for key, value in shapes.items()}
    save_sat_checkpoint(directory, config, [state])


def convert_and_measure(source: Path, output: Path) -> dict:
    """Run one conversion in this process and report its peak anonymous memory."""
    from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint

    baseline, peak, done = _rss_anon_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    result = convert_checkpoint(ConvertConfig(source, output))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return {
        "direction": f"{result.source_format}->{result.target_format}",
        "output_bytes": size,
        "seconds": round(seconds, 2),
        "baseline_rss_anon_mb": round(baseline, 1),
        "peak_rss_anon_mb": round(peak[0], 1),
        "peak_rss_including_mapped_files_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def main() -> None:
    """Build the checkpoint, then convert it both ways, each in a fresh process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--llm_layers", type=int, default=2)
    parser.add_argument("--eva_layers", type=int, default=4)
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(convert_and_measure(*args.measure)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    make_checkpoint(args.workdir / "sat", args.llm_layers, args.eva_layers)
    results = []
    for source, output in (("sat", "hf"), ("hf", "sat_again")):
        command = [sys.executable, __file__, "--workdir", str(args.workdir), "--measure"]
        command += [str(args.workdir / source), str(args.workdir / output)]
        results.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    print(
        json.dumps({"llm_layers": args.llm_layers, "eva_layers": args.eva_layers, "runs": results}, indent=2)
    )


if __name__ == "__main__":
    main()
