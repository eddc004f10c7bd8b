"""Heap a fine-tuning data set takes once tokenized, per sample; prints JSON.

Builds `cogvlm.train.data.VisionTextDataset` over N generated multi-turn records (the embedded model's
tokenizer and config, one image file shared by all) in a fresh process per layout, and reads the process's
anonymous resident memory before and after. `--layouts padded` keeps what the data set held before it was
made compact (each sample's padded tensors, sliced), for comparison. Usage:
  python benchmarks/dataset_memory.py --samples 50000 --max_length 224
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import rss_anon_bytes  # beside this script


def write_records(folder: Path, count: int, seed: int) -> Path:
    """`count` JSONL records about one image: questions with 0-2 earlier turns, short answers."""
    from PIL import Image

    Image.new("RGB", (112, 112), "white").save(folder / "image.png")
    words = "red green blue circle square triangle left right what where how many shapes text".split()
    generator = random.Random(seed)

    def sentence(length: int) -> str:
        return " ".join(generator.choice(words) for _ in range(length))

    path = folder / "data.jsonl"
    with path.open("w") as out:
        for _ in range(count):
            history = [[sentence(5), sentence(3)] for _ in range(generator.randint(0, 2))]
            record = {"image": "image.png", "question": sentence(6), "answer": sentence(4)}
            out.write(json.dumps({**record, "history": history}) + "\n")
    return path


def measure(data: Path, layout: str, max_length: int) -> dict:
    """Tokenize `data` into a data set in this process; heap growth and time."""
    import torch

    from cogvlm.checkpoints.loading import read_checkpoint_info
    from cogvlm.embedded import embedded_checkpoint
    from cogvlm.text_processors.tokenizer import LlamaTokenizer
    from cogvlm.text_processors.training import build_training_inputs
    from cogvlm.train.data import VisionTextDataset, read_samples, sample_prompt

    config = read_checkpoint_info(embedded_checkpoint()).config
    tokenizer = LlamaTokenizer.from_file(str(embedded_checkpoint() / "tokenizer.model"))
    samples = read_samples(data)
    before, started = rss_anon_bytes(), time.perf_counter()
    if layout == "compact":
        kept = VisionTextDataset(samples, tokenizer, config, "chat_old", max_length).items
    else:  # the earlier layout: padded inputs per sample, sliced to their length (views keep the storage)
        kept = []
        for sample in samples:
            inputs = build_training_inputs(
                tokenizer,
                sample.answer,
                sample_prompt(sample, "chat_old"),
                version="chat_old",
                image_length=config.image_length,
                max_target_length=max_length,
            )
            length = int((inputs.labels[0] != -100).nonzero().max()) + 1
            names = ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask")
            kept.append([getattr(inputs, name)[0, :length] for name in names])
    seconds = time.perf_counter() - started
    growth = rss_anon_bytes() - before
    torch.set_num_threads(1)
    return {
        "layout": layout,
        "samples": len(kept),
        "max_length": max_length,
        "heap_growth_bytes": growth,
        "bytes_per_sample": round(growth / max(1, len(kept))),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--max_length", type=int, default=224)
    parser.add_argument("--layouts", nargs="+", default=["compact", "padded"], choices=["compact", "padded"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.layouts[0], args.max_length)))
        return
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        data = write_records(Path(folder), args.samples, args.seed)
        for layout in args.layouts:
            command = [sys.executable, __file__, "--child", str(data), "--layouts", layout]
            command += ["--max_length", str(args.max_length)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main()
