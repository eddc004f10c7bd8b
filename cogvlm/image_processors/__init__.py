"""Image loading and pixel preprocessing for CogVLM (EVA input) and CogAgent (EVA + cross-attention input)."""

from cogvlm.image_processors.loading import (
    DEFAULT_MAX_PIXELS,
    ImageNotFoundError,
    ImageSource,
    load_image,
    to_rgb,
)
from cogvlm.image_processors.processor import (
    CLIP_MEAN,
    CLIP_STD,
    DualImageProcessor,
    DualPixelValues,
    ImageProcessor,
)
from cogvlm.image_processors.resample import resize_bicubic

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "DualImageProcessor",
    "DualPixelValues",
    "ImageNotFoundError",
    "ImageProcessor",
    "ImageSource",
    "load_image",
    "resize_bicubic",
    "to_rgb",
]
