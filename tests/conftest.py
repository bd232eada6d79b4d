"""Shared test helpers: images made with Pillow, so tests need no data files."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

# Debian's fonts-dejavu-core (.ci/run installs it): real glyphs for tests that must read text back.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_image(width: int, height: int, seed: int = 0, text: str = "Invoice 2026-11-28 TOTAL 42.00") -> Image.Image:
    """A deterministic RGB test page: light background, dark text lines and a few shapes."""
    image = Image.new("RGB", (width, height), (245, 243, 236))
    draw = ImageDraw.Draw(image)
    step = max(12, height // 8)
    for row, y in enumerate(range(4, height - 10, step)):
        draw.text((4 + (seed * 7 + row * 13) % max(1, width // 4), y), f"{text} #{seed}-{row}", fill=(20, 20, 30))
    draw.rectangle((width // 3, height // 3, width // 3 + width // 5, height // 3 + height // 6), outline=(200, 30, 30), width=2)
    return image


def truetype_font(size: int = 32) -> ImageFont.FreeTypeFont:
    for path in FONT_CANDIDATES:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    pytest.fail(
        "DejaVuSans.ttf not found (looked in " + ", ".join(FONT_CANDIDATES) + "): "
        "install it with `apt-get update && apt-get install -y fonts-dejavu-core`."
    )


def render_text_page(lines, size=(480, 200), fg=(20, 20, 20), bg=(255, 255, 255), top=40, step=70) -> Image.Image:
    """A page with one text line every `step` px, starting at x=30, y=`top`."""
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    font = truetype_font()
    for row, text in enumerate(lines):
        draw.text((30, top + step * row), text, font=font, fill=fg)
    return image


def to_bytes(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return to_bytes(image, "JPEG", exif=exif, quality=95)


@pytest.fixture
def page() -> Image.Image:
    return make_image(320, 200)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny random HunyuanOCR-architecture checkpoint in 1.5's config layout, built once per test session."""
    from serve_app.model.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-hunyuan-vl"))


@pytest.fixture(scope="session")
def tiny_checkpoint_1_0(tmp_path_factory):
    """The same tiny model in 1.0's config layout (flat text keys, legacy rope_scaling)."""
    from serve_app.model.tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-hunyuan-vl-1.0"), layout="1.0")
