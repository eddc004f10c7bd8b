"""A copy of the image with the boxes of a grounding reply drawn on it, saved as PNG for the CLI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cogvlm.image_processors import ImageSource
from cogvlm.image_processors.drawing import draw_response, save_png
from cogvlm.text_processors.grounding import find_box_groups


def draw_grounding(image: ImageSource, response: str, output_dir: str | Path | None = None) -> Path | None:
    """Draw the reply's boxes (with their phrases) onto a copy of `image`; None when there is no box.

    The file gets a fresh name in `output_dir` (default: the system's temporary directory).
    """
    if not find_box_groups(response):
        return None
    drawn = draw_response(image, response)
    directory = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="cogvlm-grounding-", suffix=".png", dir=directory)
    os.close(descriptor)  # the name is reserved; the atomic write replaces the empty file
    return save_png(drawn, name)
