"""Where a CogVLM model finds objects: the figures behind the embedded model card's note on localisation.

    python tools/grounding_diagnostics.py CHECKPOINT DATASET [--questions N] [--images N]
        [--orders natural shuffled column_major]

DATASET is a `cogvlm synth-data` folder (its `tasks.jsonl` holds each grounding question's true box).
Prints one JSON object:

- `boxes`, per image-token order fed to the LLM: how the predicted box centres follow the true ones
  (correlations of predicted x/y with true x/y, null where the predictions do not vary; median centre
  and size errors in pixels). `shuffled`
  permutes each image's patch tokens (one fixed permutation), `column_major` reads the patch grid by
  columns. A model that locates by the tokens' order loses its correlations when they are shuffled, and
  with column-major order its predicted y follows the true x.
- `probe_r2`: how linearly a patch's grid row and column can be read from its features at each stage of
  the image side (the tower's output, the adapter's `linear_proj`, after its norm and GELU, and the
  adapter's output, what the LLM receives): R² of a least-squares fit on 70% of the patches, scored on
  the other 30%.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ORDERS = ("natural", "shuffled", "column_major")
SHUFFLE_SEED = 0
TRAIN_SHARE = 0.7


def token_order(name: str, grid: int) -> torch.Tensor:
    """The patch indices [grid * grid] in the order the LLM will read them."""
    patches = grid * grid
    if name == "natural":
        return torch.arange(patches)
    if name == "shuffled":
        return torch.randperm(patches, generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    if name == "column_major":
        return torch.arange(patches).view(grid, grid).T.reshape(-1)
    raise ValueError(f"unknown token order {name!r}; known: {', '.join(ORDERS)}")


def grid_coordinates(grid: int) -> torch.Tensor:
    """[grid * grid, 2] (row, column) of each patch in row-major order."""
    index = torch.arange(grid * grid)
    return torch.stack((index // grid, index % grid), dim=1).float()


def linear_probe_r2(features: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """R² per target column of a least-squares fit (with intercept) of `targets` [n, k] from `features`
    [n, d], fitted on the first 70% of the rows and scored on the rest."""
    rows = features.shape[0]
    fit = int(rows * TRAIN_SHARE)
    design = torch.cat((features.double(), torch.ones(rows, 1, dtype=torch.float64)), dim=1)
    targets = targets.double()
    weights = torch.linalg.lstsq(design[:fit], targets[:fit]).solution
    residual = targets[fit:] - design[fit:] @ weights
    spread = targets[fit:] - targets[fit:].mean(0)
    return [
        round(float(1 - residual[:, k].square().sum() / spread[:, k].square().sum()), 3) for k in range(2)
    ]


def correlation(first: list[float], second: list[float]) -> float | None:
    """Pearson correlation, or None when either side is constant (a model that always gives one box)."""
    if len(first) < 2 or statistics.pstdev(first) == 0 or statistics.pstdev(second) == 0:
        return None
    return round(statistics.correlation(first, second), 3)


def box_statistics(predicted: list[list[float]], true: list[list[float]], unparsed: int) -> dict:
    """How predicted pixel boxes [x1, y1, x2, y2] follow the true ones."""

    def centres(boxes, axis):
        return [(box[axis] + box[axis + 2]) / 2 for box in boxes]

    def sizes(boxes, axis):
        return [box[axis + 2] - box[axis] for box in boxes]

    px, py, tx, ty = centres(predicted, 0), centres(predicted, 1), centres(true, 0), centres(true, 1)

    def median_error(first, second):
        return round(statistics.median(abs(a - b) for a, b in zip(first, second, strict=True)), 1)

    return {
        "answered": len(predicted),
        "unparsed": unparsed,
        "correlation": {
            "pred_x~true_x": correlation(px, tx),
            "pred_x~true_y": correlation(px, ty),
            "pred_y~true_y": correlation(py, ty),
            "pred_y~true_x": correlation(py, tx),
        },
        "median_centre_error_px": {"x": median_error(px, tx), "y": median_error(py, ty)}
        if predicted
        else None,
        "median_size_error_px": {
            "width": median_error(sizes(predicted, 0), sizes(true, 0)),
            "height": median_error(sizes(predicted, 1), sizes(true, 1)),
        }
        if predicted
        else None,
    }


def _reordered(encode: Callable[[torch.Tensor], torch.Tensor], order: torch.Tensor):
    def encode_in_order(pixel_values: torch.Tensor) -> torch.Tensor:
        return encode(pixel_values)[:, order.to(pixel_values.device)]

    return encode_in_order


def box_figures(session, dataset: Path, questions: int, orders: list[str]) -> dict:
    """`box_statistics` of the first `questions` grounding questions, once per token order."""
    from cogvlm.models import mixin_names
    from cogvlm.text_processors.grounding import parse_boxes, to_pixels
    from cogvlm.train.synthetic_eval import answer_records, read_records, session_answerer

    records = [record for record in read_records(dataset) if record["task"] == "grounding"][:questions]
    if not records:
        raise SystemExit(f"{dataset}: no grounding questions in its tasks.jsonl")
    image_mixin = session.model.mixins[mixin_names.IMAGE]
    image_px = session.model.config.vision.image_px
    grid = math.isqrt(session.model.config.vision.num_patches)
    answer = session_answerer(session)
    figures = {}
    natural_encode = image_mixin.encode_images
    try:
        for name in orders:
            # Scoped to this loaded model: the instance's encoder is swapped, then restored.
            image_mixin.encode_images = _reordered(natural_encode, token_order(name, grid))
            predicted, true, unparsed = [], [], 0
            for record, reply in zip(records, answer_records(answer, dataset, records), strict=True):
                boxes = parse_boxes(reply)
                if not boxes:
                    unparsed += 1
                    continue
                box = to_pixels(boxes[0], image_px, image_px)
                predicted.append([box.x1, box.y1, box.x2, box.y2])
                true.append(list(record["boxes"][0]))
            figures[name] = box_statistics(predicted, true, unparsed)
    finally:
        vars(image_mixin).pop("encode_images", None)  # back to the class's method
    return figures


def probe_figures(session, dataset: Path, images: int) -> dict:
    """`linear_probe_r2` of (row, column) at each stage of the image side, on the first `images` images."""
    from cogvlm.image_processors import ImageProcessor
    from cogvlm.models import mixin_names

    model = session.model
    files = sorted((dataset / "images").glob("*.png"))[:images]
    if len(files) < 2:
        raise SystemExit(f"{dataset}/images: the probe needs at least 2 images, found {len(files)}")
    image_mixin = model.mixins[mixin_names.IMAGE]
    adapter = image_mixin.linear_proj
    processor = ImageProcessor(model.config.vision.image_px)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    with torch.inference_mode():
        pixels = torch.cat([processor(str(path)) for path in files]).to(device, dtype)
        tower = image_mixin.vision_features(pixels)
        if image_mixin.pos_embed is not None:
            tower = tower + image_mixin.pos_embed
        projected = adapter.linear_proj(tower)
        activated = F.gelu(adapter.norm1(projected))
        output = adapter(tower)
    grid = math.isqrt(tower.shape[1])
    targets = grid_coordinates(grid).repeat(len(files), 1)
    stages = {"tower": tower, "linear_proj": projected, "norm_gelu": activated, "adapter_output": output}
    figures = {}
    for name, features in stages.items():
        flat = features.float().reshape(-1, features.shape[-1]).cpu()  # [images * patches, width]
        figures[name] = dict(zip(("row", "column"), linear_probe_r2(flat, targets), strict=True))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint name or folder, as --from_pretrained takes it")
    parser.add_argument("dataset", type=Path, help="a `cogvlm synth-data` folder")
    parser.add_argument("--questions", type=int, default=200, help="grounding questions to ask per order")
    parser.add_argument("--images", type=int, default=150, help="images whose patches the probes read")
    parser.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    args = parser.parse_args(argv)
    if args.questions < 1 or args.images < 2:
        parser.error("--questions must be >= 1 and --images >= 2")
    if not (args.dataset / "tasks.jsonl").is_file():
        parser.error(f"{args.dataset}: not a `cogvlm synth-data` folder (no tasks.jsonl)")

    from cogvlm import api

    session = api.load(args.checkpoint)
    result = {
        "checkpoint": args.checkpoint,
        "dataset": str(args.dataset),
        "boxes": box_figures(session, args.dataset, args.questions, args.orders),
        "probe_r2": probe_figures(session, args.dataset, args.images),
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
