"""Pixel preprocessing of the official `BlipImageEvalProcessor`: bicubic resize, scale, CLIP normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cogvlm.image_processors.loading import DEFAULT_MAX_PIXELS, ImageSource, load_image
from cogvlm.image_processors.resample import resize_bicubic

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessor:
    """Resize to `image_px` x `image_px` (aspect ratio not kept) and normalise; gives [1, 3, S, S] float32."""

    image_px: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.image_px, bool) or not isinstance(self.image_px, int) or self.image_px < 1:
            raise ValueError(f"ImageProcessor.image_px must be a positive int, got {self.image_px!r}")
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ValueError(f"ImageProcessor.{field} needs 3 values (R, G, B), got {values!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ImageProcessor.std values must be positive, got {self.std!r}")

    def resize(self, image: ImageSource) -> np.ndarray:
        """The resized RGB image, uint8 [S, S, 3]: Pillow 13.0.0's bicubic, whichever Pillow is installed."""
        rgb = load_image(image, self.max_pixels)
        return resize_bicubic(np.asarray(rgb), self.image_px, self.image_px)  # a new, writable array

    def normalize(self, resized: np.ndarray) -> torch.Tensor:
        """[1, 3, S, S] from uint8 [S, S, 3]: `(x / 255 - mean) / std` in float32, as torchvision does."""
        pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float() / 255  # [3, S, S]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels - mean) / std).unsqueeze(0)  # [1, 3, S, S]

    def __call__(self, image: ImageSource) -> torch.Tensor:
        """Pixel values [1, 3, S, S] for a PIL image (any mode), a path or encoded bytes."""
        return self.normalize(self.resize(image))


@dataclass(frozen=True)
class DualPixelValues:
    """CogAgent's two views of one image: the low-resolution EVA input and the high-resolution cross input."""

    pixel_values: torch.Tensor  # [1, 3, S, S]
    cross_pixel_values: torch.Tensor  # [1, 3, S_cross, S_cross]


@dataclass(frozen=True)
class DualImageProcessor:
    """CogAgent preprocessing: the same RGB image at `image_px` and at `cross_image_px`."""

    image_px: int
    cross_image_px: int
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for field in ("image_px", "cross_image_px"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DualImageProcessor.{field} must be a positive int, got {value!r}")

    @property
    def low(self) -> ImageProcessor:
        """The processor of the low-resolution view."""
        return ImageProcessor(self.image_px, max_pixels=self.max_pixels)

    @property
    def cross(self) -> ImageProcessor:
        """The processor of the high-resolution (cross-attention) view."""
        return ImageProcessor(self.cross_image_px, max_pixels=self.max_pixels)

    def __call__(self, image: ImageSource) -> DualPixelValues:
        """Both views of one image, decoded once."""
        rgb = load_image(image, self.max_pixels)
        return DualPixelValues(self.low(rgb), self.cross(rgb))
