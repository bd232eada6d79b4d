"""The embedded default (PP-OCRv6 on the same three stages) reads real text back, over both APIs."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import render_text_page, to_bytes
from tests.integration.conftest import BASE_URL, LITE_ROUTE

pytestmark = pytest.mark.integration

LINES = ("INVOICE 12345", "TOTAL 42.50")
URL = f"{BASE_URL}{LITE_ROUTE}"


def page() -> Image.Image:
    return render_text_page(LINES, size=(520, 220))


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def ink_box(image: Image.Image, top: int, bottom: int) -> list[int]:
    """Bounding box of the dark pixels between two rows (where a rendered line really is)."""
    gray = image.convert("L")
    band = gray.crop((0, top, gray.width, bottom)).point(lambda v: 255 if v < 128 else 0)
    x1, y1, x2, y2 = band.getbbox()
    return [x1, y1 + top, x2, y2 + top]


def test_text_is_read_back_in_reading_order(served):
    response = httpx.post(f"{URL}/ocr", content=to_bytes(page(), "JPEG", quality=95), timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].splitlines() == list(LINES)
    assert body["model"] == "PP-OCRv6-small"
    assert body["timings_ms"]["encode"] > 0 and body["timings_ms"]["decode"] > 0


@pytest.mark.parametrize("orientation", [1, 6])
def test_spotting_boxes_are_in_the_callers_pixels(served, orientation):
    shown = page()
    # Store the page rotated, with the EXIF tag that turns it back upright for viewing (and for OCR).
    stored = shown.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    response = httpx.post(f"{URL}/ocr", params={"task": "spotting"}, content=to_bytes(stored, "JPEG", quality=95, exif=exif), timeout=120)
    assert response.status_code == 200, response.text
    boxes = response.json()["boxes"]
    assert [box["text"] for box in boxes] == list(LINES)
    for row, box in enumerate(boxes):
        expected = ink_box(shown, 40 + 70 * row - 10, 40 + 70 * row + 50)
        if orientation == 6:  # the same ink, in the stored (rotated) image's pixels
            x1, y1, x2, y2 = expected
            expected = [y1, shown.width - x2, y2, shown.width - x1]
        assert iou(box["bbox"], expected) > 0.6, (box, expected)


def test_tasks_of_the_vision_language_model_get_a_clear_4xx(served):
    for params in ({"task": "document"}, {"task": "fields", "fields": "total"}, {"prompt": "What is the total?"}):
        response = httpx.post(f"{URL}/ocr", params=params, content=to_bytes(page()), timeout=60)
        assert response.status_code == 400, response.text
        assert "vision-language model" in response.json()["error"]["message"]


def test_chat_api_reads_the_page(served):
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
    data_url = "data:image/png;base64," + base64.b64encode(to_bytes(page())).decode()
    completion = client.chat.completions.create(
        model="PP-OCRv6-small",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                {"type": "text", "text": "Read this."}]}],
    )
    assert completion.choices[0].message.content.splitlines() == list(LINES)
