"""PDF helpers: page selectors, render scale within the pixel budget, PDF detection and rendering."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from serve_app.inputs.documents import check_page_count, is_pdf, parse_page_selector, pdf_page_count, render_page, render_scale
from serve_app.errors import InvalidRequestError, PayloadTooLargeError


def pdf_bytes(pages: int, size=(612, 792)) -> bytes:
    images = [Image.new("RGB", size, "white") for _ in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "selector,expected",
    [(None, [1, 2, 3, 4, 5, 6, 7, 8]), ("", [1, 2, 3, 4, 5, 6, 7, 8]), ("1-3,7", [1, 2, 3, 7]),
     ("7, 1-2 ,2", [1, 2, 7]), ("8", [8]), ("3-3", [3])],
)
def test_page_selector(selector, expected):
    assert parse_page_selector(selector, 8) == expected


@pytest.mark.parametrize("selector", ["0", "9", "3-2", "1-", "a", "1,,2", "1-2-3", "-1"])
def test_bad_page_selectors_name_the_parameter(selector):
    with pytest.raises(InvalidRequestError) as raised:
        parse_page_selector(selector, 8)
    assert raised.value.param == "pages"


def test_page_limit():
    check_page_count(50, 50)
    with pytest.raises(PayloadTooLargeError, match="at most 50 pages"):
        check_page_count(51, 50)


def test_render_scale_fits_the_budget_and_caps_the_dpi():
    letter = render_scale(612, 792, max_pixels=2048 * 2048, max_dpi=200)
    assert math.ceil(612 * letter) * math.ceil(792 * letter) <= 2048 * 2048
    assert render_scale(100, 100, max_pixels=2048 * 2048, max_dpi=200) == pytest.approx(200 / 72)


def test_pdf_detection_and_rendering():
    data = pdf_bytes(3)
    assert is_pdf(data) and not is_pdf(b"\x89PNG\r\n") and is_pdf(b"xx", "application/pdf")
    assert pdf_page_count(data) == 3
    page = render_page(data, 2, max_pixels=512 * 512, max_dpi=200)
    assert page.mode == "RGB" and page.width * page.height <= 512 * 512
    assert page.height > page.width  # portrait stays portrait


def test_corrupt_pdf_is_a_clear_4xx():
    with pytest.raises(InvalidRequestError, match="could not be opened"):
        pdf_page_count(b"%PDF-1.7\n" + b"\x00garbage" * 100)
    with pytest.raises(InvalidRequestError, match="could not be opened"):
        pdf_page_count(pdf_bytes(2)[:300])
