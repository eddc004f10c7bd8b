"""What the demos show besides the text: boxes drawn on the image and the parsed agent action."""

from __future__ import annotations

import re

from PIL import Image, ImageDraw

_BOX = re.compile(r"\[\[(\d{3}),(\d{3}),(\d{3}),(\d{3})\]\]")
_COLORS = ("red", "lime", "blue", "yellow", "magenta", "orange")


def draw_grounding(image: Image.Image, response: str) -> Image.Image | None:
    """A copy of `image` with every `[[x1,y1,x2,y2]]` box of `response` drawn; None when there is none."""
    boxes = [tuple(int(v) for v in match.groups()) for match in _BOX.finditer(response)]
    if not boxes:
        return None
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        corners = (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)
        draw.rectangle(corners, outline=_COLORS[index % len(_COLORS)], width=3)
    return canvas


def agent_summary(response: str) -> str:
    """The `Grounded Operation` (or `Next Action`) line of an agent reply, else an empty string."""
    for marker in ("Grounded Operation:", "Next Action:"):
        if marker in response:
            return response.split(marker, 1)[1].strip().splitlines()[0]
    return ""
