"""Time of our bicubic resize against the installed Pillow's, from typical photo sizes; prints JSON.

Both start from a decoded PIL RGB image and end with a uint8 array, as `ImageProcessor.resize` does:
ours is `np.asarray(image)` + `resize_bicubic`, Pillow's is `image.resize(..., BICUBIC)` + `np.asarray`.
The two run alternately (so a busy machine slows both alike) and the medians are reported; our first
call, which builds the cached weight matrices, is reported apart. The sources are smooth gradients with
noise, like a photo. CPU time (all threads) is reported too: on a busy machine it is steadier than wall
time. Usage: python benchmarks/resample_speed.py [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import PIL
import torch
from PIL import Image

from cogvlm.image_processors.resample import axis_plan, resize_bicubic

SOURCES = ((1920, 1080), (800, 600), (1080, 1920))
TARGETS = (224, 490, 1120)


def photo_like(width: int, height: int) -> Image.Image:
    """A smooth colour gradient with noise."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    channels = [xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)]
    smooth = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))


def seconds(call) -> tuple[float, float]:
    """Wall time and CPU time (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(image: Image.Image, size: int, repeats: int) -> dict:
    """Median milliseconds of ours and Pillow's for one source and target size."""
    axis_plan.cache_clear()
    first, _ = seconds(lambda: resize_bicubic(np.asarray(image), size, size))
    ours, pillow = [], []
    for _ in range(repeats):
        ours.append(seconds(lambda: resize_bicubic(np.asarray(image), size, size)))
        pillow.append(seconds(lambda: np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))))
    ours_ms = statistics.median(wall for wall, _ in ours) * 1e3
    pillow_ms = statistics.median(wall for wall, _ in pillow) * 1e3
    ours_cpu_ms = statistics.median(cpu for _, cpu in ours) * 1e3
    pillow_cpu_ms = statistics.median(cpu for _, cpu in pillow) * 1e3
    return {
        "source": f"{image.width}x{image.height}",
        "target": size,
        "ours_ms": round(ours_ms, 2),
        "pillow_ms": round(pillow_ms, 2),
        "ratio": round(ours_ms / pillow_ms, 2),
        "ours_cpu_ms": round(ours_cpu_ms, 2),
        "pillow_cpu_ms": round(pillow_cpu_ms, 2),
        "cpu_ratio": round(ours_cpu_ms / pillow_cpu_ms, 2),
        "ours_first_call_ms": round(first * 1e3, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [measure(photo_like(*source), size, args.repeats) for source in SOURCES for size in TARGETS]
    print(
        json.dumps(
            {
                "pillow": PIL.__version__,
                "torch_threads": torch.get_num_threads(),
                # OpenMP threads that spin while waiting slow every torch op on an oversubscribed machine.
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "max_ratio": max(row["ratio"] for row in rows),
                "max_cpu_ratio": max(row["cpu_ratio"] for row in rows),
                "cases": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
