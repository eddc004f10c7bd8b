"""Drawing grounded boxes, points and labels onto the original image, saved as PNG."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cogvlm.image_processors.drawing import (
    LABEL_BACKGROUND,
    DrawingStyle,
    draw_phrases,
    draw_response,
    phrase_colors,
    save_png,
)
from cogvlm.text_processors.grounding import Box, GroundedPhrase, Point

GREY = (40, 40, 40)
STYLE = DrawingStyle(line_width=3, point_radius=4, font_size=12)


def _canvas(width: int = 400, height: int = 300) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_a_box_is_outlined_at_its_pixel_position_in_its_phrase_colour():
    image = draw_phrases(_canvas(), [GroundedPhrase("", (Box(100, 200, 500, 600),))], STYLE)
    pixels, color = _pixels(image), phrase_colors(1)[0]
    # [[100,200,500,600]] on 400x300 is x 40..200, y 60..180.
    assert tuple(pixels[60, 120]) == color and tuple(pixels[180, 120]) == color
    assert tuple(pixels[120, 40]) == color and tuple(pixels[120, 200]) == color
    assert (
        tuple(pixels[120, 120]) == GREY and tuple(pixels[30, 120]) == GREY and tuple(pixels[120, 250]) == GREY
    )


def test_a_label_is_drawn_on_a_grey_band_and_changes_only_the_pixels_near_its_box():
    plain = draw_phrases(_canvas(), [GroundedPhrase("", (Box(100, 200, 500, 600),))], STYLE)
    labelled = draw_phrases(_canvas(), [GroundedPhrase("a cat", (Box(100, 200, 500, 600),))], STYLE)
    changed = np.argwhere((_pixels(plain) != _pixels(labelled)).any(axis=-1))
    assert len(changed) > 20
    rows, columns = changed[:, 0], changed[:, 1]
    assert rows.min() >= 60 and rows.max() <= 180 and columns.min() >= 40 and columns.max() <= 200
    band = np.round(
        np.array(GREY) * (1 - LABEL_BACKGROUND[3] / 255) + np.array(LABEL_BACKGROUND[:3]) * 160 / 255
    )
    assert (np.abs(_pixels(labelled)[rows, columns] - band).sum(axis=-1) <= 3).any()


def test_a_point_is_a_filled_dot():
    image = draw_phrases(_canvas(), [GroundedPhrase("", (Point(500, 500),))], STYLE)
    assert tuple(_pixels(image)[150, 200]) == phrase_colors(1)[0]
    assert tuple(_pixels(image)[150, 210]) == GREY


def test_each_phrase_gets_its_own_colour():
    phrases = [GroundedPhrase("", (Box(0, 0, 400, 400),)), GroundedPhrase("", (Box(600, 600, 999, 999),))]
    pixels = _pixels(draw_phrases(_canvas(), phrases, STYLE))
    first, second = phrase_colors(2)
    assert first != second
    assert tuple(pixels[60, 0]) == first and tuple(pixels[180, 300]) == second


def test_the_readme_agent_reply_draws_its_operation_box():
    reply = "Next Action: type.\nGrounded Operation:[combobox] Search -> TYPE: CogVLM at the box "
    reply += "[[212,498,787,564]]"
    pixels = _pixels(draw_response(_canvas(1000, 1000), reply, STYLE))
    assert tuple(pixels[498, 400]) == phrase_colors(1)[0]  # the top edge of the box


def test_a_reply_without_boxes_leaves_the_image_unchanged():
    image = _canvas()
    assert np.array_equal(_pixels(draw_response(image, "No boxes [[here]], just [[1,2,3]]")), _pixels(image))


def test_save_png_writes_a_png_that_reads_back_identically(tmp_path):
    image = draw_response(_canvas(), "a dog [[100,100,500,500]]")
    path = save_png(image, tmp_path / "out" / "grounded.png")
    with Image.open(path) as reloaded:
        assert reloaded.format == "PNG"
        assert np.array_equal(_pixels(reloaded.convert("RGB")), _pixels(image))


def test_a_failed_save_leaves_the_previous_file(tmp_path):
    path = save_png(_canvas(), tmp_path / "grounded.png")
    before = path.read_bytes()
    # The PNG is encoded in memory first, so an image that cannot be encoded never touches the file.
    with pytest.raises(ValueError, match="cannot write empty image"):
        save_png(Image.new("RGB", (0, 0)), path)
    assert path.read_bytes() == before


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[],;0123456789 abcT:->\n")), max_size=80))
def test_drawing_never_raises_on_arbitrary_replies(reply):
    image = draw_response(_canvas(64, 48), reply)
    assert image.size == (64, 48) and image.mode == "RGB"
