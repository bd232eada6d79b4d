"""Decoding untrusted bytes: good images of every kind work, bad ones get a clear 4xx error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.config import LimitsConfig
from serve_app.errors import InvalidImageError, PayloadTooLargeError
from serve_app.images import decode_image, fit_to_budget
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
