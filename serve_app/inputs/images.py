"""Decoding and validating untrusted image bytes, and fitting them to the model's pixel budget.

Pure functions (Pillow + numpy), used by the Preprocessor stage and unit-tested directly.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
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
# A resize to at least this many pixels is split into horizontal bands resized on parallel threads (Pillow
# releases the GIL while it resamples); below it the threads' overhead outweighs the gain.
PARALLEL_MIN_PIXELS = 1 << 20
MAX_ASPECT_RATIO = 200  # HunYuanVL's smart_resize refuses more elongated images
# Only these decoders ever see untrusted bytes (not EPS, which would run Ghostscript, nor PSD, ICO, ...).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


# A target size for the decoded image: (width, height) of the EXIF-oriented full image -> the
# (width, height) it will be resized to. decode_image uses it to decode JPEGs at reduced size.
TargetSize = Callable[[tuple[int, int]], tuple[int, int]]

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
SWAPS_SIDES = (5, 6, 7, 8)
# A JPEG is decoded at reduced size only down to DRAFT_GAP times the target in both sides, so the bicubic
# resize that follows still does part of the antialiasing, and at most to 1/4: libjpeg's 1/8 keeps only
# each block's mean (a box filter). Against a full decode + bicubic, the model input of a synthetic 3-20 MP
# page then stays at 37-56 dB PSNR (45.8 dB for 12 MP at a 512*512 budget, decoded at 1/4); for scale,
# bicubic against Lanczos on the same pages is 43-47 dB. At a gap of 1.0 it drops to 29-35 dB for some
# sizes, and with 1/8 allowed to ~38 dB. bench/preprocess.py measures it.
DRAFT_GAP = 1.5
MAX_DRAFT_SCALE = 4


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied; JPEGs may be decoded at 1/2, 1/4 or 1/8 scale
    original_size: tuple[int, int]  # (width, height) as stored in the file
    exif_orientation: int  # 1..8; 1 means no rotation/flip was applied
    format: str
    # (width, height) of the full-resolution image after EXIF orientation: what boxes map back to.
    # Equals image.size unless the JPEG was decoded at reduced size. None: image.size.
    oriented_size: tuple[int, int] | None = None
    # The region of `image` that shows the whole oriented image (a reduced JPEG decode can have a
    # fraction of a pixel more at one edge). None: the whole image.
    region: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.oriented_size is None:
            self.oriented_size = self.image.size


def decode_image(data: bytes, limits: LimitsConfig, target_size: TargetSize | None = None) -> DecodedImage:
    """Bytes -> RGB image with EXIF orientation applied, or a 4xx error saying what is wrong.

    With `target_size`, a JPEG is decoded at 1/2 or 1/4 scale (libjpeg's DCT scaling: much less work
    than decoding every pixel) when that still keeps DRAFT_GAP times the target size in both dimensions;
    one resize to the target follows (`fit_decoded`). Sizes that map boxes back stay those of the full
    image (`original_size`, `oriented_size`).
    """
    if not data:
        raise InvalidImageError("The request body is empty: send the image bytes.")
    if len(data) > limits.max_body_bytes:
        raise PayloadTooLargeError(f"The image is {len(data)} bytes; the limit is {limits.max_body_bytes} bytes.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            _check_declared_size(image.size, limits)
            stored_size = image.size
            image.seek(0)  # animated GIF/WebP/APNG: the first frame
            orientation = _exif_orientation(image)
            oriented_size = _oriented(stored_size, orientation)
            scale = 1
            if target_size is not None and image.format == "JPEG":
                scale = _draft(image, _oriented(target_size(oriented_size), orientation))
            image.load()
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
    region = _draft_region(stored_size, scale, orientation)
    return DecodedImage(rgb, stored_size, orientation, image.format or "unknown", oriented_size, region)


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """A (width, height) of the stored image -> of the oriented one, and back (the same swap)."""
    return (size[1], size[0]) if orientation in SWAPS_SIDES else size


def _draft(image: Image.Image, target: tuple[int, int]) -> int:
    """Ask the JPEG decoder for the largest reduction (1/2 or 1/4) that keeps both sides at least
    DRAFT_GAP times `target` (stored orientation); returns the scale denominator (1: full size)."""
    width, height = image.size
    keep_width, keep_height = (max(1, math.ceil(side * DRAFT_GAP)) for side in target)
    if min(target) < 1 or 2 * keep_width > width or 2 * keep_height > height:
        return 1
    # Pillow picks the largest s in (8, 4, 2, 1) with s <= min(width // kw, height // kh) and decodes
    # ceil(width / s) x ceil(height / s): never below what we keep. Asking for more than 1/(2 * MAX) of
    # a side caps s at MAX. Keep the mode (no colour conversion).
    keep_width = max(keep_width, width // (2 * MAX_DRAFT_SCALE) + 1)
    if image.draft(image.mode, (keep_width, keep_height)) is None:
        return 1
    # The scale that gives this size (the smallest that does: for sides >= s only one does).
    for scale in (1, 2, 4, 8):
        if image.size == (-(-width // scale), -(-height // scale)):
            return scale
    return 1


def _draft_region(
    stored_size: tuple[int, int], scale: int, orientation: int
) -> tuple[float, float, float, float] | None:
    """The box of the reduced, oriented image that covers the full image: ceil(width / scale) pixels
    show width / scale of them, the surplus being at the stored right and bottom edges, wherever
    the EXIF orientation moves those."""
    width, height = stored_size
    if scale == 1 or (width % scale == 0 and height % scale == 0):
        return None
    shown_width, shown_height = width / scale, height / scale
    extra_x, extra_y = -(-width // scale) - shown_width, -(-height // scale) - shown_height
    # Where the stored image's right and bottom surplus ends up, per orientation (as exif_transpose
    # moves them): the (left, top) offset of the covering box in the oriented image.
    offset_x, offset_y = {
        1: (0, 0),
        2: (extra_x, 0),  # mirrored: the right edge is now at the left
        3: (extra_x, extra_y),  # rotated 180
        4: (0, extra_y),  # flipped: the bottom edge is now at the top
        5: (0, 0),  # transposed: right -> bottom, bottom -> right
        6: (extra_y, 0),  # rotated 90 clockwise: bottom -> left, right -> bottom
        7: (extra_y, extra_x),  # transverse: bottom -> left, right -> top
        8: (0, extra_x),  # rotated 90 counter-clockwise: right -> top, bottom -> right
    }[orientation]
    box_width, box_height = _oriented((shown_width, shown_height), orientation)
    return (offset_x, offset_y, offset_x + box_width, offset_y + box_height)


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


def budget_size(size: tuple[int, int], factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image -> the (width, height) the model's processor resizes it to."""
    target_height, target_width = smart_resize(size[1], size[0], factor, min_pixels, max_pixels)
    return target_width, target_height


