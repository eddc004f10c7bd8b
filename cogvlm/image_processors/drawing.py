"""Draw grounded boxes, points and their phrase labels onto the original image, and save it as PNG.

Boxes come in thousandths of width and height and are drawn at the image's own resolution. Each phrase
gets its own colour (evenly spaced hues); its label sits on a translucent grey band inside the bottom-left
corner of the box, or below the box when the box is too small to hold it.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cogvlm.image_processors.loading import DEFAULT_MAX_PIXELS, ImageSource, load_image
from cogvlm.text_processors.agent import parse_agent_reply
from cogvlm.text_processors.grounding import (
    GroundedPhrase,
    PixelBox,
    PixelPoint,
    grounded_phrases,
    to_pixels,
)
from cogvlm.utils.atomic import atomic_file

LABEL_BACKGROUND = (128, 128, 128, 160)
LABEL_TEXT = (255, 255, 255, 255)


@dataclass(frozen=True)
class DrawingStyle:
    """Line width, point radius and label font size in pixels (0: scaled to the image)."""

    line_width: int = 0
    point_radius: int = 0
    font_size: int = 0

    def resolved(self, width: int, height: int) -> DrawingStyle:
        """The style with every 0 replaced by a size proportional to the image."""
        short_side = min(width, height)
        return DrawingStyle(
            line_width=self.line_width or max(2, round(short_side / 200)),
            point_radius=self.point_radius or max(3, round(short_side / 120)),
            font_size=self.font_size or max(10, round(short_side / 40)),
        )


def phrase_colors(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated colours with evenly spaced hues."""
    colors = []
    for index in range(count):
        red, green, blue = colorsys.hls_to_rgb(index / max(count, 1), 0.5, 0.85)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def _clamped_box(box: PixelBox, width: int, height: int) -> tuple[int, int, int, int]:
    x1, x2 = sorted((round(box.x1), round(box.x2)))
    y1, y2 = sorted((round(box.y1), round(box.y2)))
    return max(0, x1), max(0, y1), min(width - 1, x2), min(height - 1, y2)


def _draw_label(draw: ImageDraw.ImageDraw, box, text: str, font, image_size: tuple[int, int]) -> None:
    x1, y1, x2, y2 = box
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_width, text_height, pad = right - left, bottom - top, 2
    band_width, band_height = text_width + 2 * pad, text_height + 2 * pad
    fits_inside = x2 - x1 >= band_width and y2 - y1 >= 2 * band_height
    band_top = y2 - band_height if fits_inside else y2 + 1
    if band_top + band_height > image_size[1]:
        band_top = max(0, y1 - band_height)  # no room below the box: put the label above it
    band_left = max(0, min(x1, image_size[0] - band_width))
    draw.rectangle(
        (band_left, band_top, band_left + band_width, band_top + band_height), fill=LABEL_BACKGROUND
    )
    draw.text((band_left + pad - left, band_top + pad - top), text, font=font, fill=LABEL_TEXT)


def draw_phrases(
    image: ImageSource, phrases: Sequence[GroundedPhrase], style: DrawingStyle = DrawingStyle()
) -> Image.Image:
    """The RGB image with every phrase's boxes and points drawn and labelled."""
    base = load_image(image, DEFAULT_MAX_PIXELS).convert("RGBA")
    width, height = base.size
    style = style.resolved(width, height)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = _font(style.font_size)
    for phrase, color in zip(phrases, phrase_colors(len(phrases)), strict=True):
        for target in phrase.targets:
            shape = to_pixels(target, width, height)
            if isinstance(shape, PixelPoint):
                x, y, r = round(shape.x), round(shape.y), style.point_radius
                draw.ellipse((x - r, y - r, x + r, y + r), fill=color + (255,))
                box = (x - r, y - r, x + r, y + r)
            else:
                box = _clamped_box(shape, width, height)
                draw.rectangle(box, outline=color + (255,), width=style.line_width)
            if phrase.phrase:
                _draw_label(draw, box, phrase.phrase, font, base.size)
    return Image.alpha_composite(base, overlay).convert("RGB")


def draw_response(image: ImageSource, response: str, style: DrawingStyle = DrawingStyle()) -> Image.Image:
    """Draw what a model reply grounds: an agent's operation target, else each phrase's boxes."""
    operation = parse_agent_reply(response).grounded_phrases()
    return draw_phrases(image, operation or grounded_phrases(response), style)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG atomically (a failed write leaves any previous file intact)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = Path(path)
    with atomic_file(path) as handle:
        handle.write(buffer.getvalue())
    return path
