"""Images per second of `cogvlm caption` on the CPU, with 1 and 2 data-parallel ranks; prints JSON.

The inputs are fresh synthetic scenes of the kind the embedded model was trained on (seeded), captioned by
the embedded model with its defaults (greedy, "Describe the image."), by the real command into a new
output each time. `images_per_s` counts the captioning alone: the time the command reports from every
rank's model being loaded to the merged output; `end_to_end_images_per_s` divides by the whole command's
wall time (interpreter, torchrun, loading). The configurations take turns `--repeats` times (so a busy
machine slows them alike) and medians are reported; the outputs' digests show that they agree.
A configuration RxT runs R ranks of T torch threads each (OMP_NUM_THREADS); OpenMP threads wait
passively (OMP_WAIT_POLICY=PASSIVE unless set), since spinning threads crawl on a CPU shared with other
busy processes. Usage:
python benchmarks/caption_throughput.py [--images 32] [--batch_size 8] [--configs 1x1 1x2 2x1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cogvlm.train.synthetic import EMBEDDED_SCENE, make_scene, render

REPO = Path(__file__).resolve().parent.parent
SEED = 20261204  # a seed the embedded model never trained on
CAPTION_TIME = re.compile(r"done by this run in ([0-9.]+) s")


def write_images(folder: Path, count: int) -> None:
    """`count` seeded synthetic scenes as PNG files."""
    rng = random.Random(SEED)
    folder.mkdir(parents=True)
    for index in range(count):
        render(make_scene(rng, EMBEDDED_SCENE), EMBEDDED_SCENE).save(folder / f"scene_{index:05d}.png")


def run_command(images: Path, output: Path, ranks: int, threads: int, batch_size: int) -> tuple[float, float]:
    """Wall seconds of one `cogvlm caption` run and the captioning seconds it reports."""
    command = [sys.executable, "-m", "cogvlm.cli", "caption", str(images), "--output", str(output)]
    command += ["--batch_size", str(batch_size), "--nproc", str(ranks)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("LOCAL_RANK", None)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    return wall_s, float(CAPTION_TIME.search(result.stderr).group(1))


def summarize(setup: str, count: int, runs: list[tuple[float, float]], output: Path) -> dict:
    """Medians of one configuration's runs, and what its first output holds."""
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == count, f"{len(records)} records for {count} images"
    caption_s = statistics.median(caption for _, caption in runs)
    wall_s = statistics.median(wall for wall, _ in runs)
    return {
        "ranks": int(setup.split("x")[0]),
        "threads_per_rank": int(setup.split("x")[1]),
        "caption_s": round(caption_s, 2),
        "wall_s": round(wall_s, 2),
        "images_per_s": round(count / caption_s, 3),
        "end_to_end_images_per_s": round(count / wall_s, 3),
        "caption_s_runs": [round(caption, 2) for _, caption in runs],
        "mean_answer_chars": round(sum(len(r.get("answer", "")) for r in records) / count, 1),
        "errors": sum("error" in r for r in records),
        "output_sha256": hashlib.sha256(output.read_bytes()).hexdigest()[:16],
    }


def main() -> None:
    """Parse flags, make the images, run the configurations in turn and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"], help="RANKSxTHREADS")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {setup: [] for setup in args.configs}
    with tempfile.TemporaryDirectory(prefix="caption-bench-") as directory:
        work = Path(directory)
        write_images(work / "images", args.images)
        for repeat in range(args.repeats):
            for setup in args.configs:
                ranks, threads = (int(n) for n in setup.split("x"))
                output = work / f"captions_{setup}_{repeat}.jsonl"
                runs[setup].append(run_command(work / "images", output, ranks, threads, args.batch_size))
        results = [summarize(s, args.images, runs[s], work / f"captions_{s}_0.jsonl") for s in args.configs]
    report = {
        "model": "embedded",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "images": args.images,
        "batch_size": args.batch_size,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
