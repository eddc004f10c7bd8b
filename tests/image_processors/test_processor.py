"""Tests of cogvlm.image_processors.processor."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cogvlm.image_processors.processor import CLIP_MEAN, DualImageProcessor, ImageProcessor
from tests.golden import golden_image_path, model_dirs
from tests.image_processors.resample_cases import CASES, load_fixture, source_image


def tensor_names(model_dir: Path) -> set[str]:
    """Names in the folder's image_inputs.safetensors."""
    with safe_open(str(model_dir / "image_inputs.safetensors"), "pt") as tensors:
        return set(tensors.keys())


def golden_tensor(model_dir: Path, name: str) -> torch.Tensor:
    """A tensor of the folder's image_inputs.safetensors."""
    with safe_open(str(model_dir / "image_inputs.safetensors"), "pt") as tensors:
        return tensors.get_tensor(name)


IMAGE_DIRS = [d for d in model_dirs() if (d / "image_inputs.safetensors").is_file()]
VIEWS = [(d, p) for d in IMAGE_DIRS for p in ("", "cross_") if f"{p}pixel_values" in tensor_names(d)]
CROSS_DIRS = [d for d in IMAGE_DIRS if "cross_pixel_values" in tensor_names(d)]


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: f"{v[0].name}/{v[1]}pixel_values")
def test_pixel_values_are_bit_exact(view):
    model_dir, prefix = view
    expected = golden_tensor(model_dir, prefix + "pixel_values")
    processor = ImageProcessor(expected.shape[-1])
    resized = processor.resize(golden_image_path())
    assert torch.equal(torch.from_numpy(resized), golden_tensor(model_dir, prefix + "resized_uint8"))
    pixels = processor(golden_image_path())
    assert pixels.dtype == torch.float32 and pixels.shape == expected.shape
    assert (pixels - expected).abs().max().item() == 0.0


@pytest.mark.parametrize("model_dir", CROSS_DIRS, ids=lambda d: d.name)
def test_dual_processor_gives_both_golden_views(model_dir):
    low, cross = golden_tensor(model_dir, "pixel_values"), golden_tensor(model_dir, "cross_pixel_values")
    result = DualImageProcessor(low.shape[-1], cross.shape[-1])(Image.open(golden_image_path()))
    assert torch.equal(result.pixel_values, low)
    assert torch.equal(result.cross_pixel_values, cross)


def test_resize_gives_pillow_13_pixels_where_older_pillow_differs():
    """64x88 -> 42x42: Pillow 13 runs the vertical pass first, Pillow 12 the horizontal one; whichever is
    installed, the processor gives Pillow 13.0.0's pixels (the reference of the golden set)."""
    case = next(case for case in CASES if case.name.startswith("rgb-64x88-to-42x42"))
    resized = ImageProcessor(42).resize(source_image(case))
    expected = load_fixture()[f"digest__{case.name}"].tobytes()
    assert resized.shape == (42, 42, 3) and hashlib.sha256(resized.tobytes()).digest() == expected


def test_non_square_rgba_image_is_stretched_to_a_square():
    image = Image.new("RGBA", (40, 10), (255, 255, 255, 0))
    pixels = ImageProcessor(14)(image)
    assert pixels.shape == (1, 3, 14, 14)
    white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor((0.26862954, 0.26130258, 0.27577711))
    torch.testing.assert_close(pixels[0, :, 7, 7], white)  # exact up to float32 rounding of the two formulas


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"image_px": 0}, "ImageProcessor.image_px must be a positive int, got 0"),
        ({"image_px": 4, "std": (1.0, 0.0, 1.0)}, r"ImageProcessor.std values must be positive"),
        ({"image_px": 4, "mean": (0.5, 0.5)}, r"ImageProcessor.mean needs 3 values"),
    ],
)
def test_invalid_processor_config_is_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        ImageProcessor(**arguments)


def test_invalid_dual_processor_config_names_the_field():
    with pytest.raises(ValueError, match="DualImageProcessor.cross_image_px must be a positive int, got -1"):
        DualImageProcessor(4, -1)
