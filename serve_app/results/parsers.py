"""Model text -> structured results: spotting boxes, fields JSON, table rows. Pure functions.

Parsers never fail a request: what they cannot read is skipped and reported as a warning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

NORMALIZED_RANGE = 1000  # HunyuanOCR writes coordinates normalized to 0..1000 of the image it saw

# `text(x1,y1),(x2,y2)`: what spotting output reads as once the <ref>/<quad> special tokens are
# skipped. The tagged form is reduced to it by dropping the tags first.
_NUMBER = r"\s*(-?[0-9]{1,6})\s*"  # ASCII digits, bounded: int() of a 5000-digit string raises
_BOX = re.compile(rf"\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)")
_TAGS = re.compile(r"</?(?:ref|quad|box)>")


@dataclass
class SpottedText:
    text: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 normalized to 0..1000


@dataclass
class SpottingResult:
    items: list[SpottedText] = field(default_factory=list)
    malformed: int = 0  # items skipped: empty text, coordinates out of range or inverted, truncated tail


def parse_spotting(model_text: str) -> SpottingResult:
    text = _TAGS.sub("", model_text)
    result = SpottingResult()
    position = 0
    for match in _BOX.finditer(text):
        label = text[position : match.start()].strip()
        position = match.end()
        x1, y1, x2, y2 = (int(value) for value in match.groups())
        in_range = all(0 <= value <= NORMALIZED_RANGE for value in (x1, y1, x2, y2))
        if not label or not in_range or x2 < x1 or y2 < y1:
            result.malformed += 1
            continue
        result.items.append(SpottedText(label, (x1, y1, x2, y2)))
    if text[position:].strip():
        result.malformed += 1  # a trailing item without (complete) coordinates: cut by max_tokens or garbled
    return result


def to_caller_pixels(
    box: tuple[int, int, int, int],
    oriented_size: tuple[int, int],
    original_size: tuple[int, int],
    exif_orientation: int,
) -> list[int]:
    """A 0..1000 box on the image the model saw -> pixels of the image as the caller stored it.

    The model saw the EXIF-oriented image resized: scale to the oriented size, then undo the orientation.
    """
    oriented_width, oriented_height = oriented_size
    x1, y1, x2, y2 = box
    scale_x, scale_y = oriented_width / NORMALIZED_RANGE, oriented_height / NORMALIZED_RANGE
    return oriented_to_stored((x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y), original_size, exif_orientation)


def oriented_to_stored(
    box: tuple[float, float, float, float], original_size: tuple[int, int], exif_orientation: int
) -> list[int]:
    """A pixel box on the EXIF-oriented image -> the same box on the stored image (rotations and
    mirrors keep boxes axis-aligned)."""
    x1, y1, x2, y2 = box
    corners = [_unorient(x, y, original_size, exif_orientation) for x, y in ((x1, y1), (x2, y2))]
    xs, ys = [corner[0] for corner in corners], [corner[1] for corner in corners]
    width, height = original_size
    return [
        _clamp(round(min(xs)), width),
        _clamp(round(min(ys)), height),
        _clamp(round(max(xs)), width),
        _clamp(round(max(ys)), height),
    ]


def _unorient(x: float, y: float, stored_size: tuple[int, int], orientation: int) -> tuple[float, float]:
    """A point of the oriented image -> the same point in the stored image (EXIF orientations 1-8)."""
    width, height = stored_size
    return {
        1: (x, y),
        2: (width - x, y),  # mirrored horizontally
        3: (width - x, height - y),  # rotated 180
        4: (x, height - y),  # mirrored vertically
        5: (y, x),  # transposed
        6: (y, height - x),  # stored rotated 90 counter-clockwise; shown turned clockwise
        7: (width - y, height - x),  # transversed
        8: (width - y, x),  # stored rotated 90 clockwise; shown turned counter-clockwise
    }.get(orientation, (x, y))


def _clamp(value: int, limit: int) -> int:
    return max(0, min(limit, value))


class FieldsParseError(ValueError):
    pass


def parse_fields(model_text: str, keys: tuple[str, ...]) -> dict[str, object]:
    """The model's JSON answer with exactly `keys` (missing ones None), or FieldsParseError."""
    text = model_text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise FieldsParseError(f"the model's answer is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise FieldsParseError(f"the model's answer is JSON {type(value).__name__}, not an object")
    return {key: value.get(key) for key in keys}


class _TableRows(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            if not self.rows:
                self.rows.append([])
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_table_rows(model_text: str) -> list[list[str]] | None:
    """Rows of cell texts of the first HTML table(s) in the text; None when there is no table."""
    parser = _TableRows()
    try:
        parser.feed(model_text)
        parser.close()
    except Exception:  # html.parser is lenient; anything it still refuses means "no table"
        return None
    rows = [row for row in parser.rows if row]
    return rows if parser.tables and rows else None
