"""The web UI's logic without a browser: box geometry, uploads, error messages, exports, task choice."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from PIL import Image

from serve_app.config import OCRAppConfig
from serve_app.errors import InvalidImageError, InvalidRequestError, PayloadTooLargeError, ServiceUnavailableError
from serve_app.api.schemas import OCRResponse
from serve_app.api.ui import build_ui, draw_boxes, read_upload, upright_box, write_exports
from tests.conftest import to_bytes, with_exif_orientation

RED = (255, 0, 0)


def response(task="spotting", boxes=None, orientation=1, size=(8, 5), **extra) -> OCRResponse:
    width, height = size
    oriented = (height, width) if orientation >= 5 else (width, height)
    return OCRResponse(
        id="0123456789abcdef", model="m", task=task, text="INVOICE 12345\nTOTAL 42.50", boxes=boxes,
        finish_reason="stop", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        timings_ms={"preprocess": 1.0, "encode": 2.0, "decode": 3.0, "total": 6.5, "encoder_batch_size": 1},
        image={"width": width, "height": height, "oriented_width": oriented[0], "oriented_height": oriented[1],
               "model_width": width, "model_height": height, "exif_orientation": orientation},
        **extra,
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_follow_the_exif_rotation_like_pillow(orientation):
    stored = Image.new("RGB", (8, 5), "white")
    stored.paste(RED, (2, 1, 5, 3))  # the box [2, 1, 5, 3] in stored pixels
    upright = draw_boxes(to_bytes(stored), response(orientation=orientation))  # no boxes: just the upright image
    mask = Image.new("L", upright.size, 0)
    mask.putdata([255 if pixel == RED else 0 for pixel in upright.getdata()])
    assert upright_box([2, 1, 5, 3], orientation, (8, 5)) == list(mask.getbbox())


def test_overlay_is_drawn_upright_on_an_exif_rotated_photo():
    stored = Image.new("RGB", (300, 200), "white")
    boxes = [{"text": "A", "bbox": [10, 20, 110, 60]}]
    overlay = draw_boxes(with_exif_orientation(stored, 6), response(boxes=boxes, orientation=6, size=(300, 200)))
    # Rotated 90 degrees clockwise to stand upright: the stored box lands on [140, 10, 180, 110].
    assert overlay.size == (200, 300)
    assert overlay.getpixel((179, 60)) != (255, 255, 255) and overlay.getpixel((141, 60)) != (255, 255, 255)
    assert overlay.getpixel((160, 60)) == (255, 255, 255) and overlay.getpixel((60, 160)) == (255, 255, 255)


def test_layout_regions_are_drawn_upright_and_labelled(tmp_path):
    stored = Image.new("RGB", (300, 200), "white")
    regions = [{"category": "table", "polygon": [[10, 20], [110, 20], [110, 60], [10, 60]], "text": ""}]
    layout = response(task="layout", boxes=None, orientation=6, size=(300, 200), regions=regions)
    image_bytes = with_exif_orientation(stored, 6)
    overlay = draw_boxes(image_bytes, layout)
    # The same place as the spotted box above: the stored [10, 20, 110, 60] lands on [140, 10, 180, 110].
    assert overlay.size == (200, 300)
    assert overlay.getpixel((179, 60)) != (255, 255, 255) and overlay.getpixel((141, 60)) != (255, 255, 255)
    assert overlay.getpixel((160, 60)) == (255, 255, 255) and overlay.getpixel((60, 160)) == (255, 255, 255)
    plain = draw_boxes(image_bytes, layout.model_copy(update={"regions": None}))
    # The category's label: no room above the top edge (y=10), so under the bottom one (y=110).
    label_area = [(x, y) for x in range(145, 175) for y in range(113, 125)]
    assert any(overlay.getpixel(p) != plain.getpixel(p) for p in label_area)

    async def recognize(*args):
        return layout

    _, run = handler(OCRAppConfig(), recognize)
    path = tmp_path / "page.jpg"
    path.write_bytes(image_bytes)
    outputs = asyncio.run(run({"path": str(path)}, None, "", "text", "zh", "", "English", "", 64))
    assert outputs[4]["visible"] is True and outputs[4]["value"].size == (200, 300)


def test_upload_is_read_as_sent_and_limits_apply(tmp_path):
    with pytest.raises(InvalidRequestError, match="image first"):
        read_upload(None, 100)
    path = tmp_path / "page.png"
    path.write_bytes(b"x" * 50)
    assert read_upload({"path": str(path)}, 100) == b"x" * 50
    with pytest.raises(PayloadTooLargeError) as too_large:
        read_upload({"path": str(path)}, 10)
    assert too_large.value.status_code == 413
    url = "data:image/png;base64," + base64.b64encode(b"abc").decode()
    assert read_upload({"path": None, "url": url}, 100) == b"abc"


def test_exports_hold_text_json_and_markdown():
    paths = write_exports(response(boxes=[{"text": "TOTAL | 42", "bbox": [1, 2, 3, 4]}]))
    assert [p.rsplit(".", 1)[1] for p in paths] == ["txt", "json", "md"]
    contents = [open(p, encoding="utf-8").read() for p in paths]
    assert contents[0].startswith("INVOICE 12345")
    assert json.loads(contents[1])["boxes"][0]["bbox"] == [1, 2, 3, 4]
    assert "| 1 | TOTAL \\| 42 | 1 | 2 | 3 | 4 |" in contents[2]


def handler(config: OCRAppConfig, recognize):
    blocks = build_ui(recognize, config)
    task_radio = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "ocr-task")
    run = next(fn for fn in blocks.fns.values() if fn.api_name == "recognize").fn
    return [value for _, value in task_radio.choices], run


def test_tasks_offered_are_those_of_the_model_family():
    async def recognize(*args, **kwargs):
        raise AssertionError("not called")

    lite, _ = handler(OCRAppConfig.model_validate({"model": {"family": "pp_ocr"}}), recognize)
    assert lite == ["text", "spotting"]
    vlm, _ = handler(OCRAppConfig(), recognize)
    assert "fields" in vlm and "translate" in vlm and "document" in vlm


@pytest.mark.parametrize(
    "error, title",
    [
        (InvalidImageError("The file is not an image."), "Please check the image"),
        (ServiceUnavailableError("The service is at capacity; retry shortly."), "The service is busy"),
        (RuntimeError("secret internals"), "Something went wrong"),
    ],
)
def test_errors_become_a_visible_message_without_internals(tmp_path, error, title):
    async def recognize(*args, **kwargs):
        raise error

    _, run = handler(OCRAppConfig(), recognize)
    path = tmp_path / "page.png"
    path.write_bytes(b"not an image")
    with pytest.warns(UserWarning):  # gr.Warning outside a request
        outputs = asyncio.run(run({"path": str(path)}, None, "", "text", "zh", "", "English", "", 2048))
    box = outputs[0]
    assert box["visible"] is True and title in box["value"]
    assert "secret internals" not in box["value"] and "Traceback" not in box["value"]


def test_the_original_bytes_and_options_reach_recognize(tmp_path):
    calls = []
    image_bytes = to_bytes(Image.new("RGB", (300, 200), "white"), "JPEG")

    async def recognize(*args):
        calls.append(args)
        return response(task="fields", boxes=None, size=(300, 200), fields={"total": "42.50"})

    _, run = handler(OCRAppConfig(), recognize)
    path = tmp_path / "page.jpg"
    path.write_bytes(image_bytes)
    outputs = asyncio.run(run({"path": str(path)}, None, "", "fields", "en", "company, total", "French", "  ", 64))
    assert calls == [(image_bytes, "fields", "en", ["company, total"], None, None, 64)]
    assert outputs[0]["visible"] is False
    assert outputs[3] == {"__type__": "update", "visible": True, "value": {"total": "42.50"}}
    assert outputs[7]["visible"] is True and len(outputs[7]["value"]) == 3


def test_pp_ocr_gets_no_instruction_options(tmp_path):
    calls = []

    async def recognize(*args):
        calls.append(args)
        return response(task="text", size=(300, 200))

    _, run = handler(OCRAppConfig.model_validate({"model": {"family": "pp_ocr"}}), recognize)
    path = tmp_path / "page.png"
    path.write_bytes(b"png bytes")
    outputs = asyncio.run(run({"path": str(path)}, None, "", "text", "zh", "", "English", "ignored", 2048))
    assert calls == [(b"png bytes", "text", None, None, None, None, None)]
    assert "Time (ms)" in outputs[6]


def test_a_pdf_wins_over_the_image_and_carries_the_page_selector(tmp_path):
    calls = []

    async def recognize(*args, **kwargs):
        calls.append((args, kwargs))
        return response(task="text", size=(300, 200))

    _, run = handler(OCRAppConfig.model_validate({"model": {"family": "pp_ocr"}}), recognize)
    image, pdf = tmp_path / "page.png", tmp_path / "doc.pdf"
    image.write_bytes(b"png bytes")
    pdf.write_bytes(b"%PDF-1.7 bytes")
    asyncio.run(run({"path": str(image)}, {"path": str(pdf)}, " 1-2 ", "text", "zh", "", "English", "", None))
    assert calls == [((b"%PDF-1.7 bytes", "text", None, None, None, None, None), {"pages": "1-2"})]