def fit_to_budget(image: Image.Image, factor: int, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize once to the model's target size, with the filter the model's own processor uses,
    so the processor's resize is then a no-op and pixels match transformers' reference path."""
    target = budget_size(image.size, factor, min_pixels, max_pixels)
    if target == image.size:
        return image
    return image.resize(target, RESAMPLE)


def fit_decoded(
    decoded: DecodedImage, factor: int, min_pixels: int, max_pixels: int, pool: Executor | None = None, bands: int = 1
) -> Image.Image:
    """fit_to_budget for a decoded image: the target comes from the full-resolution size, so an image
    decoded at reduced size gets exactly the model input size (and grid) it would have got in full.
    With a `pool`, a large resize runs as `bands` horizontal bands on its threads (resize_in_bands)."""
    target = budget_size(decoded.oriented_size, factor, min_pixels, max_pixels)
    image = decoded.image
    if target == image.size and decoded.region is None:
        return image
    if pool is not None and bands > 1 and target[0] * target[1] >= PARALLEL_MIN_PIXELS:
        return resize_in_bands(image, target, decoded.region, pool, bands)
    return image.resize(target, RESAMPLE, box=decoded.region)


def resize_in_bands(
    image: Image.Image,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None,
    pool: Executor,
    bands: int,
) -> Image.Image:
    """image.resize(size, RESAMPLE, box=box), computed as `bands` horizontal bands of the output on `pool`'s
    threads. Each band's source box is its share of `box`, and Pillow's filter still reads the rows around
    it from the whole image, so the pixels are the same up to float rounding of the band edges: a value can
    differ by 1/255 (none at 2 bands for 4000x3000 -> 2336x1760; 0.06% of them at 3 bands). That resize
    takes 128 -> 67 ms on 2 threads."""
    width, height = size
    bands = max(1, min(bands, height))
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(image.width), float(image.height))
    step = (bottom - top) / height  # source rows per output row
    edges = [height * band // bands for band in range(bands + 1)]

    def resize_band(band: int) -> Image.Image:
        first, last = edges[band], edges[band + 1]
        return image.resize((width, last - first), RESAMPLE, box=(left, top + first * step, right, top + last * step))

    resized = Image.new(image.mode, size)
    for band, part in enumerate(pool.map(resize_band, range(bands))):
        resized.paste(part, (0, edges[band]))
    return resized
