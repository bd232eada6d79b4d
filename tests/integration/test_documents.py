"""PDFs and multi-image requests through the served graph: pages fan out and come back in order."""

from __future__ import annotations

import io
import json
import sys

import httpx
import pytest
from PIL import Image

from serve_app import cli
from tests.conftest import render_text_page, to_bytes
from tests.integration.conftest import BASE_URL, LITE_ROUTE

pytestmark = pytest.mark.integration

URL = f"{BASE_URL}{LITE_ROUTE}"
WORDS = ("ALPHA 101", "BRAVO 202", "CHARLIE 303", "DELTA 404")


def text_pdf(lines: list[str]) -> bytes:
    """A PDF made here: one rendered text line per page (US letter at 72 dpi)."""
    pages = [render_text_page((line,), size=(612, 300)) for line in lines]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buffer.getvalue()


def post(content: bytes, **params) -> httpx.Response:
    return httpx.post(f"{URL}/ocr", params=params, content=content, timeout=300,
                      headers={"Content-Type": "application/pdf"})


def test_multi_page_pdf_comes_back_in_order(served):
    response = post(text_pdf(list(WORDS)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [page["page"] for page in body["pages"]] == [1, 2, 3, 4]
    assert [page["text"] for page in body["pages"]] == list(WORDS)
    assert body["text"] == "\n\n".join(WORDS)
    assert "image" not in body


def test_page_selector(served):
    body = post(text_pdf(list(WORDS)), pages="2,4").json()
    assert [(page["page"], page["text"]) for page in body["pages"]] == [(2, WORDS[1]), (4, WORDS[3])]


def test_spotting_on_a_pdf_page(served):
    page = post(text_pdf(["ECHO 505"]), task="spotting").json()["pages"][0]
    assert [box["text"] for box in page["boxes"]] == ["ECHO 505"]
    x1, y1, x2, y2 = page["boxes"][0]["bbox"]
    assert 0 <= x1 < x2 <= page["image"]["width"] and 0 <= y1 < y2 <= page["image"]["height"]


def test_page_limit_and_bad_pdfs_are_4xx(served):
    blank = Image.new("RGB", (100, 100), "white")
    buffer = io.BytesIO()
    blank.save(buffer, "PDF", save_all=True, append_images=[blank] * 50)  # 51 pages; the limit is 50
    too_many = post(buffer.getvalue())
    assert too_many.status_code == 413 and "at most 50 pages" in too_many.json()["error"]["message"]
    corrupt = post(b"%PDF-1.7\n" + b"\x00broken" * 50)
    assert corrupt.status_code == 400 and corrupt.json()["error"]["type"] == "invalid_document"
    out_of_range = post(text_pdf(["ONE"]), pages="2")
    assert out_of_range.status_code == 400 and out_of_range.json()["error"]["param"] == "pages"
    healthy = post(text_pdf(["FOXTROT 606"]))
    assert healthy.status_code == 200 and healthy.json()["text"] == "FOXTROT 606"


def test_several_images_in_one_multipart_request(served):
    files = [("file", (f"{index}.png", to_bytes(render_text_page((word,), size=(420, 120))), "image/png"))
             for index, word in enumerate(WORDS[:3])]
    response = httpx.post(f"{URL}/ocr", files=files, timeout=300)
    assert response.status_code == 200, response.text
    assert [page["text"] for page in response.json()["pages"]] == list(WORDS[:3])


def test_pdf_on_the_vision_language_graph(served):
    body = httpx.post(f"{BASE_URL}/vllm/ocr", params={"max_tokens": 4}, content=text_pdf(["A", "B"]), timeout=300).json()
    assert [page["page"] for page in body["pages"]] == [1, 2]
    assert all(page["usage"]["completion_tokens"] >= 1 for page in body["pages"])


def test_cli_reads_a_pdf_into_pages(served, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "report.pdf").write_bytes(text_pdf(["GOLF 707", "HOTEL 808"]))
    out = tmp_path / "out"
    assert cli.main([str(source), "--url", URL, "--output", str(out), "--quiet"]) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(line["page"], line["text"]) for line in lines] == [(1, "GOLF 707"), (2, "HOTEL 808")]
    markdown = (out / "report.pdf.md").read_text()
    assert "<!-- page 2 -->" in markdown and "HOTEL 808" in markdown
