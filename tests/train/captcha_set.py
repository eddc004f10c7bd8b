"""Captcha data sets drawn by the `captcha` package, in the reference's folder layout."""

from __future__ import annotations

import random
from pathlib import Path
from unittest import mock

import captcha.image
from captcha.image import ImageCaptcha

# One glyph repeated 1-4 times: the label is read off the image and exact-match chance is 1/4. (Telling
# digits apart at 56 px is beyond a randomly initialised 2-layer, 32-wide vision tower in a CI-sized run.)
COUNT_LABELS = ("1", "11", "111", "1111")


class _SeededSecrets:
    """The three `secrets` functions the captcha package draws its noise with, from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def choice(self, sequence):
        return self._random.choice(sequence)

    def randbelow(self, bound: int) -> int:
        return self._random.randrange(bound)

    def randbits(self, bits: int) -> int:
        return self._random.getrandbits(bits)


def write_captcha_split(folder: Path, labels, count: int, seed: int) -> Path:
    """`count` images named `<label>.<index>.jpg` (label = file name up to the first dot), reproducibly."""
    folder.mkdir(parents=True, exist_ok=True)
    pick = random.Random(seed)
    # The package draws from the OS (`secrets`); a seeded stand-in makes the images the same every run.
    with mock.patch.object(captcha.image, "secrets", _SeededSecrets(seed + 1)):
        drawer = ImageCaptcha()  # default 160 x 60; the image processor resizes to the model's 56 px
        for index in range(count):
            label = pick.choice(labels)
            drawer.generate_image(label).convert("RGB").save(folder / f"{label}.{index}.jpg")
    return folder
