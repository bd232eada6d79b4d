"""The Preprocessor's model input is HunYuanVL's image processor output: same pixel_values (to float32
rounding) and grid, from the 8-bit patches normalised and from the whole prepare path (8-bit patches, normalised as
the VisionEncoder does)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from serve_app.config import OCRAppConfig
from serve_app.model.hunyuan_vl import image_to_patch_pixels
from serve_app.inputs.images import PARALLEL_MIN_PIXELS
from serve_app.stages.preprocessor import ImagePreparer
from serve_app.stage_io import PixelNormalization
from tests.conftest import make_image, to_bytes

BUDGET = {"min_pixels": 64 * 64, "max_pixels": 512 * 512}


@pytest.fixture(scope="module")
def image_processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint, backend="pil").image_processor


def _reference(image_processor, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    size = {"shortest_edge": BUDGET["min_pixels"], "longest_edge": BUDGET["max_pixels"]}
    features = image_processor(images=[image], size=size, return_tensors="np")
    return features["pixel_values"], features["image_grid_thw"][0]


def image_to_patches(image: Image.Image, image_processor) -> tuple[np.ndarray, np.ndarray]:
    """The float32 pixel_values the VisionEncoder feeds the tower: 8-bit patches, normalised in numpy."""
    patches, grid = image_to_patch_pixels(image, image_processor)
    return PixelNormalization.of(image_processor).apply(patches), grid


# Sizes already on the model input grid and within the budget, as the stage hands them over.
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (576, 416), (160, 1024)])
def test_patches_match_the_image_processor(image_processor, size):
    rng = np.random.default_rng(size[0] * size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected_pixels, expected_grid = _reference(image_processor, image)
    pixel_values, grid = image_to_patches(image, image_processor)
    np.testing.assert_array_equal(grid, expected_grid)
    assert pixel_values.dtype == np.float32 and pixel_values.flags.c_contiguous
    np.testing.assert_allclose(pixel_values, expected_pixels, rtol=0, atol=2e-6)


def test_patch_order_is_raster_and_channel_major(image_processor):
    # One distinct colour per 16x16 patch: patch i of the output must be the i-th patch in reading order.
    grid_h, grid_w = 2, 4
    image = np.zeros((16 * grid_h, 16 * grid_w, 3), np.uint8)
    for row in range(grid_h):
        for col in range(grid_w):
            image[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = (row * grid_w + col, 100, 200)
    pixel_values, grid = image_to_patches(Image.fromarray(image), image_processor)
    assert grid.tolist() == [1, grid_h, grid_w]
    red = pixel_values[:, :256]  # channel-major: the first 16*16 values of a patch are its red channel
    scale, offset = 1 / 255 / image_processor.image_std[0], -image_processor.image_mean[0] / image_processor.image_std[0]
    np.testing.assert_allclose(red[:, 0], np.arange(grid_h * grid_w) * scale + offset, atol=1e-5)
    assert np.ptp(red, axis=1).max() < 1e-6  # each patch is one colour


def test_sizes_off_the_patch_grid_are_refused(image_processor):
    with pytest.raises(ValueError, match="multiple of 32"):
        image_to_patches(Image.new("RGB", (48, 32)), image_processor)


def test_prepare_gives_the_processors_model_input(tiny_checkpoint, image_processor):
    # The whole stage (decode, one resize, patches) against transformers' own path on the decoded image.
    preparer = ImagePreparer(OCRAppConfig.model_validate({"model": BUDGET}), str(tiny_checkpoint))
    page = make_image(900, 700)
    prepared = preparer.prepare(to_bytes(page), "x")
    expected_pixels, expected_grid = _reference(image_processor, page)
    np.testing.assert_array_equal(prepared.image_grid_thw, expected_grid)
    assert prepared.pixels.dtype == np.uint8 and prepared.pixels.shape == expected_pixels.shape
    np.testing.assert_allclose(prepared.normalization.apply(prepared.pixels), expected_pixels, rtol=0, atol=2e-6)


def test_prepare_with_image_threads_gives_the_same_model_input(tiny_checkpoint, image_processor):
    # A photo whose model input is over 1 MP takes the banded path with threads; one thread must agree.
    budget = {"min_pixels": 512 * 512, "max_pixels": 1536 * 1536}
    data = to_bytes(make_image(2400, 1800), "JPEG", quality=90)
    prepared = {}
    for threads in (1, 2):
        config = OCRAppConfig.model_validate({"model": budget, "preprocessor": {"image_threads": threads}})
        prepared[threads] = ImagePreparer(config, str(tiny_checkpoint)).prepare(data, "x")
    assert prepared[2].model_size[0] * prepared[2].model_size[1] >= PARALLEL_MIN_PIXELS
    np.testing.assert_array_equal(prepared[2].image_grid_thw, prepared[1].image_grid_thw)
    # At most one level of 255 apart (the banded resize's rounding, tests/unit/test_images.py), on few values.
    diff = np.abs(prepared[2].pixels.astype(np.int16) - prepared[1].pixels)
    assert diff.max() <= 1
    assert np.count_nonzero(diff) / diff.size < 1e-3


def test_patch_pixels_are_the_processors_values_before_normalisation(image_processor):
    # What the Preprocessor hands over: a quarter of the bytes, and exactly image_to_patches once normalised,
    # in numpy (the reference) and in torch (the VisionEncoder's way).
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (416, 576, 3), dtype=np.uint8))
    patches, grid = image_to_patch_pixels(image, image_processor)
    pixel_values, same_grid = image_to_patches(image, image_processor)
    np.testing.assert_array_equal(grid, same_grid)
    assert patches.dtype == np.uint8 and patches.shape == pixel_values.shape
    assert patches.nbytes * 4 == pixel_values.nbytes
    normalization = PixelNormalization.of(image_processor)
    np.testing.assert_array_equal(normalization.apply(patches), pixel_values)
    np.testing.assert_array_equal(normalization.apply_torch(torch.from_numpy(patches)).numpy(), pixel_values)
