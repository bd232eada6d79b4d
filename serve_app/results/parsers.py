"""Model text -> structured results: spotting boxes, layout regions, fields JSON, table rows. Pure functions.

Parsers never fail a request: what they cannot read is skipped and reported as a warning.

Spotting and layout accept the wire formats HunyuanOCR's own reward scorers accept
(Tencent-Hunyuan/HunyuanOCR `train_verl/reward/task_scorers/spotting.py` @ 1ef4179e,
`layout.py` @ 40b26e26). Numbers are parsed only from short digit strings (an int() of a
5000-digit string is slow or raises), JSON is read with json (never eval), and a JSON array cut
by max_tokens keeps its complete items.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

NORMALIZED_RANGE = 1000  # HunyuanOCR writes coordinates normalized to 0..1000 of the image it saw

# Spotting, format1 `<ref>t</ref><quad>(x1,y1),(x2,y2)</quad>` and format3 `t(x1,y1),(x2,y2)` (what
# format1 reads as once the <ref>/<quad> special tokens are skipped): the tagged form is reduced to
# the plain one by dropping the tags, then each item's text is whatever precedes its coordinate tail,
# back to the previous tail, so text with parentheses ("ATLANTA (AP)", "金额(小写)") keeps its text.
_NUMBER = r"\s*(-?[0-9]{1,6})\s*"  # ASCII digits, bounded: int() of a 5000-digit string raises
_BOX = re.compile(rf"\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)")
_TAGS = re.compile(r"</?(?:ref|quad|box)>")
# Spotting format2 `<quad><pos_x1><pos_y1><pos_x2><pos_y2></quad><ref>t</ref>`: position tokens,
# the number is in the token's name, and the text FOLLOWS its box.
_POS = r"<pos_(-?[0-9]{1,6})>\s*"
_POS_BOX = re.compile(rf"(?:<quad>\s*)?{_POS}{_POS}{_POS}{_POS}(?:</quad>)?")
_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
# JSON spotting/layout: a bare array, or one in a ```json fence (closed or cut).
_FENCE_OPEN = re.compile(r"^```[A-Za-z]*[ \t]*\n?")
_FENCE_CLOSE = re.compile(r"\n?```\s*$")
_JSON_ARRAY_START = re.compile(r"\[\s*[{\]]")
_MAX_NUMBER_CHARS = 8  # longer numeric literals are out of range anyway, whatever their value


@dataclass
class SpottedText:
    text: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 normalized to 0..1000


@dataclass
class SpottingResult:
    items: list[SpottedText] = field(default_factory=list)
    malformed: int = 0  # items skipped: empty text, coordinates out of range or inverted, truncated tail


def parse_spotting(model_text: str) -> SpottingResult:
    """Spotting output in any of the four formats HunyuanOCR's scorer accepts, detected in this order:
    a JSON array `[{"box"|"bbox": [xmin, ymin, xmax, ymax], "text": ...}]` (bare or fenced), format2
    (position tokens `<pos_N>`), then format1/format3 (`(x1,y1),(x2,y2)` tails, tags or not)."""
    try:
        text = model_text if isinstance(model_text, str) else ""
        objects = _json_array_objects(text)
        if objects is not None:
            return _spotting_from_json(*objects)
        if _POS_BOX.search(text):
            return _spotting_from_position_tokens(text)
        return _spotting_from_coordinate_tails(text)
    except Exception:  # never fail a request on the model's text; the regexes above should not raise
        return SpottingResult(malformed=1)


def _spotting_box(values) -> tuple[int, int, int, int] | None:
    """Four coordinates as a valid 0..1000 box (x1 <= x2, y1 <= y2), or None."""
    if len(values) != 4:
        return None
    x1, y1, x2, y2 = values
    if not all(0 <= value <= NORMALIZED_RANGE for value in values) or x2 < x1 or y2 < y1:
        return None
    return x1, y1, x2, y2


def _spotting_from_coordinate_tails(text: str) -> SpottingResult:
    text = _TAGS.sub("", text)
    result = SpottingResult()
    position = 0
    for match in _BOX.finditer(text):
        label = text[position : match.start()].strip()
        position = match.end()
        box = _spotting_box(tuple(int(value) for value in match.groups()))
        if not label or box is None:
            result.malformed += 1
            continue
        result.items.append(SpottedText(label, box))
    if text[position:].strip():
        result.malformed += 1  # a trailing item without (complete) coordinates: cut by max_tokens or garbled
    return result


def _spotting_from_position_tokens(text: str) -> SpottingResult:
    result = SpottingResult()
    matches = list(_POS_BOX.finditer(text))
    if text[: matches[0].start()].strip():
        result.malformed += 1  # text before the first box: not an item of this format
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        segment = text[match.end() : end]
        ref = _REF.search(segment)
        if ref:  # tagged: the text is the <ref>; anything else in the segment is debris
            label, rest = ref.group(1), segment[: ref.start()] + segment[ref.end() :]
        else:  # tags skipped as special tokens, or a <ref> cut by max_tokens
            label, rest = _TAGS.sub("", segment), ""
            cut = label.find("<pos_")  # a box cut after some of its position tokens
            if cut >= 0:
                label, rest = label[:cut], label[cut:]
            if "<ref>" in segment:
                label, rest = "", ""  # `<ref>` never closed: the item was cut (counted once, below)
        label = label.strip()
        box = _spotting_box(tuple(int(value) for value in match.groups()))
        if not label or box is None:
            result.malformed += 1
        else:
            result.items.append(SpottedText(label, box))
        if _TAGS.sub("", rest).strip():
            result.malformed += 1
    return result


def _spotting_from_json(objects: list, truncated: bool) -> SpottingResult:
    result = SpottingResult(malformed=int(truncated))
    for item in objects:
        if not isinstance(item, dict):
            result.malformed += 1
            continue
        raw_box = item.get("box", item.get("bbox"))
        label = item.get("text", "")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)  # as the scorer: a number read as text
        values = _json_numbers(raw_box)
        box = _spotting_box(values) if values is not None else None
        if box is None or not isinstance(label, str) or not label.strip():
            result.malformed += 1
            continue
        result.items.append(SpottedText(label.strip(), box))
    return result


def _bounded_int(literal: str):
    # json's own int() of a 5000-digit literal is slow or raises; such a value is out of range anyway
    return int(literal) if len(literal) <= _MAX_NUMBER_CHARS else math.inf


def _bounded_float(literal: str):
    return float(literal) if len(literal) <= 32 else math.inf


_JSON = json.JSONDecoder(parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=lambda name: math.nan)


def _json_array_objects(text: str) -> tuple[list, bool] | None:
    """A JSON array of objects at the start of the text (bare or in a ```json fence): (its items,
    whether it was cut short). The complete items of a cut array are kept. None when the text is not
    such an array."""
    body = text.strip()
    fenced = _FENCE_OPEN.match(body)
    if fenced:
        body = _FENCE_CLOSE.sub("", body[fenced.end() :]).strip()
    if not _JSON_ARRAY_START.match(body):
        return None
    items: list = []
    position = 1
    while True:
        position = _skip_space(body, position)
        if position >= len(body):
            return items, True  # cut after a complete item
        if body[position] == "]":
            return items, bool(body[position + 1 :].strip())  # text after the array: counted once
        if items:
            if body[position] != ",":
                return items, True
            position = _skip_space(body, position + 1)
            if body[position : position + 1] == "]":  # a trailing comma: tolerated
                continue
        try:
            item, position = _JSON.raw_decode(body, position)
        except (ValueError, RecursionError):  # cut inside an item, or not JSON from here on
            return items, True
        items.append(item)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _json_number(value) -> int | None:
    """A JSON coordinate as an int: ints, finite floats (truncated, as the scorer's int()), short
    digit strings; None for anything else (bools, huge or non-finite values, other types)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,6}\s*", value):
        return int(value)
    return None


def _json_numbers(values) -> tuple[int, ...] | None:
    if not isinstance(values, list):
        return None
    numbers = tuple(_json_number(value) for value in values)
    return None if any(number is None for number in numbers) else numbers


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


def to_caller_polygon(
    points: list[tuple[int, int]],
    oriented_size: tuple[int, int],
    original_size: tuple[int, int],
    exif_orientation: int,
) -> list[list[int]]:
    """0..1000 points on the image the model saw -> [x, y] pixels of the image as the caller stored it
    (scaled to the oriented size, the orientation undone, clamped to the image), as `to_caller_pixels`."""
    oriented_width, oriented_height = oriented_size
    width, height = original_size
    scale_x, scale_y = oriented_width / NORMALIZED_RANGE, oriented_height / NORMALIZED_RANGE
    stored = (_unorient(x * scale_x, y * scale_y, original_size, exif_orientation) for x, y in points)
    return [[_clamp(round(x), width), _clamp(round(y), height)] for x, y in stored]


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


# Layout, form 1: `text<hy-meta><layout>cat</layout><poly>(x,y),(x,y),(x,y),(x,y)</poly></hy-meta>`
# (`<quad>` instead of `<poly>` too). A region's text is everything since the previous region.
_HY_META = re.compile(
    r"<hy-meta>\s*<layout>([^<]*)</layout>\s*<(poly|quad)>([^<]*)</\2>\s*</hy-meta>"
)
_HY_META_TAG = re.compile(r"</?(?:hy-meta|layout|poly|quad)>")
_POINT = rf"\({_NUMBER},{_NUMBER}\)"
_POINTS = re.compile(rf"\s*{_POINT}(?:\s*,\s*{_POINT})*\s*,?\s*")
_POINT_ONE = re.compile(_POINT)
_MIN_POLYGON_POINTS = 4


@dataclass
class LayoutRegion:
    category: str  # canonical, as the scorer's _normalize_category: paragraph, section_title, figure, ...
    polygon: list[tuple[int, int]]  # >= 4 points, normalized to 0..1000
    text: str  # the region's content (layout_parse); empty for plain layout


@dataclass
class LayoutResult:
    items: list[LayoutRegion] = field(default_factory=list)  # in the model's (reading) order
    malformed: int = 0  # regions skipped: no category, too few points, out of range, cut by max_tokens


def parse_layout(model_text: str) -> LayoutResult:
    """Layout output in the two forms HunyuanOCR's scorer accepts: `<hy-meta>` tags, or a JSON array
    `[{"layout_type", "bbox": "(x,y),..." | "[[x,y],...]" | [[x,y],...], "text"?}]` (bare or fenced).

    Anything else (the tags skipped as special tokens, say, leaving `category(x,y),...` tails that
    cannot be told from text) gives no regions and malformed=0: nothing is guessed.
    """
    try:
        text = model_text if isinstance(model_text, str) else ""
        if "<hy-meta>" in text:
            return _layout_from_hy_meta(text)
        objects = _json_array_objects(text)
        if objects is not None:
            return _layout_from_json(*objects)
        return LayoutResult()
    except Exception:  # never fail a request on the model's text
        return LayoutResult(malformed=1)


def normalize_layout_category(category: str) -> str:
    """The scorer's category canonicalisation (layout.py `_normalize_category`)."""
    normalized = category.lower().strip().replace(" ", "_").replace("-", "_")
    if normalized in ("para_title", "paratitle"):
        return "para_title"
    if normalized in ("table_of_contents", "tableofcontents") or normalized.startswith("table_of"):
        return "table_of_contents"
    if normalized in ("table_title", "tabletitle"):
        return "table_title"
    if normalized in ("figure_title", "figuretitle", "chart_title", "charttitle"):
        return "figure_title"
    if normalized in ("figure", "chart"):
        return "figure"
    if normalized in ("paragraph", "paragraph_span", "paragraphspan", "para"):
        return "paragraph"
    if normalized in ("section_title", "sectiontitle", "title", "heading"):
        return "section_title"
    if normalized in ("header", "page_header", "page_footer", "footer"):
        return normalized.replace("page_", "")
    return normalized


def _polygon(points: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Points as a valid 0..1000 polygon: two points (a box, x1,y1,x2,y2) become its four corners;
    fewer than four points otherwise, or a point out of range, is no polygon."""
    if not all(0 <= value <= NORMALIZED_RANGE for point in points for value in point):
        return None
    if len(points) == 2:
        (x1, y1), (x2, y2) = points
        if x2 < x1 or y2 < y1:
            return None
        points = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return points if len(points) >= _MIN_POLYGON_POINTS else None


def _points_from_tuples(coordinates: str) -> list[tuple[int, int]] | None:
    """`(x,y),(x,y),...` -> points; None unless the whole string is such a list."""
    if not _POINTS.fullmatch(coordinates):
        return None
    return [(int(x), int(y)) for x, y in _POINT_ONE.findall(coordinates)]


def _points_from_json(value) -> list[tuple[int, int]] | None:
    """[[x,y],...] -> points; a flat [x1,y1,x2,y2,...] list of an even length reads as x,y pairs."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(pair, list) for pair in value):
        pairs = [_json_numbers(pair) for pair in value]
        if any(pair is None or len(pair) != 2 for pair in pairs):
            return None
        return [(pair[0], pair[1]) for pair in pairs]
    numbers = _json_numbers(value)
    if numbers is None or len(numbers) % 2:
        return None
    return list(zip(numbers[0::2], numbers[1::2]))


def _layout_from_hy_meta(text: str) -> LayoutResult:
    result = LayoutResult()
    position = 0
    for match in _HY_META.finditer(text):
        segment = text[position : match.start()]
        position = match.end()
        broken = segment.count("<hy-meta>")  # regions before this one that did not parse (garbled tags)
        if broken:
            result.malformed += broken
            tags = list(_HY_META_TAG.finditer(segment))
            segment = segment[tags[-1].end() :] if tags else segment
        category = normalize_layout_category(match.group(1))
        points = _points_from_tuples(match.group(3))
        polygon = _polygon(points) if points is not None else None
        if not category or polygon is None:
            result.malformed += 1
            continue
        result.items.append(LayoutRegion(category, polygon, segment.strip()))
    tail = text[position:]
    if "<hy-meta>" in tail:
        result.malformed += tail.count("<hy-meta>")  # cut by max_tokens inside its tags, or garbled
    elif tail.strip():
        result.malformed += 1  # text of a region whose tags never came: cut by max_tokens
    return result


def _layout_from_json(objects: list, truncated: bool) -> LayoutResult:
    result = LayoutResult(malformed=int(truncated))
    for item in objects:
        category = item.get("layout_type") if isinstance(item, dict) else None
        if not isinstance(category, str) or not normalize_layout_category(category):
            result.malformed += 1
            continue
        bbox = item.get("bbox")
        points = None
        if isinstance(bbox, str) and bbox.strip().startswith("("):
            points = _points_from_tuples(bbox)
        elif isinstance(bbox, str) and bbox.strip().startswith("["):
            try:
                points = _points_from_json(_JSON.decode(bbox.strip()))  # never eval(): json only
            except (ValueError, RecursionError):
                points = None
        elif isinstance(bbox, list):
            points = _points_from_json(bbox)
        polygon = _polygon(points) if points is not None else None
        if polygon is None:
            result.malformed += 1
            continue
        content = item.get("text", "")
        result.items.append(LayoutRegion(normalize_layout_category(category), polygon,
                                         content.strip() if isinstance(content, str) else ""))
    return result
