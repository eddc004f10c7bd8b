"""The loss / accuracy plot: a real PNG that decodes, with a chart per kind of metric, and that shows
the curve it was given (different losses draw different pictures)."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from cogvlm.train.metrics import METRICS_FILE
from cogvlm.train.plot import CHART_SIZE, PLOT_FILE, nice_ticks, write_training_plot


def _write_metrics(folder, losses, accuracies=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i + 1, "kind": "train", "loss": loss}) for i, loss in enumerate(losses)]
    lines += [
        json.dumps({"step": step, "kind": "valid", "loss": 1.0, "accuracy": acc, "accuracy_ignore_case": acc})
        for step, acc in accuracies
    ]
    (folder / METRICS_FILE).write_text("\n".join(lines) + "\n")
    return folder


def _plot(folder) -> Image.Image:
    path = write_training_plot(folder)
    assert path == folder / PLOT_FILE
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def test_the_plot_decodes_and_has_a_chart_per_metric_kind(tmp_path):
    falling = [7 * math.exp(-i / 20) + 1 for i in range(100)]
    only_loss = _plot(_write_metrics(tmp_path / "a", falling))
    assert only_loss.size == CHART_SIZE
    both = _plot(_write_metrics(tmp_path / "b", falling, [(50, 0.2), (100, 0.6)]))
    assert both.size == (CHART_SIZE[0], 2 * CHART_SIZE[1])
    accuracy_chart = np.asarray(both.crop((0, CHART_SIZE[1], *both.size))).reshape(-1, 3)
    assert len(np.unique(accuracy_chart, axis=0)) > 2  # drawn, not blank


def test_different_loss_curves_draw_different_pictures(tmp_path):
    falling = _plot(_write_metrics(tmp_path / "a", [5 - 0.04 * i for i in range(100)]))
    rising = _plot(_write_metrics(tmp_path / "b", [1 + 0.04 * i for i in range(100)]))
    assert falling.size == rising.size
    differing = int((np.asarray(falling) != np.asarray(rising)).any(axis=2).sum())
    assert differing > 500, differing


def test_no_metrics_no_plot(tmp_path):
    assert write_training_plot(tmp_path) is None
    assert write_training_plot(_write_metrics(tmp_path / "nan", [float("nan")])) is None
    assert not (tmp_path / PLOT_FILE).exists()


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.3, 7.2) == [0, 2, 4, 6, 8]
    assert nice_ticks(1, 200) == [0, 50, 100, 150, 200]
    ticks = nice_ticks(0.25, 0.61)
    assert ticks[0] <= 0.25 and ticks[-1] >= 0.61 and len(ticks) <= 7
