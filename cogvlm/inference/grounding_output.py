"""Boxes of a grounding reply (`[[x1,y1,x2,y2;...]]`, thousandths of the image) drawn onto a copy of it."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import ImageDraw

from cogvlm.checkpoints.atomic import atomic_file
from cogvlm.image_processors import ImageSource, load_image

_BOX_GROUP = re.compile(r"\[\[(\d+,\d+,\d+,\d+(?:;\d+,\d+,\d+,\d+)*)\]\]")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")


def find_boxes(response: str) -> list[tuple[float, float, float, float]]:
    """Every box in `response` as fractions (x1, y1, x2, y2) of the image's width and height."""
    boxes = []
    for group in _BOX_GROUP.findall(response):
        for box in group.split(";"):
            x1, y1, x2, y2 = (int(value) / 1000 for value in box.split(","))
            boxes.append((x1, y1, x2, y2))
    return boxes


def draw_grounding(image: ImageSource, response: str, output_dir: str | Path | None = None) -> Path | None:
    """Draw the reply's boxes onto a copy of `image` and save it as PNG; None when there is no box.

    The file gets a fresh name in `output_dir` (default: the system's temporary directory).
    """
    boxes = find_boxes(response)
    if not boxes:
        return None
    picture = load_image(image).copy()
    draw = ImageDraw.Draw(picture)
    width, height = picture.size
    line = max(2, round(min(width, height) / 200))
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        corners = sorted((x1 * width, x2 * width)), sorted((y1 * height, y2 * height))
        rectangle = (corners[0][0], corners[1][0], corners[0][1], corners[1][1])
        draw.rectangle(rectangle, outline=COLORS[index % len(COLORS)], width=line)
    directory = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="cogvlm-grounding-", suffix=".png", dir=directory)
    os.close(descriptor)  # the name is reserved; the atomic write below replaces the empty file
    with atomic_file(Path(name)) as handle:
        picture.save(handle, format="PNG")
    return Path(name)
