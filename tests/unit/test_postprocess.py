"""Structured results from synthetic model outputs, on images prepared by the real Preprocessor code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from serve_app.config import OCRAppConfig
from serve_app.errors import ModelOutputError
from serve_app.results.postprocess import structure
from serve_app.stages.preprocessor import ImagePreparer
from serve_app.stage_io import DecodeResult
from serve_app.model.tasks import build_task_request
from tests.conftest import to_bytes

STORED_BLOCK = (200, 150, 600, 330)  # x1, y1, x2, y2 of a black block in the stored (unrotated) image


@pytest.fixture(scope="module")
def preparer(tiny_checkpoint):
    config = OCRAppConfig.model_validate({"model": {"min_pixels": 128 * 128, "max_pixels": 512 * 512}})
    return ImagePreparer(config, str(tiny_checkpoint))


def result(text: str, finish_reason: str = "stop") -> DecodeResult:
    return DecodeResult(text=text, token_ids=[1], prompt_tokens=10, completion_tokens=1, finish_reason=finish_reason)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_spotting_boxes_land_in_the_callers_pixels_after_resize_and_exif(preparer, orientation):
    stored = Image.new("RGB", (1600, 1200), "white")  # over the 512*512 budget: the model sees a smaller copy
    stored.paste((0, 0, 0), STORED_BLOCK)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = to_bytes(stored, "JPEG", exif=exif, quality=95)
    prepared = preparer.prepare(data, "检测并识别图片中的文字，将文本坐标格式化输出。")
    assert prepared.model_size[0] * prepared.model_size[1] <= 512 * 512

    # Where the block is in the image the model saw, as the model would write it (0..1000).
    shown = ImageOps.exif_transpose(Image.open(__import__("io").BytesIO(data))).convert("L")
    ys, xs = np.nonzero(np.asarray(shown) < 128)
    width, height = shown.size
    box = [round(xs.min() * 1000 / width), round(ys.min() * 1000 / height),
           round((xs.max() + 1) * 1000 / width), round((ys.max() + 1) * 1000 / height)]
    model_text = f"<ref>TOTAL 42.50</ref><quad>({box[0]},{box[1]}),({box[2]},{box[3]})</quad>"

    structured = structure(build_task_request("spotting"), result(model_text), prepared)
    assert structured.boxes == [{"text": "TOTAL 42.50", "bbox": pytest.approx(list(STORED_BLOCK), abs=3)}]
    assert structured.warnings == []


def test_malformed_spotting_output_is_counted_not_fatal(preparer):
    prepared = preparer.prepare(to_bytes(Image.new("RGB", (300, 200), "white")), "x")
    structured = structure(build_task_request("spotting"), result("A(1,2),(30,40)B(5,5", "length"), prepared)
    assert [box["text"] for box in structured.boxes] == ["A"]
    assert any("could not be parsed" in warning for warning in structured.warnings)
    assert any("max_tokens" in warning for warning in structured.warnings)


def test_fields_and_table_results(preparer):
    prepared = preparer.prepare(to_bytes(Image.new("RGB", (300, 200), "white")), "x")
    fields = structure(build_task_request("fields", fields=["a", "b"]), result('{"a": "1", "b": "2"}'), prepared)
    assert fields.fields == {"a": "1", "b": "2"}
    with pytest.raises(ModelOutputError, match="raise it"):
        structure(build_task_request("fields", fields=["a"]), result('{"a": "1', "length"), prepared)
    table = structure(build_task_request("table"), result("<table><tr><td>x</td><td>y</td></tr></table>"), prepared)
    assert table.rows == [["x", "y"]]
