"""Property-based fuzzing of everything that reads untrusted input before the model runs.

Image decoding, the pixel budget, PDF page selectors and the spotting parser must answer any input
either with a result that keeps their promises or with a 4xx `OCRServiceError`, never another
exception (which the ingress would turn into a 500). Hypothesis runs derandomized (a fixed seed
from each test's source), so CI sees the same examples every run; the whole file stays well under
30 s on 2 cores.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from serve_app.config import LimitsConfig
from serve_app.inputs.documents import parse_page_selector
from serve_app.errors import InvalidRequestError, OCRServiceError
from serve_app.inputs.images import MAX_ASPECT_RATIO, decode_image, fit_to_budget
from serve_app.results.parsers import NORMALIZED_RANGE, parse_spotting

LIMITS = LimitsConfig()
FACTOR = 32  # HunYuanVL: patch 16 x merge 2
# (min_pixels, max_pixels): the CPU test config and the GPU plan.
BUDGETS = [(128 * 128, 512 * 512), (512 * 512, 2048 * 2048)]

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_client_error(error: BaseException) -> None:
    assert isinstance(error, OCRServiceError), f"{type(error).__name__}: {error} (would be a 500)"
    assert 400 <= error.status_code < 500, f"{error.status_code}: {error}"
    assert str(error).strip(), "an error must say what is wrong"


def decode_or_client_error(data: bytes):
    try:
        return decode_image(data, LIMITS)
    except Exception as error:  # noqa: BLE001 - anything but a 4xx service error fails the test
        assert_client_error(error)
        return None


# ---------------------------------------------------------------------------------------- (a) any bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width: int, height: int, depth: int, color: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))


# Openings that make Pillow pick a specific decoder, so the fuzzer gets past format detection.
MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    _png_header(64, 64, 8, 2),
    _png_header(1, 1, 16, 6),
    _png_header(70000, 70000, 8, 0),
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\xff\xd8\xff\xe1\x00\x40Exif\x00\x00MM\x00*\x00\x00\x00\x08",
    b"\xff\xd8\xff\xdb",
    b"GIF89a\x40\x00\x40\x00",
    b"GIF87a\xff\xff\xff\xff",
    b"BM",
    b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    b"II*\x00\x08\x00\x00\x00",
    b"MM\x00*\x00\x00\x00\x08",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
    b"\x00\x00\x01\x00\x01\x00",  # ICO
    b"8BPS\x00\x01",  # PSD
    b"P6\n64 64\n255\n",
    b"P5\n99999 99999\n65535\n",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
    b"\x01\xda\x01\x01",  # SGI
    b"\x0a\x05\x01\x08",  # PCX
    b"SIMPLE  =                    T",  # FITS
    b"qoif",
    b"DDS \x7c\x00\x00\x00",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000
    b"icns",
    b"<svg xmlns='http://www.w3.org/2000/svg'>",
    b"%PDF-1.7\n",
    b"PK\x03\x04",
]


@settings(FUZZ, max_examples=400)
@given(st.one_of(st.binary(max_size=2048), st.tuples(st.sampled_from(MAGIC), st.binary(max_size=1024)).map(b"".join)))
@example(b"")
@example(b"\x00")
@example(_png_header(30000, 30000, 8, 0) + _png_chunk(b"IEND", b""))
@example(_png_header(0, 10, 8, 0) + _png_chunk(b"IEND", b""))
def test_any_bytes_decode_or_give_a_4xx(data):
    decoded = decode_or_client_error(data)
    if decoded is not None:
        assert decoded.image.mode == "RGB"
        width, height = decoded.image.size
        assert 1 <= width and 1 <= height and width * height <= LIMITS.max_image_pixels


# ------------------------------------------------------------------------------------- (b) valid images

# Which modes each format can store as such (GIF and WebP convert on save; they are still valid input).
FORMAT_MODES = {
    "PNG": ["L", "RGB", "RGBA", "P", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA", "P"],
    "GIF": ["L", "RGB", "RGBA", "P"],
    "TIFF": ["L", "RGB", "RGBA", "P", "CMYK", "I;16"],
    "BMP": ["L", "RGB", "RGBA", "P"],
}
# Where the stored image's top-left corner is shown after each EXIF orientation (Pillow's exif_transpose:
# 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise).
TOP_LEFT_SHOWN_AT = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}


@st.composite
def image_sizes(draw, largest: int = 2000):
    """(width, height) in 1..largest, at most MAX_ASPECT_RATIO:1."""
    width = draw(st.integers(1, largest))
    low, high = max(1, math.ceil(width / MAX_ASPECT_RATIO)), min(largest, width * MAX_ASPECT_RATIO)
    return width, draw(st.integers(low, high))


def make_source(mode: str, size: tuple[int, int]) -> Image.Image:
    """A white image with a black top-left quadrant, in `mode` (cheap to encode at any size)."""
    width, height = size
    rgb = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(rgb).rectangle((0, 0, max(0, width // 2 - 1), max(0, height // 2 - 1)), fill=(0, 0, 0))
    if mode == "I;16":
        array = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return Image.frombytes("I;16", size, array.astype("<u2").tobytes())
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(200)
        return rgba
    if mode == "P":
        return rgb.convert("P")
    return rgb.convert(mode)


def encode(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@st.composite
def valid_images(draw, largest: int = 2000):
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    size = draw(image_sizes(largest))
    orientation = draw(st.integers(1, 8)) if fmt == "JPEG" else None
    return fmt, mode, size, orientation


def corner_mean(image: Image.Image, corner: str) -> float:
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    height, width = gray.shape
    rows = slice(0, height // 4) if corner[0] == "t" else slice(height - height // 4, height)
    cols = slice(0, width // 4) if corner[1] == "l" else slice(width - width // 4, width)
    return float(gray[rows, cols].mean())


@settings(FUZZ, max_examples=100)
@given(valid_images())
@example(("PNG", "I;16", (640, 480), None))
@example(("JPEG", "L", (120, 999), 6))
@example(("JPEG", "RGB", (300, 200), 7))
@example(("PNG", "RGB", (1, 1), None))
@example(("JPEG", "CMYK", (1, 200), 6))
@example(("TIFF", "I;16", (2000, 10), None))
@example(("GIF", "P", (2000, 2000), None))
@example(("JPEG", "RGB", (1999, 11), 8))
def test_valid_images_decode_to_oriented_rgb_and_fit_the_budget(spec):
    fmt, mode, (width, height), orientation = spec
    data = encode(make_source(mode, (width, height)), fmt, orientation)
    decoded = decode_image(data, LIMITS)

    assert decoded.image.mode == "RGB"
    assert decoded.original_size == (width, height)
    assert decoded.exif_orientation == (orientation or 1)
    turned = (orientation or 1) >= 5
    assert decoded.image.size == ((height, width) if turned else (width, height))
    if min(width, height) >= 32:  # the black quadrant is where the orientation shows the stored top-left
        shown_at = TOP_LEFT_SHOWN_AT[orientation or 1]
        opposite = {"tl": "br", "tr": "bl", "br": "tl", "bl": "tr"}[shown_at]
        assert corner_mean(decoded.image, shown_at) < 60, (shown_at, fmt, mode)
        assert corner_mean(decoded.image, opposite) > 180, (opposite, fmt, mode)

    for min_pixels, max_pixels in BUDGETS:
        fitted = fit_to_budget(decoded.image, FACTOR, min_pixels, max_pixels)
        fitted_width, fitted_height = fitted.size
        assert fitted.mode == "RGB"
        assert fitted_width % FACTOR == 0 and fitted_height % FACTOR == 0, fitted.size
        assert min_pixels <= fitted_width * fitted_height <= max_pixels, (fitted.size, min_pixels, max_pixels)


@settings(FUZZ, max_examples=300)
@given(image_sizes(largest=20_000), st.sampled_from(BUDGETS))
@example((20_000, 100), BUDGETS[0])
@example((1, 200), BUDGETS[0])
@example((200, 1), BUDGETS[1])
@example((7000, 7000), BUDGETS[1])
def test_budget_arithmetic_for_any_allowed_size(size, budget):
    """fit_to_budget's target size alone (no pixels to resize: a 1x1 stand-in would not carry the
    shape), over the whole range of sizes the limits let through."""
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import smart_resize

    min_pixels, max_pixels = budget
    height, width = smart_resize(size[1], size[0], FACTOR, min_pixels, max_pixels)
    assert width % FACTOR == 0 and height % FACTOR == 0 and width >= FACTOR and height >= FACTOR
    assert min_pixels <= width * height <= max_pixels, (size, (width, height), budget)


# ------------------------------------------------------------------------------------ (c) mutated images


@st.composite
def mutated_images(draw):
    fmt, mode, size, orientation = draw(valid_images(largest=96))
    data = bytearray(encode(make_source(mode, size), fmt, orientation))
    how = draw(st.sampled_from(["truncate", "flip", "both", "splice"]))
    if how in ("truncate", "both"):
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how in ("flip", "both") and data:
        for _ in range(draw(st.integers(1, 16))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
    if how == "splice" and data:
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@settings(FUZZ, max_examples=400)
@given(mutated_images())
def test_mutated_images_decode_or_give_a_4xx(data):
    decoded = decode_or_client_error(data)
    if decoded is not None:
        assert decoded.image.mode == "RGB"
        assert decoded.image.width >= 1 and decoded.image.height >= 1


# -------------------------------------------------------------------------------------- (d) page selector

SELECTOR_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("0123456789-, \t"), max_size=30),
    st.lists(
        st.one_of(
            st.integers(-5, 70).map(str),
            st.tuples(st.integers(-5, 70), st.integers(-5, 70)).map(lambda pair: f"{pair[0]}-{pair[1]}"),
        ),
        max_size=8,
    ).map(",".join),
)


@settings(FUZZ, max_examples=500)
@given(st.one_of(st.none(), SELECTOR_TEXT), st.integers(1, 60))
@example("²", 5)  # str.isdigit() is True for superscripts, int() refuses them
@example("1-²", 5)
@example("①", 5)
@example("٣", 5)  # Arabic-Indic digit: int() reads it as 3
@example("1-3,2-4, 5 ", 5)
@example("99999999999999999999999", 5)
@example("1" * 5000, 5)  # int() refuses strings of more than 4300 digits
def test_page_selector_returns_sorted_pages_or_a_400(selector, page_count):
    try:
        pages = parse_page_selector(selector, page_count)
    except Exception as error:  # noqa: BLE001
        assert isinstance(error, InvalidRequestError), f"{type(error).__name__}: {error} (would be a 500)"
        assert error.param == "pages" and str(error)
        return
    assert pages, "a selector that parses selects at least one page"
    assert pages == sorted(set(pages))
    assert all(1 <= page <= page_count for page in pages)
    if selector is None or not selector.strip():
        assert pages == list(range(1, page_count + 1))


# ------------------------------------------------------------------------------------ (e) spotting parser

COORDINATE = st.one_of(st.integers(-50, 1100), st.integers(-(10**30), 10**30)).map(str)
SPOT_ITEM = st.tuples(st.text(max_size=12), COORDINATE, COORDINATE, COORDINATE, COORDINATE).map(
    lambda item: f"{item[0]}({item[1]},{item[2]}),({item[3]},{item[4]})"
)
SPOTTING_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(SPOT_ITEM, st.sampled_from(["<ref>", "</ref>", "<quad>", "</quad>", "\n", "(", ")", ","])), max_size=20).map(
        "".join
    ),
)


@settings(FUZZ, max_examples=500)
@given(SPOTTING_TEXT)
@example("")
@example("<ref>TOTAL</ref><quad>(10,20),(30,40)</quad>")
@example("a(١٠,٢٠),(٣٠,٤٠)")  # Unicode digits match \d
@example("a(" + "9" * 5000 + ",1),(2,3)")  # a model can emit a 5000-digit number; int() refuses > 4300
def test_spotting_parser_never_raises_and_keeps_boxes_in_range(text):
    result = parse_spotting(text)  # must not raise, whatever the model wrote
    assert result.malformed >= 0
    for item in result.items:
        x1, y1, x2, y2 = item.box
        assert all(0 <= value <= NORMALIZED_RANGE for value in item.box)
        assert x1 <= x2 and y1 <= y2
        assert item.text.strip()
