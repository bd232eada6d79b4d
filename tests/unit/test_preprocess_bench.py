"""Reduced-size (draft) JPEG decoding in the Preprocessor: the same model input, sizes and boxes as a
full decode; and bench/preprocess.py runs end to end (shape of its report only, no timing assertions)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from serve_app.config import OCRAppConfig
from serve_app.inputs.images import decode_image
from serve_app.results.postprocess import structure
from serve_app.stages.preprocessor import ImagePreparer, PixelPreparer
from serve_app.stage_io import DecodeResult
from serve_app.model.tasks import build_task_request
from tests.conftest import make_image, to_bytes

ROOT = Path(__file__).resolve().parents[2]
SMALL_BUDGET = {"min_pixels": 64 * 64, "max_pixels": 256 * 256}  # 12 MP at 512*512 drafts alike, but slower
STORED_BLOCK = (500, 400, 1500, 820)


@pytest.fixture(scope="module")
def preparer(tiny_checkpoint):
    return ImagePreparer(OCRAppConfig.model_validate({"model": SMALL_BUDGET}), str(tiny_checkpoint))


def _jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return to_bytes(image, "JPEG", exif=exif, quality=92)


def _full_decode(preparer: ImagePreparer, data: bytes):
    """The path before drafting: every pixel decoded, then the same single resize and processor."""
    return preparer.prepare_decoded(decode_image(data, preparer.config.limits), "x", 0.0)


@pytest.mark.parametrize("size", [(2400, 1800), (1603, 1201), (3000, 600)])
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_prepare_drafts_to_the_same_model_input(preparer, size, orientation):
    data = _jpeg(make_image(*size), orientation)
    drafted = decode_image(data, preparer.config.limits, target_size=preparer.model_size_for)
    assert drafted.image.width < drafted.oriented_size[0]  # these sizes do get decoded at reduced size

    new, old = preparer.prepare(data, "x"), _full_decode(preparer, data)
    assert new.original_size == old.original_size == size
    assert new.oriented_size == old.oriented_size == (size[::-1] if orientation in (6, 8) else size)
    assert new.model_size == old.model_size
    assert new.exif_orientation == old.exif_orientation == orientation
    np.testing.assert_array_equal(new.image_grid_thw, old.image_grid_thw)
    assert new.pixels.shape == old.pixels.shape
    # 8-bit patches: a small mean difference, in 0..255 levels
    assert np.abs(new.pixels.astype(np.float32) - old.pixels).mean() < 1.5


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_spotting_boxes_of_a_drafted_jpeg_land_in_the_callers_pixels(preparer, orientation):
    stored = Image.new("RGB", (2400, 1800), "white")
    stored.paste((0, 0, 0), STORED_BLOCK)
    data = _jpeg(stored, orientation)
    prepared = preparer.prepare(data, "x")
    drafted = decode_image(data, preparer.config.limits, target_size=preparer.model_size_for)
    assert drafted.image.width < drafted.oriented_size[0]

    # The block where the model would see it (0..1000 of the oriented image) -> stored pixels.
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L")
    ys, xs = np.nonzero(np.asarray(shown) < 128)
    width, height = shown.size
    box = [round(xs.min() * 1000 / width), round(ys.min() * 1000 / height),
           round((xs.max() + 1) * 1000 / width), round((ys.max() + 1) * 1000 / height)]
    text = f"<ref>TOTAL</ref><quad>({box[0]},{box[1]}),({box[2]},{box[3]})</quad>"
    result = DecodeResult(text=text, token_ids=[1], prompt_tokens=1, completion_tokens=1, finish_reason="stop")
    structured = structure(build_task_request("spotting"), result, prepared)
    assert structured.boxes == [{"text": "TOTAL", "bbox": pytest.approx(list(STORED_BLOCK), abs=3)}]


def test_png_is_prepared_as_before(preparer):
    data = to_bytes(make_image(2400, 1800))
    new, old = preparer.prepare(data, "x"), _full_decode(preparer, data)
    np.testing.assert_array_equal(new.pixels, old.pixels)
    assert (new.original_size, new.oriented_size, new.model_size) == (old.original_size, old.oriented_size, old.model_size)


def test_pixel_preparer_keeps_full_pixels():
    # PP-OCR's detector boxes are in pixels of what it gets: no reduced decode there.
    prepared = PixelPreparer(OCRAppConfig()).prepare(_jpeg(make_image(2400, 1800), 6), "")
    assert prepared.pixels.shape == (2400, 1800, 3) and prepared.normalization is None
    assert prepared.oriented_size == prepared.model_size == (1800, 2400)
    assert prepared.original_size == (2400, 1800)


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", ROOT / "bench" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_and_writes_its_report(tiny_checkpoint, tmp_path):
    out = tmp_path / "preprocess.json"
    report = _load_bench().main(
        ["--runs", "1", "--megapixels", "0.6", "--out", str(out), "--checkpoint", str(tiny_checkpoint)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["image"]["size"] == [895, 671] and report["image"]["jpeg_bytes"] > 0
    assert set(report["budgets"]) == {"real", "cpu"}
    for entry in report["budgets"].values():
        assert all(value > 0 for value in entry["median_ms"].values())
        assert all(value >= 0 for value in entry["median_cpu_ms"].values())
        assert all(value > 0 for value in entry["speedup"].values())
        assert all(value > 0 for value in entry["cpu_speedup"].values())
        assert all(len(runs) == 1 for runs in entry["runs_ms"].values())
        assert all(len(runs) == 1 for runs in entry["runs_cpu_ms"].values())
        quality = entry["quality"]
        assert quality["same_shape"] and quality["same_grid"] and quality["same_sizes"]
        assert quality["pixel_values_mean_abs_diff"] >= 0
        assert quality["identical"] or quality["rgb_psnr_db"] > 30
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0
