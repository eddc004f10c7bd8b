"""Box parsing and formatting: `[[x1,y1,x2,y2]]`, multi-boxes, points, pixel conversion, phrase labels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cogvlm.text_processors.grounding import (
    Box,
    PixelBox,
    PixelPoint,
    Point,
    find_box_groups,
    format_boxes,
    from_pixels,
    grounded_phrases,
    parse_boxes,
    parse_target,
    phrase_before,
    to_pixels,
)

README_OPERATION = "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
coordinates = st.integers(min_value=0, max_value=999)
boxes = st.builds(Box, coordinates, coordinates, coordinates, coordinates)
# Text that looks like model output, with brackets, digits, separators and section names mixed in.
adversarial_text = st.lists(
    st.sampled_from(
        [
            "[[",
            "]]",
            "[",
            "]",
            ",",
            ";",
            "0",
            "999",
            "1000",
            "12345678901234567890",
            " ",
            "\n",
            "a",
            "the",
            "Plan:",
            "Grounded Operation:",
            "->",
            "TYPE:",
            "at the box",
            "é",
            "\x00",
            "-1",
            ".",
            "?",
        ]
    )
    | st.text(max_size=8),
    max_size=60,
).map("".join)


def test_the_readme_box_is_parsed():
    assert parse_boxes(README_OPERATION) == [Box(212, 498, 787, 564)]


def test_a_multi_box_group_gives_every_box_in_order():
    (group,) = find_box_groups("two cats [[010,020,030,040;500,600,700,800]] here")
    assert group.targets == (Box(10, 20, 30, 40), Box(500, 600, 700, 800))
    assert "two cats [[010,020,030,040;500,600,700,800]] here"[group.start : group.end].startswith("[[010")


def test_points_and_spaces_are_accepted():
    assert parse_target("780,862") == Point(780, 862)
    assert parse_target(" 0, 2 , 998,905 ") == Box(0, 2, 998, 905)


@pytest.mark.parametrize("entry", ["1,2,3", "a,b,c,d", "", "1,2,3,4,5", "-1,2,3,4", "1.5,2,3,4", ",,,"])
def test_malformed_entries_are_skipped(entry):
    assert parse_target(entry) is None
    assert find_box_groups(f"x [[{entry}]] y") == []


def test_a_malformed_entry_does_not_lose_its_well_formed_neighbours():
    assert parse_boxes("[[1,2,3;004,005,006,007;x]] and [[broken]] then [[8,9,10,11]]") == [
        Box(4, 5, 6, 7),
        Box(8, 9, 10, 11),
    ]


def test_values_above_999_are_clamped():
    assert parse_boxes("[[1000,0,5000,999]]") == [Box(999, 0, 999, 999)]


def test_readme_box_in_pixels_of_a_1120_screenshot():
    assert to_pixels(Box(212, 498, 787, 564), 1120, 1120) == PixelBox(237.44, 557.76, 881.44, 631.68)
    assert to_pixels(Point(500, 250), 640, 480) == PixelPoint(320.0, 120.0)


def test_formatting_writes_three_digits_and_joins_boxes_with_semicolons():
    assert format_boxes(Box(86, 540, 400, 760)) == "[[086,540,400,760]]"
    assert format_boxes([Box(1, 2, 3, 4), Point(5, 6)]) == "[[001,002,003,004;005,006]]"


def test_formatting_refuses_coordinates_outside_0_to_999():
    with pytest.raises(ValueError, match=r"coordinate 1000 of Box\(x1=1000"):
        format_boxes(Box(1000, 0, 0, 0))
    with pytest.raises(ValueError, match="at least one box"):
        format_boxes([])


@given(st.lists(boxes, min_size=1, max_size=4))
def test_format_then_parse_is_identity(targets):
    assert parse_boxes(f"text {format_boxes(targets)} more") == targets


@given(boxes, st.integers(1, 5000), st.integers(1, 5000))
def test_thousandths_to_pixels_and_back_is_exact(box, width, height):
    assert from_pixels(to_pixels(box, width, height), width, height) == box


@given(
    st.floats(0, 1, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
    st.integers(10, 5000),
    st.integers(10, 5000),
)
def test_pixels_to_thousandths_and_back_is_within_one_unit(fx, fy, width, height):
    pixel = PixelPoint(fx * width, fy * height)
    back = to_pixels(from_pixels(pixel, width, height), width, height)
    # One unit of the 0-999 scale is a thousandth of the side (plus float rounding of the products).
    assert abs(back.x - pixel.x) <= width / 1000 * (1 + 1e-9)
    assert abs(back.y - pixel.y) <= height / 1000 * (1 + 1e-9)


def test_from_pixels_refuses_an_empty_image():
    with pytest.raises(ValueError, match="image size must be positive"):
        from_pixels(PixelPoint(1, 1), 0, 10)


def test_phrases_are_the_noun_phrases_before_their_boxes():
    text = (
        "A man [[100,200,300,400]] is holding a red umbrella [[500,100,900,600]] next to "
        "the children in blue T-shirts [[010,700,300,990;400,700,450,990]]."
    )
    phrases = grounded_phrases(text)
    assert [p.phrase for p in phrases] == ["A man", "a red umbrella", "the children in blue T-shirts"]
    assert phrases[2].targets == (Box(10, 700, 300, 990), Box(400, 700, 450, 990))


def test_a_repeated_phrase_collects_all_its_boxes():
    phrases = grounded_phrases("a cat [[1,2,3,4]], a dog [[5,6,7,8]] and A cat [[9,9,9,9]]")
    assert [(p.phrase, len(p.targets)) for p in phrases] == [("a cat", 2), ("a dog", 1)]


def test_a_phrase_without_determiner_starts_after_its_linking_word():
    text = "point out children in blue T-shirts [[1,2,3,4]]"
    assert phrase_before(text, 0, text.index("[[")) == "blue T-shirts"


@given(adversarial_text)
def test_parsers_never_raise_on_arbitrary_text(text):
    for group in find_box_groups(text):
        assert 0 <= group.start < group.end <= len(text) and group.targets
    for box in parse_boxes(text):
        assert all(0 <= value <= 999 for value in (box.x1, box.y1, box.x2, box.y2))
    for phrase in grounded_phrases(text):
        assert isinstance(phrase.phrase, str) and phrase.targets


@given(st.text(max_size=300))
def test_parsers_never_raise_on_random_unicode(text):
    assert all(isinstance(box, Box) for box in parse_boxes(text))
    assert all(phrase.targets for phrase in grounded_phrases(text))
