"""Decoding untrusted bytes: good images of every kind work, bad ones get a clear 4xx error."""

from __future__ import annotations

import functools
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serve_app.config import LimitsConfig
from serve_app.errors import InvalidImageError, PayloadTooLargeError
from serve_app.inputs.images import (
    DRAFT_GAP,
    PARALLEL_MIN_PIXELS,
    RESAMPLE,
    budget_size,
    decode_image,
    fit_decoded,
    fit_to_budget,
    resize_in_bands,
)
from tests.conftest import make_image, to_bytes, with_exif_orientation

LIMITS = LimitsConfig()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb(page, fmt):
    decoded = decode_image(to_bytes(page, fmt), LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == page.size
    assert decoded.original_size == page.size


@pytest.mark.parametrize("orientation,expected_size", [(1, (320, 200)), (3, (320, 200)), (6, (200, 320)), (8, (200, 320))])
def test_exif_orientation_is_applied(page, orientation, expected_size):
    decoded = decode_image(with_exif_orientation(page, orientation), LIMITS)
    assert decoded.exif_orientation == orientation
    assert decoded.original_size == (320, 200)
    assert decoded.image.size == expected_size


def test_exif_rotation_turns_the_pixels():
    # A black left half: after orientation 6 (rotate 90 clockwise to display) the black half is on top.
    image = Image.new("RGB", (200, 100), "white")
    image.paste((0, 0, 0), (0, 0, 100, 100))
    decoded = decode_image(with_exif_orientation(image, 6), LIMITS)
    pixels = np.asarray(decoded.image.convert("L"), dtype=np.float32)
    assert pixels[:90].mean() < 40 and pixels[110:].mean() > 215


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    rgba.paste((10, 10, 10, 255), (0, 0, 16, 32))
    decoded = decode_image(to_bytes(rgba), LIMITS)
    assert decoded.image.getpixel((40, 10)) == (255, 255, 255)
    assert decoded.image.getpixel((4, 10)) == (10, 10, 10)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I;16", "1"])
def test_exotic_modes_become_rgb(mode):
    source = make_image(64, 48).convert("RGBA" if mode == "LA" else "RGB")
    if mode == "I;16":
        array = (np.asarray(source.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        converted = Image.frombytes("I;16", source.size, array.tobytes())
        fmt = "PNG"
    else:
        converted = source.convert(mode)
        fmt = "TIFF" if mode == "CMYK" else "PNG"
    decoded = decode_image(to_bytes(converted, fmt), LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)
    # The dark text survives the conversion (16-bit data is rescaled, not clipped to white).
    assert np.asarray(decoded.image).min() < 100


def test_animated_image_uses_first_frame():
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(buffer.getvalue(), LIMITS)
    red, green, blue = decoded.image.getpixel((5, 5))
    assert red > 200 and blue < 50


@pytest.mark.parametrize(
    "body,error",
    [
        (b"", InvalidImageError),
        (b"not an image at all", InvalidImageError),
        (b'{"image": "x"}', InvalidImageError),
    ],
)
def test_non_images_are_rejected(body, error):
    with pytest.raises(error) as raised:
        decode_image(body, LIMITS)
    assert raised.value.status_code == 400


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_rejected(page, fmt):
    data = to_bytes(make_image(400, 300), fmt)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_declared_giant_png_is_refused_before_decoding():
    # A valid PNG header declaring 30000x30000 with almost no data: refused from the header alone.
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(PayloadTooLargeError) as raised:
        decode_image(data, LIMITS)
    assert raised.value.status_code == 413
    assert "30000x30000" in raised.value.message


def test_body_over_the_limit_is_refused(page):
    data = to_bytes(page)
    with pytest.raises(PayloadTooLargeError):
        decode_image(data, LimitsConfig(max_body_bytes=len(data) - 1))


def test_extreme_aspect_ratio_gets_a_clear_error():
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        decode_image(to_bytes(Image.new("RGB", (1, 20000), "white")), LIMITS)


def test_one_pixel_image_is_accepted():
    decoded = decode_image(to_bytes(Image.new("RGB", (1, 1), "white")), LIMITS)
    assert decoded.image.size == (1, 1)


@pytest.mark.parametrize("size", [(1, 1), (50, 3000), (4000, 3000), (333, 777), (640, 640)])
def test_fit_to_budget_respects_the_pixel_budget(size):
    resized = fit_to_budget(Image.new("RGB", size, "white"), factor=32, min_pixels=128 * 128, max_pixels=512 * 512)
    width, height = resized.size
    assert width % 32 == 0 and height % 32 == 0
    assert 128 * 128 <= width * height <= 512 * 512


def test_fit_to_budget_keeps_an_image_already_at_target_size():
    image = Image.new("RGB", (320, 192), "white")
    assert fit_to_budget(image, 32, 128 * 128, 512 * 512) is image


# ------------------------------------------------------------------ reduced-size (draft) JPEG decoding

BUDGETS = [(128 * 128, 512 * 512), (64 * 64, 256 * 256), (512 * 512, 2048 * 2048)]


def _target(budget):
    min_pixels, max_pixels = budget
    return functools.partial(budget_size, factor=32, min_pixels=min_pixels, max_pixels=max_pixels)


def _photo_jpeg(size, orientation=1, mode="RGB") -> bytes:
    image = make_image(*size).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return to_bytes(image, "JPEG", exif=exif, quality=92)


@pytest.mark.parametrize("size", [(2400, 1800), (1001, 757), (3001, 401), (640, 480)])
@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("budget", BUDGETS)
def test_draft_gives_the_same_model_input_size_and_sizes(size, orientation, budget):
    data = _photo_jpeg(size, orientation)
    full = decode_image(data, LIMITS)
    drafted = decode_image(data, LIMITS, target_size=_target(budget))

    # What maps boxes back is the file's and the full oriented image's size, drafted or not.
    assert drafted.original_size == full.original_size == size
    assert drafted.oriented_size == full.oriented_size == full.image.size
    assert drafted.exif_orientation == full.exif_orientation == orientation
    target = budget_size(full.image.size, 32, *budget)
    # Never decoded below DRAFT_GAP x the target (or not reduced at all), nor below 1/4.
    if drafted.image.size != full.image.size:
        assert drafted.image.width >= DRAFT_GAP * target[0] and drafted.image.height >= DRAFT_GAP * target[1]
        assert drafted.image.width * 4 >= full.image.width
    model_full = fit_decoded(full, 32, *budget)
    model_drafted = fit_decoded(drafted, 32, *budget)
    assert model_full.size == model_drafted.size == target
    diff = np.abs(np.asarray(model_full, dtype=np.float64) - np.asarray(model_drafted, dtype=np.float64))
    assert diff.mean() < 1.0, diff.mean()


def test_draft_reduces_a_large_jpeg():
    data = _photo_jpeg((2400, 1800), orientation=6)
    drafted = decode_image(data, LIMITS, target_size=_target((64 * 64, 256 * 256)))
    # target 192x288 (oriented) -> kept >= 1.5x = 288x432: 1800x2400 decodes at 1/4.
    assert drafted.image.size == (450, 600)
    assert drafted.oriented_size == (1800, 2400) and drafted.original_size == (2400, 1800)


def test_draft_stops_at_a_quarter():
    # 1/8 would still cover 1.5x the 64x32 target, but keeps only each 8x8 block's mean.
    data = to_bytes(Image.new("RGB", (2048, 1024), "white"), "JPEG")
    drafted = decode_image(data, LIMITS, target_size=lambda size: (64, 32))
    assert drafted.image.size == (512, 256)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_draft_leaves_other_formats_alone(fmt):
    image = make_image(1200, 900)
    decoded = decode_image(to_bytes(image, fmt), LIMITS, target_size=_target((64 * 64, 256 * 256)))
    assert decoded.image.size == decoded.oriented_size == (1200, 900)
    assert decoded.region is None


def test_draft_never_reduces_below_an_upscaling_target():
    data = _photo_jpeg((300, 200))
    decoded = decode_image(data, LIMITS, target_size=_target((512 * 512, 2048 * 2048)))
    assert decoded.image.size == (300, 200) and decoded.region is None


def test_draft_keeps_the_guards():
    data = _photo_jpeg((2400, 1800))
    with pytest.raises(PayloadTooLargeError):
        decode_image(data, LimitsConfig(max_image_pixels=2400 * 1800 - 1), target_size=_target(BUDGETS[0]))
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMITS, target_size=_target(BUDGETS[0]))


def _centroids(image: Image.Image) -> tuple[float, float, float]:
    """x of the ink's centroid in the left and right halves, y over all (ink = 255 - gray)."""
    ink = 255 - np.asarray(image.convert("L"), dtype=np.float64)
    ys, xs = np.indices(ink.shape)
    half = ink.shape[1] // 2
    left, right = ink[:, :half], ink[:, half:]
    return (
        (xs[:, :half] * left).sum() / left.sum(),
        (xs[:, half:] * right).sum() / right.sum(),
        (ys * ink).sum() / ink.sum(),
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_of_an_odd_size_stays_registered(orientation):
    # 1605x1201 at 1/4 decodes 402x301 pixels that show 401.25x300.25 of them: the surplus (at the
    # stored right and bottom, moved by the orientation) must not stretch or shift the model input.
    image = Image.new("L", (1605, 1201), 255)
    draw = ImageDraw.Draw(image)
    for left, top in ((120, 150), (1300, 880)):  # on a diagonal: in different halves however turned
        draw.ellipse((left, top, left + 160, top + 160), fill=0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = to_bytes(image, "JPEG", exif=exif, quality=95)
    budget = (64 * 64, 128 * 128)
    full = decode_image(data, LIMITS)
    drafted = decode_image(data, LIMITS, target_size=_target(budget))
    assert drafted.image.width * 4 - drafted.oriented_size[0] in (1, 3) and drafted.region is not None
    shift = np.subtract(_centroids(fit_decoded(drafted, 32, *budget)), _centroids(fit_decoded(full, 32, *budget)))
    assert np.abs(shift).max() < 0.05, shift


@pytest.mark.parametrize(
    "source,size,box",
    [
        ((4000, 3000), (2336, 1760), None),  # a 12 MP photo at the default budget
        ((1801, 2403), (1024, 1344), None),  # odd source sides, band edges off any grid
        ((1000, 750), (1216, 896), (0.0, 0.0, 999.5, 749.25)),  # upscale, from a reduced decode's region
        ((3001, 401), (2976, 384), (0.25, 0.0, 3001.0, 400.75)),
    ],
)
@pytest.mark.parametrize("bands", [2, 3, 4])
def test_resizing_in_bands_gives_the_same_pixels(source, size, box, bands):
    rng = np.random.default_rng(source[0] + bands)
    image = Image.fromarray(rng.integers(0, 256, (source[1], source[0], 3), dtype=np.uint8))
    with ThreadPoolExecutor(2) as pool:
        banded = resize_in_bands(image, size, box, pool, bands)
    whole = image.resize(size, RESAMPLE, box=box)
    assert banded.size == size and banded.mode == "RGB"
    _assert_same_to_rounding(banded, whole)


def _assert_same_to_rounding(image: Image.Image, expected: Image.Image) -> None:
    # A band's source box is computed in floats: a filter centre can move by ~1e-13 pixel and flip the
    # fixed-point rounding of a value. Measured: never more than 1/255, on 0 to 0.06% of the values.
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) / diff.size < 1e-3


def test_fit_decoded_with_threads_gives_the_same_model_input():
    # A drafted JPEG (1/2 scale, with a fractional region) and a full one, at a budget large enough
    # (>= 1 MP model input) for the banded path: what one thread makes, to rounding.
    data = _photo_jpeg((4001, 3003), orientation=6)
    budget = (512 * 512, 1_200_000)
    with ThreadPoolExecutor(2) as pool:
        for target in (None, _target(budget)):
            decoded = decode_image(data, LIMITS, target_size=target)
            assert (decoded.region is not None) == (target is not None)  # odd sides at 1/2: a fractional region
            threaded = fit_decoded(decoded, 32, *budget, pool=pool, bands=2)
            assert threaded.width * threaded.height >= PARALLEL_MIN_PIXELS
            _assert_same_to_rounding(threaded, fit_decoded(decoded, 32, *budget))
