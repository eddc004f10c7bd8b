"""Grounding coordinates in model text: `[[x1,y1,x2,y2]]` boxes, `[[a;b]]` multi-boxes and `[[x,y]]` points.

Coordinates are thousandths of the image width (x) and height (y), written as three digits 000-999, origin
top-left. Parsing never raises on model output: a malformed entry is skipped and the rest is kept. Values
above 999 (a model may write 1000 at the right edge) are clamped to 999.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCALE = 1000
MAX_COORDINATE = SCALE - 1
GROUP_PATTERN = re.compile(r"\[\[([^\[\]]*)\]\]")
_NUMBER = re.compile(r"\s*(\d{1,9})\s*")


@dataclass(frozen=True)
class Box:
    """A box in thousandths of width and height (0-999): top-left (x1, y1), bottom-right (x2, y2)."""

    x1: int
    y1: int
    x2: int
    y2: int

    def ordered(self) -> Box:
        """The same box with x1 <= x2 and y1 <= y2."""
        return Box(min(self.x1, self.x2), min(self.y1, self.y2), max(self.x1, self.x2), max(self.y1, self.y2))


@dataclass(frozen=True)
class Point:
    """A point in thousandths of width and height (0-999), as GUI-agent taps are written."""

    x: int
    y: int


@dataclass(frozen=True)
class PixelBox:
    """A box in pixels of the original image (floats; round them to draw)."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class PixelPoint:
    """A point in pixels of the original image."""

    x: float
    y: float


Target = Box | Point


@dataclass(frozen=True)
class BoxGroup:
    """One `[[...]]` group of the text: what it holds and where it is (`text[start:end]`)."""

    targets: tuple[Target, ...]
    start: int
    end: int

    @property
    def boxes(self) -> tuple[Box, ...]:
        """The boxes of the group (points left out)."""
        return tuple(target for target in self.targets if isinstance(target, Box))


def _coordinate(text: str) -> int | None:
    match = _NUMBER.fullmatch(text)
    return min(int(match.group(1)), MAX_COORDINATE) if match else None


def parse_target(entry: str) -> Target | None:
    """`"212,498,787,564"` -> Box, `"780,862"` -> Point; anything else -> None."""
    values = [_coordinate(part) for part in entry.split(",")]
    if None in values:
        return None
    if len(values) == 4:
        return Box(*values)
    if len(values) == 2:
        return Point(*values)
    return None


def find_box_groups(text: str) -> list[BoxGroup]:
    """Every `[[...]]` group of `text` holding at least one well-formed box or point, in order."""
    groups = []
    for match in GROUP_PATTERN.finditer(text):
        targets = tuple(t for entry in match.group(1).split(";") if (t := parse_target(entry)) is not None)
        if targets:
            groups.append(BoxGroup(targets, match.start(), match.end()))
    return groups


def parse_boxes(text: str) -> list[Box]:
    """Every well-formed box of `text`, in order (points left out)."""
    return [box for group in find_box_groups(text) for box in group.boxes]


def to_pixels(target: Target, width: float, height: float) -> PixelBox | PixelPoint:
    """Thousandths -> pixels of an image `width` x `height` (value * size / 1000)."""
    if isinstance(target, Point):
        return PixelPoint(target.x * width / SCALE, target.y * height / SCALE)
    return PixelBox(
        target.x1 * width / SCALE,
        target.y1 * height / SCALE,
        target.x2 * width / SCALE,
        target.y2 * height / SCALE,
    )


def _thousandths(value: float, size: float) -> int:
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return max(0, min(MAX_COORDINATE, round(value / size * SCALE)))


def from_pixels(target: PixelBox | PixelPoint, width: float, height: float) -> Target:
    """Pixels -> thousandths, rounded to the nearest unit and clamped to 0-999."""
    if isinstance(target, PixelPoint):
        return Point(_thousandths(target.x, width), _thousandths(target.y, height))
    return Box(
        _thousandths(target.x1, width),
        _thousandths(target.y1, height),
        _thousandths(target.x2, width),
        _thousandths(target.y2, height),
    )


def _format_target(target: Target) -> str:
    values = (
        (target.x, target.y) if isinstance(target, Point) else (target.x1, target.y1, target.x2, target.y2)
    )
    for value in values:
        if not 0 <= value <= MAX_COORDINATE:
            raise ValueError(f"coordinate {value} of {target} is outside 0-{MAX_COORDINATE}")
    return ",".join(f"{value:03d}" for value in values)


def format_boxes(targets: Target | list[Target] | tuple[Target, ...]) -> str:
    """`[[x1,y1,x2,y2]]` for one box, `[[a;b]]` for several, each value three digits."""
    if isinstance(targets, Box | Point):
        targets = [targets]
    if not targets:
        raise ValueError("format_boxes needs at least one box or point")
    return "[[" + ";".join(_format_target(target) for target in targets) + "]]"


# Phrase labels: a light stand-in for the reference's spaCy noun chunks (no model download needed).
_CLAUSE_BREAK = re.compile(r"[.!?;:\n()\[\]]|,\s")
_DETERMINERS = frozenset(
    "a an the this that these those his her its their my your our some another each every".split()
)
_LINKING_WORDS = frozenset(
    "is are was were be being been has have had and or but with without of in on at by for from to into "
    "onto near under over above below behind beside between while who which that wearing holding".split()
)
MAX_PHRASE_WORDS = 8


@dataclass(frozen=True)
class GroundedPhrase:
    """A phrase of the text and every box or point written for it."""

    phrase: str
    targets: tuple[Target, ...]


def phrase_before(text: str, start: int, end: int) -> str:
    """Guess the noun phrase that a box at `text[end]` belongs to, from `text[start:end]`.

    The last clause before the box, from its last determiner on ("a man with a hat" -> "a hat"), or else
    after its last linking word ("children in blue shirts" -> "blue shirts"); at most 8 words.
    """
    clauses = [piece.strip() for piece in _CLAUSE_BREAK.split(text[start:end])]
    words = next((piece.split() for piece in reversed(clauses) if piece), [])
    lowered = [word.lower() for word in words]
    first = max((i for i, word in enumerate(lowered) if word in _DETERMINERS), default=None)
    if first is None:
        first = max((i + 1 for i, word in enumerate(lowered) if word in _LINKING_WORDS), default=0)
    return " ".join(words[first:][-MAX_PHRASE_WORDS:]).strip("\"'`")


def grounded_phrases(text: str) -> list[GroundedPhrase]:
    """Each phrase with its boxes, in order of first mention; a repeated phrase (any case) is merged."""
    merged: dict[str, GroundedPhrase] = {}
    previous_end = 0
    for group in find_box_groups(text):
        phrase = phrase_before(text, previous_end, group.start)
        previous_end = group.end
        key = phrase.lower()
        if key in merged:
            merged[key] = GroundedPhrase(merged[key].phrase, merged[key].targets + group.targets)
        else:
            merged[key] = GroundedPhrase(phrase, group.targets)
    return list(merged.values())
