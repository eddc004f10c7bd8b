"""Tests of cogvlm.image_processors.resample.

The reference arrays (data/resample_reference.npz) were made by tools/make_resample_fixtures.py under
Pillow 13.0.0, the reference of the golden vectors. These tests run under whichever Pillow is installed
(Pillow 12.3 with the dev extras, whose own bicubic resize differs from 13.0.0's), so passing them shows
that our pixels do not depend on the installed Pillow.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import cogvlm.image_processors.resample as resample
from cogvlm.image_processors.loading import load_image
from cogvlm.image_processors.resample import (
    axis_plan,
    bicubic_weights,
    resample_columns,
    resample_rows,
    resize_bicubic,
)
from tests.image_processors.resample_cases import (
    CASES,
    GRID_INPUTS,
    GRID_OUTPUTS,
    REFERENCE_PILLOW,
    ResampleCase,
    cases_description,
    grid_row,
    load_fixture,
    source_image,
    source_values,
)

GRID_PAIRS = [(n_in, n_out) for n_in in GRID_INPUTS for n_out in GRID_OUTPUTS]


def grid_expected(n_in: int, n_out: int) -> np.ndarray:
    """Pillow 13.0.0's resize of `grid_row(n_in)` to `n_out` pixels: uint8 [n_out]."""
    offset = GRID_INPUTS.index(n_in) * sum(GRID_OUTPUTS) + sum(GRID_OUTPUTS[: GRID_OUTPUTS.index(n_out)])
    return load_fixture()["grid"][offset : offset + n_out]


def case_input(case: ResampleCase) -> bytes | Image.Image:
    """What the case feeds to `load_image`: its stored encoded bytes, or its generated image."""
    if case.encoding:
        return load_fixture()[f"encoded__{case.name}"].tobytes()
    return source_image(case)


def test_fixture_was_made_by_pillow_13_from_the_current_case_list():
    assert str(load_fixture()["pillow_version"]) == REFERENCE_PILLOW
    assert str(load_fixture()["cases"]) == cases_description(), (
        "cases changed: rerun tools/make_resample_fixtures.py"
    )
    assert load_fixture()["grid"].size == len(GRID_INPUTS) * sum(GRID_OUTPUTS)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_image_matches_pillow_13(case):
    """Loaded and resized here (under the installed Pillow), equal to Pillow 13.0.0's pixels."""
    resized = resize_bicubic(np.asarray(load_image(case_input(case))), *case.target)
    assert resized.shape == (case.target[1], case.target[0], 3) and resized.dtype == np.uint8
    if f"pixels__{case.name}" in load_fixture():
        np.testing.assert_array_equal(resized, load_fixture()[f"pixels__{case.name}"])
    sums = resized.reshape(-1, 3).sum(axis=0, dtype=np.int64)
    digest = np.frombuffer(hashlib.sha256(resized.tobytes()).digest(), dtype=np.uint8)
    assert np.array_equal(digest, load_fixture()[f"digest__{case.name}"]), (
        f"pixels differ from Pillow 13.0.0's: channel sums {sums.tolist()}, "
        f"expected {load_fixture()[f'sums__{case.name}'].tolist()}"
    )


def test_one_axis_grid_matches_pillow_13_along_rows_and_columns():
    """Every grid length pair, as a one-row image (horizontal pass) and a one-column image (vertical pass)."""
    wrong = []
    for n_in, n_out in GRID_PAIRS:
        row = grid_row(n_in)
        along_row = resize_bicubic(row[None, :, None], n_out, 1)[0, :, 0]
        along_column = resize_bicubic(row[:, None, None], 1, n_out)[:, 0, 0]
        for direction, result in (("row", along_row), ("column", along_column)):
            if not np.array_equal(result, grid_expected(n_in, n_out)):
                wrong.append(f"{n_in}->{n_out} along a {direction}")
    assert not wrong, f"{len(wrong)} of {2 * len(GRID_PAIRS)} differ from Pillow 13.0.0: {wrong[:10]}"


@settings(max_examples=150, deadline=None)
@given(
    pair=st.sampled_from(GRID_PAIRS),
    other_in=st.integers(1, 40),
    other_out=st.integers(1, 40),
    vertical=st.booleans(),
    channels=st.sampled_from([1, 3, 4]),
)
def test_image_of_repeated_grid_rows_gives_repeated_pillow_13_rows(
    pair, other_in, other_out, vertical, channels
):
    """A 2-D resize (both passes, either order) of an image constant along one axis: each line of the
    result is the grid's Pillow 13.0.0 result, as Pillow's weights sum to one within far less than a level."""
    n_in, n_out = pair
    line = np.repeat(grid_row(n_in)[:, None], channels, axis=1)  # [n_in, C], grey
    if vertical:  # columns equal to the grid row: the vertical pass resamples it
        image = np.broadcast_to(line[:, None, :], (n_in, other_in, channels))
        resized = resize_bicubic(np.ascontiguousarray(image), other_out, n_out)  # [n_out, other_out, C]
        lines = resized.transpose(1, 0, 2)
    else:  # rows equal to the grid row: the horizontal pass resamples it
        image = np.broadcast_to(line[None, :, :], (other_in, n_in, channels))
        lines = resize_bicubic(np.ascontiguousarray(image), n_out, other_out)  # [other_out, n_out, C]
    expected = np.broadcast_to(grid_expected(n_in, n_out)[None, :, None], lines.shape)
    np.testing.assert_array_equal(lines, expected)


