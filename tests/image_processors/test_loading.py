"""Tests of cogvlm.image_processors.loading."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogvlm.errors import ImageError
from cogvlm.image_processors.loading import ImageNotFoundError, load_image, to_rgb
from tests.golden import golden_image_path

MODES = [
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
    "I", "I;16", "I;16L", "I;16B", "I;16N", "F",
]  # fmt: skip


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def one_bit_png(width: int, height: int, with_data: bool) -> bytes:
    """A black 1-bit grayscale PNG of any size; `with_data=False` writes a header and an empty IDAT only."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed pixels
    pixels = (
        b"".join(compressor.compress(row) for _ in range(height if with_data else 0)) + compressor.flush()
    )
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """`image` saved in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sixteen_bit(values: np.ndarray, mode: str) -> Image.Image:
    """A 16-bit image in `mode` holding `values` (PIL's own convert to I;16B clips at 255)."""
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
    return Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes())


def sample(mode: str) -> Image.Image:
    """A 7x5 image in `mode` with varying content."""
    gradient = Image.linear_gradient("L").resize((7, 5))
    rgb = Image.merge("RGB", [gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient])
    if mode in ("La", "RGBa"):
        return rgb.convert("RGBA" if mode == "RGBa" else "LA").convert(mode)
    if mode.startswith("I;16"):
        return sixteen_bit(np.arange(35).reshape(5, 7) * 1800, mode)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_to_three_channel_rgb_of_the_same_size(mode):
    image = sample(mode)
    assert image.mode == mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_image(image)
    assert result.mode == "RGB" and result.size == (7, 5)
    assert np.asarray(result).shape == (5, 7, 3)


def test_sixteen_bit_values_are_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535, 257]], dtype=np.uint16)
    for mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        result = np.asarray(to_rgb(sixteen_bit(values, mode)))
        assert result[0, :, 0].tolist() == [0, 128, 255, 1], mode
        assert (result[..., 0] == result[..., 2]).all()
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert np.asarray(to_rgb(as_int32))[0, :, 1].tolist() == [0, 128, 255, 1]


def test_int32_values_outside_sixteen_bits_are_stretched():
    image = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_float_values_in_unit_range_are_multiplied_by_255_and_nan_is_black():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255, 0]
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_dropped_without_compositing_like_the_official_convert():
    image = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(load_image(image))[0, 0].tolist() == [10, 20, 30]


def test_palette_with_transparency_keeps_its_colours():
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = bytes([255, 0] + [255] * 254)
    assert np.asarray(load_image(encoded(image, "PNG")))[1, 1].tolist() == [200, 100, 50]


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    red, green, blue = np.asarray(load_image(path))[0, 0].tolist()
    assert red > 200 and blue < 50 and green < 50


def test_path_bytes_and_pil_sources_give_the_same_pixels():
    path = golden_image_path()
    from_path = np.asarray(load_image(path))
    assert np.array_equal(from_path, np.asarray(load_image(str(path))))
    assert np.array_equal(from_path, np.asarray(load_image(path.read_bytes())))
    assert np.array_equal(from_path, np.asarray(load_image(Image.open(path))))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(
        ImageNotFoundError, match=re.escape(f"image file not found (or not a file): {missing}")
    ):
        load_image(missing)
    with pytest.raises(FileNotFoundError):
        load_image(str(missing))


def test_non_image_bytes_and_files_are_rejected(tmp_path):
    with pytest.raises(ImageError, match=r"image <14 bytes>: not an image file PIL can read"):
        load_image(b"hello, world!!")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ImageError, match=re.escape(f"image {text}: not an image file PIL can read")):
        load_image(text)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_detected_by_a_full_decode(tmp_path, fmt):
    image = Image.open(golden_image_path()).convert("RGB").resize((300, 200))
    data = encoded(image, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ImageError, match=re.escape(f"image {path}: cannot decode it, the file is corrupt or truncated")
    ):
        load_image(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(one_bit_png(12000, 12000, with_data=True))  # 144 M pixels in about 20 kB
    assert path.stat().st_size < 100_000
    limit_before = Image.MAX_IMAGE_PIXELS
    expected = f"image {path}: 12000x12000 = 144000000 pixels exceeds max_pixels=67108864"
    with pytest.raises(ImageError, match=re.escape(expected)):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_max_pixels_is_checked_against_the_header():
    width, height = Image.open(golden_image_path()).size
    pixels = width * height
    with pytest.raises(
        ImageError,
        match=rf"{width}x{height} = {pixels} pixels exceeds max_pixels={pixels - 1}; .*decompression bomb",
    ):
        load_image(golden_image_path(), max_pixels=pixels - 1)
    assert load_image(golden_image_path(), max_pixels=pixels).size == (width, height)


def test_bomb_beyond_pil_own_limit_is_reported_as_image_error():
    with pytest.raises(ImageError, match=r"image <\d+ bytes>: .*possible decompression bomb"):
        load_image(one_bit_png(30000, 30000, with_data=False), max_pixels=10**10)


def test_urls_are_not_fetched():
    with pytest.raises(ImageError, match="URLs are not fetched here"):
        load_image("https://example.com/cat.png")


def test_golden_image_path_exists():
    assert isinstance(golden_image_path(), Path) and golden_image_path().is_file()
