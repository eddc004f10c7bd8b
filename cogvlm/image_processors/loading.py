"""Safe image loading: any source and any PIL mode to an RGB image, with errors that name the file.

Mode conversion follows the official `image.convert('RGB')`: alpha is dropped, not composited; palette,
CMYK, YCbCr, LAB, HSV and 1-bit images use PIL's conversion. Two deliberate differences, for modes where
PIL would clip values above 255 to white:
* 16-bit integer modes (`I;16*`) are scaled to 8 bits by `round(v * 255 / 65535)`; mode `I` (32-bit) is
  scaled the same way when all values are in [0, 65535], else its value range is stretched to [0, 255];
* float mode `F` is scaled by 255 when all values are in [0, 1], else its value range is stretched to
  [0, 255]; NaN becomes 0.
Opened animated images give their first frame; a PIL image passed in gives its current frame.
EXIF orientation is not applied (the official code does not).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cogvlm.errors import ImageError

# 8192 x 8192: far above any model resolution (CogAgent's largest is 1120) and below PIL's own
# decompression-bomb warning threshold (`Image.MAX_IMAGE_PIXELS`, about 89.5M pixels).
DEFAULT_MAX_PIXELS = 8192 * 8192

ImageSource = str | Path | bytes | Image.Image

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path does not exist."""


def _describe(source: ImageSource) -> str:
    """How error messages name a source."""
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return str(source)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map the finite value range of `values` linearly onto [0, 255] (NaN and constant images give 0)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape)
    low, high = float(finite.min()), float(finite.max())
    clean = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    return (clean - low) * (255.0 / (high - low)) if high > low else np.zeros(values.shape)


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    """Float values on [0, 255]: times 255 when all are in [0, 1] (NaN counts as 0), else stretched."""
    in_unit = np.isnan(values) | ((values >= 0.0) & (values <= 1.0))
    return np.nan_to_num(values, nan=0.0) * 255.0 if in_unit.all() else _stretch(values)


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    """An `L` image from a 16-bit, 32-bit integer or float image, scaled as the module docstring says."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scaled = _float_to_8bit(values)
    elif image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        scaled = _stretch(values)
    else:
        scaled = values * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode L


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image from `image` in any PIL mode (see the module docstring for high-bit-depth modes)."""
    if image.mode in _WIDE_MODES:
        return _wide_to_8bit(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA gives the same colours without PIL's transparency warning.
        return image.convert("RGBA").convert("RGB")
    if image.mode == "La":
        return image.convert("LA").convert("RGB")
    return image.convert("RGB")


def _check_size(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse images whose header claims more than `max_pixels` pixels, before anything is decoded."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image {name}: {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}; "
            "refusing to decode it (possible decompression bomb)"
        )


def _decode(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Check the size, decode the current frame fully (so truncation is detected) and convert to RGB."""
    _check_size(image, name, max_pixels)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image {name}: cannot decode it, the file is corrupt or truncated ({exc})") from exc


def _open(data: io.BytesIO | Path, name: str) -> Image.Image:
    """`Image.open`, with PIL's failures turned into `ImageError`."""
    try:
        return Image.open(data)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {name}: {exc} (possible decompression bomb)") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"image {name}: not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image {name}: cannot read the image header ({exc})") from exc


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A decoded RGB image from a path, encoded bytes, or a PIL image (which is left unchanged).

    PIL refuses images above twice `Image.MAX_IMAGE_PIXELS` on its own (reported the same way), so a
    `max_pixels` above that has no effect; the global is never changed here.

    Raises:
        ImageNotFoundError: `source` is a path that does not exist.
        ImageError: not an image, corrupt or truncated, or more than `max_pixels` pixels.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        return _decode(source, name, max_pixels)
    if isinstance(source, bytes):
        with _open(io.BytesIO(source), name) as image:
            return _decode(image, name, max_pixels)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ImageError(f"image {name}: URLs are not fetched here; download the file first")
    path = Path(source).expanduser()
    if not path.is_file():
        raise ImageNotFoundError(f"image file not found (or not a file): {path}")
    with _open(path, name) as image:
        return _decode(image, name, max_pixels)
