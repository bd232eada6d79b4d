"""Decoding and validating untrusted image bytes, and fitting them to the model's pixel budget.

Pure functions (Pillow + numpy), used by the Preprocessor stage and unit-tested directly.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import smart_resize

from serve_app.config import LimitsConfig
from serve_app.errors import InvalidImageError, PayloadTooLargeError

# Pillow's own bomb check is process-global; we check declared sizes against our limits
# before decoding instead, and turn Pillow's warning into an error as a second line of defence.
Image.MAX_IMAGE_PIXELS = None

EXIF_ORIENTATION_TAG = 0x0112
RESAMPLE = Image.Resampling.BICUBIC  # what HunYuanVL's image processor resizes with
MAX_ASPECT_RATIO = 200  # HunYuanVL's smart_resize refuses more elongated images
# Only these decoders ever see untrusted bytes (not EPS, which would run Ghostscript, nor PSD, ICO, ...).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    original_size: tuple[int, int]  # (width, height) as stored in the file
    exif_orientation: int  # 1..8; 1 means no rotation/flip was applied
    format: str


def decode_image(data: bytes, limits: LimitsConfig) -> DecodedImage:
    """Bytes -> RGB image with EXIF orientation applied, or a 4xx error saying what is wrong."""
    if not data:
        raise InvalidImageError("The request body is empty: send the image bytes.")
    if len(data) > limits.max_body_bytes:
        raise PayloadTooLargeError(f"The image is {len(data)} bytes; the limit is {limits.max_body_bytes} bytes.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            _check_declared_size(image.size, limits)
            image.seek(0)  # animated GIF/WebP/APNG: the first frame
            image.load()
            orientation = _exif_orientation(image)
            oriented = ImageOps.exif_transpose(image) if orientation != 1 else image
            rgb = to_rgb(oriented)
    except (InvalidImageError, PayloadTooLargeError):
        raise
    except UnidentifiedImageError:
        raise InvalidImageError("The body is not an image Pillow can read (JPEG, PNG, WebP, GIF, BMP, TIFF).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PayloadTooLargeError(f"The image is too large to decode safely: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as error:
        raise InvalidImageError(f"The image could not be decoded (truncated or corrupt): {error}") from None
    return DecodedImage(rgb, image.size, orientation, image.format or "unknown")


def _check_declared_size(size: tuple[int, int], limits: LimitsConfig) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImageError(f"The image declares an empty size {width}x{height}.")
    if max(width, height) > limits.max_image_side:
        raise PayloadTooLargeError(
            f"The image is {width}x{height}; the longest side allowed is {limits.max_image_side} pixels."
        )
    if width * height > limits.max_image_pixels:
        raise PayloadTooLargeError(
            f"The image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InvalidImageError(
            f"The image is {width}x{height}; the model accepts aspect ratios up to {MAX_ASPECT_RATIO}:1. "
            "Crop it into parts."
        )


def _exif_orientation(image: Image.Image) -> int:
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white (text on clear backgrounds stays legible)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the actual range to 8 bits instead of clipping to white.
        image = image.convert("I")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 1.0
        image = image.point(lambda value: (value - low) * scale).convert("L")
    elif image.mode == "F":
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 1.0
        image = image.point(lambda value: (value - low) * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_to_budget(image: Image.Image, factor: int, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize once to the model's target size, with the filter the model's own processor uses,
    so the processor's resize is then a no-op and pixels match transformers' reference path."""
    target_height, target_width = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
    if (target_width, target_height) == image.size:
        return image
    return image.resize((target_width, target_height), RESAMPLE)
