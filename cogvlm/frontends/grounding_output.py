"""Copies of the image with the boxes of grounding replies drawn on them, saved as PNG for the CLI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cogvlm.image_processors import ImageSource
from cogvlm.image_processors.drawing import draw_response, save_png
from cogvlm.text_processors.grounding import find_box_groups

SESSION_FILE_NOTE = "(one file per session, rewritten at each answer with boxes; --grounding_dir keeps all)"


def _fresh_png(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="cogvlm-grounding-", suffix=".png", dir=directory)
    os.close(descriptor)  # the name is reserved; the atomic write replaces the empty file
    return Path(name)


def draw_grounding(image: ImageSource, response: str, output_dir: str | Path | None = None) -> Path | None:
    """Draw the reply's boxes (with their phrases) onto a copy of `image`; None when there is no box.

    The file gets a fresh name in `output_dir` (default: the system's temporary directory).
    """
    if not find_box_groups(response):
        return None
    directory = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir())
    return save_png(draw_response(image, response), _fresh_png(directory))


class GroundingOutput:
    """Where one chat session puts its drawn images.

    With a folder: one new file per answer with boxes, kept. Without: one file per session in the temporary
    directory, rewritten by each answer with boxes, so a long session leaves one file, not hundreds.
    """

    def __init__(self, output_dir: str | Path | None = None):
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.session_file: Path | None = None

    def write(self, image: ImageSource, response: str) -> Path | None:
        """Draw the reply's boxes on a copy of `image` and return its path; None when there is no box."""
        if not find_box_groups(response):
            return None
        if self.output_dir is not None:
            path = _fresh_png(self.output_dir)
        else:
            self.session_file = self.session_file or _fresh_png(Path(tempfile.gettempdir()))
            path = self.session_file
        return save_png(draw_response(image, response), path)