@settings(max_examples=60, deadline=None)
@given(
    n_in=st.integers(1, 400),
    n_out=st.integers(1, 400),
    length=st.integers(1, 30),
    channels=st.sampled_from([1, 3]),
    content=st.sampled_from(["noise", "photo", "edges"]),
    seed=st.integers(0, 2**32),
)
def test_float_path_equals_the_exact_integer_path(n_in, n_out, length, channels, content, seed):
    """With a margin of one half every output is recomputed in int64, Pillow's own arithmetic."""
    pixels = source_values(content, seed, n_in, length, channels).reshape(length, n_in * channels)
    plan = axis_plan(n_in, n_out, channels)
    exact = dataclasses.replace(plan, margin=0.5)
    np.testing.assert_array_equal(resample_columns(pixels, plan), resample_columns(pixels, exact))
    columns = source_values(content, seed, length, n_in, channels).reshape(n_in, length * channels)
    row_plan = axis_plan(n_in, n_out)
    exact_rows = dataclasses.replace(row_plan, margin=0.5)
    np.testing.assert_array_equal(resample_rows(columns, row_plan), resample_rows(columns, exact_rows))


@settings(max_examples=40, deadline=None)
@given(
    source=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    target=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    value=st.integers(0, 255),
)
def test_uniform_image_stays_uniform(source, target, value):
    image = np.full((source[1], source[0], 3), value, dtype=np.uint8)
    resized = resize_bicubic(image, *target)
    assert resized.shape == (target[1], target[0], 3)
    assert (resized == value).all()


@pytest.mark.parametrize(("n_in", "n_out"), [(1, 1), (1, 9), (7, 3), (1920, 224), (1080, 1120), (8192, 1)])
def test_fixed_point_weights_of_each_output_sum_to_one(n_in, n_out):
    starts, weights = bicubic_weights(n_in, n_out)
    assert starts.shape == (n_out,) and weights.shape[0] == n_out
    # Each weight is rounded to the nearest 2**-22, so a sum is off by at most half a unit per tap.
    assert (np.abs(weights.sum(axis=1) - 2**22) <= weights.shape[1] / 2).all()
    positions = starts[:, None] + np.arange(weights.shape[1])[None, :]
    assert (starts >= 0).all() and (positions[weights != 0] < n_in).all()


def test_same_size_gives_an_equal_writable_copy():
    pixels = source_values("noise", 5, 13, 7, 3)
    pixels.setflags(write=False)
    result = resize_bicubic(pixels, 13, 7)
    assert np.array_equal(result, pixels) and result.flags.writeable and not np.shares_memory(result, pixels)


def test_strided_input_gives_the_same_pixels_as_a_contiguous_copy():
    pixels = source_values("photo", 6, 90, 70, 3)
    view = pixels[::-1, 5:80]  # flipped and cropped: a non-contiguous view
    np.testing.assert_array_equal(resize_bicubic(view, 33, 41), resize_bicubic(view.copy(), 33, 41))


def test_many_strips_give_the_same_pixels_as_one(monkeypatch):
    pixels = source_values("noise", 7, 300, 200, 3)
    whole = resize_bicubic(pixels, 117, 251)
    for name in ("_STRIP_VALUES", "_THREADED_STRIP_VALUES"):
        monkeypatch.setattr(resample, name, 3 * 300)  # a strip of one or two lines
    np.testing.assert_array_equal(resize_bicubic(pixels, 117, 251), whole)


def test_torch_thread_count_does_not_change_the_pixels():
    """One thread takes small strips, several take large ones (and sum in another order)."""
    pixels = source_values("photo", 8, 640, 480, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = resize_bicubic(pixels, 490, 490)
        torch.set_num_threads(2)
        np.testing.assert_array_equal(resize_bicubic(pixels, 490, 490), single)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("pixels", "width", "height", "message"),
    [
        (
            np.zeros((4, 4, 3), dtype=np.float32),
            2,
            2,
            r"needs uint8 pixels .* dtype float32 and shape \(4, 4, 3\)",
        ),
        (np.zeros((4, 4), dtype=np.uint8), 2, 2, r"needs uint8 pixels .* shape \(4, 4\)"),
        ([[0]], 2, 2, r"got list"),
        (np.zeros((0, 4, 3), dtype=np.uint8), 2, 2, r"the image is empty \(shape \(0, 4, 3\)\)"),
        (np.zeros((4, 4, 3), dtype=np.uint8), 0, 2, r"width must be a positive int, got 0"),
        (np.zeros((4, 4, 3), dtype=np.uint8), 2, True, r"height must be a positive int, got True"),
        (np.zeros((4, 4, 3), dtype=np.uint8), 2.0, 2, r"width must be a positive int, got 2.0"),
    ],
)
def test_bad_arguments_are_refused_with_the_culprit_named(pixels, width, height, message):
    with pytest.raises(ValueError, match=message):
        resize_bicubic(pixels, width, height)


def test_resampler_never_calls_pillow():
    tree = ast.parse(Path(resample.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.split(".")[0] == "PIL" for name in imported)


@pytest.mark.skipif(
    int(PIL.__version__.split(".")[0]) >= 13, reason="Pillow 13 runs the passes in this order"
)
def test_installed_pillow_disagrees_with_the_reference_where_its_pass_order_differs():
    """Why this module exists: Pillow before 13 runs the horizontal pass first even when the height shrinks
    much more, so its pixels differ from the reference for such sizes (ours match, see above)."""
    case = next(case for case in CASES if case.name.startswith("rgb-64x88-to-42x42"))
    assert resample.is_vertical_first(*case.source, *case.target)
    theirs = np.asarray(load_image(case_input(case)).resize(case.target, Image.Resampling.BICUBIC))
    digest = np.frombuffer(hashlib.sha256(theirs.tobytes()).digest(), dtype=np.uint8)
    assert not np.array_equal(digest, load_fixture()[f"digest__{case.name}"])
