"""Input pages: the sample receipts beside the checkout, or generated receipt-like pages where there are none."""

from __future__ import annotations

import io
from pathlib import Path

from bench.lib import ROOT

DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "sroie-sample"  # the SROIE sample receipts beside the checkout
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_files(folder: Path | None) -> list[Path]:
    """The images of `folder`, sorted by name; none when it is None or missing."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def synthetic_page(width: int, height: int, seed: int = 0) -> bytes:
    """A receipt-like JPEG: light paper, lines of dark text."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (246, 244, 238))
    draw = ImageDraw.Draw(image)
    step = max(14, height // 60)
    for row, y in enumerate(range(8, height - step, step)):
        draw.text((8 + (seed * 11 + row * 7) % max(1, width // 5), y), f"ITEM {seed}-{row} QTY 1 PRICE {row * 3 % 97}.50",
                  fill=(25, 25, 35))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def load_pages(images_dir: Path | None, count: int) -> tuple[list[bytes], str]:
    """`count` image payloads, cycling over the images in `images_dir` (sorted), or over 8 generated
    receipt-sized pages (463x1000, like SROIE's) when the folder is missing or has none; and where they came from."""
    files = image_files(images_dir)
    if files:
        distinct = [path.read_bytes() for path in files]
        origin = f"{images_dir} ({len(files)} images)"
    else:
        distinct = [synthetic_page(463, 1000, seed) for seed in range(8)]
        origin = f"generated 463x1000 receipts ({images_dir} has no images)"
    return [distinct[i % len(distinct)] for i in range(count)], origin
