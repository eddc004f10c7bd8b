"""The loss / accuracy plot a fine-tuning run leaves beside its TensorBoard logs, drawn with Pillow.

`training_curves.png`: training loss per step (and validation loss), then validation accuracy (exact
and ignoring case) when the run was evaluated; each chart has its axes, tick values and a legend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cogvlm.image_processors.drawing import save_png
from cogvlm.train.metrics import METRICS_FILE, read_metrics

PLOT_FILE = "training_curves.png"
CHART_SIZE = (720, 320)
MARGIN = (70, 36, 20, 46)  # left, top, right, bottom
AXIS_COLOR, GRID_COLOR, TEXT_COLOR = (60, 60, 60), (225, 225, 225), (20, 20, 20)


@dataclass(frozen=True)
class Series:
    """A named line: (x, y) points in drawing order, non-finite values left out."""

    name: str
    points: tuple[tuple[float, float], ...]
    color: tuple[int, int, int]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not high > low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def _bounds(series: Sequence[Series]) -> tuple[list[float], list[float]]:
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    return nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))


def draw_chart(title: str, series: Sequence[Series], x_label: str, y_label: str) -> Image.Image:
    """One line chart with axes, grid, tick labels, axis labels and a legend."""
    width, height = CHART_SIZE
    left, top, right, bottom = MARGIN
    image = Image.new("RGB", CHART_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x_ticks, y_ticks = _bounds(series)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    for y in y_ticks:
        _, py = to_pixel(x0, y)
        draw.line([(left, py), (width - right, py)], fill=GRID_COLOR)
        draw.text((left - 6, py), _label(y), fill=TEXT_COLOR, font=font, anchor="rm")
    for x in x_ticks:
        px, _ = to_pixel(x, y0)
        draw.line([(px, height - bottom), (px, height - bottom + 4)], fill=AXIS_COLOR)
        draw.text((px, height - bottom + 6), _label(x), fill=TEXT_COLOR, font=font, anchor="ma")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=AXIS_COLOR)
    for line in series:
        pixels = [to_pixel(x, y) for x, y in line.points]
        if len(pixels) > 1:
            draw.line(pixels, fill=line.color, width=2)
        for px, py in pixels if len(pixels) <= 50 else ():
            draw.ellipse([(px - 2, py - 2), (px + 2, py + 2)], fill=line.color)
    draw.text((width / 2, 8), title, fill=TEXT_COLOR, font=font, anchor="ma")
    draw.text(((left + width - right) / 2, height - 14), x_label, fill=TEXT_COLOR, font=font, anchor="ma")
    draw.text((8, top - 22), y_label, fill=TEXT_COLOR, font=font)
    for index, line in enumerate(series):
        y = top + 4 + 14 * index
        draw.line([(width - right - 150, y + 5), (width - right - 130, y + 5)], fill=line.color, width=2)
        draw.text((width - right - 124, y), line.name, fill=TEXT_COLOR, font=font)
    return image


def _series(records: dict[int, dict], key: str, name: str, color) -> Series | None:
    points = tuple(
        (float(step), float(record[key]))
        for step, record in sorted(records.items())
        if isinstance(record.get(key), int | float) and math.isfinite(record[key])
    )
    return Series(name, points, color) if points else None


def training_plot(train: dict[int, dict], valid: dict[int, dict]) -> Image.Image | None:
    """The run's charts stacked vertically (loss, then accuracy when there was validation), or None
    when there is nothing to draw."""
    losses = [
        _series(train, "loss", "training loss", (31, 119, 180)),
        _series(valid, "loss", "validation loss", (255, 127, 14)),
    ]
    accuracy = [
        _series(valid, "accuracy", "exact match", (44, 160, 44)),
        _series(valid, "accuracy_ignore_case", "ignoring case", (214, 39, 40)),
    ]
    charts = []
    for title, lines, y_label in (("Loss", losses, "loss"), ("Validation accuracy", accuracy, "accuracy")):
        lines = [line for line in lines if line is not None]
        if lines:
            charts.append(draw_chart(title, lines, "step", y_label))
    if not charts:
        return None
    stacked = Image.new("RGB", (CHART_SIZE[0], CHART_SIZE[1] * len(charts)), "white")
    for index, chart in enumerate(charts):
        stacked.paste(chart, (0, CHART_SIZE[1] * index))
    return stacked


def write_training_plot(save_dir: Path) -> Path | None:
    """Draw `save_dir`'s metrics (training, then validation including the final one) into
    `save_dir/training_curves.png` (atomically); None when the run logged nothing."""
    if not (save_dir / METRICS_FILE).is_file():
        return None
    valid = {**read_metrics(save_dir, "valid"), **read_metrics(save_dir, "final")}
    image = training_plot(read_metrics(save_dir, "train"), valid)
    return None if image is None else save_png(image, save_dir / PLOT_FILE)
