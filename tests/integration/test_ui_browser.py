"""The web UI in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, against
the PP-OCRv6 graph served with `ui.enabled` on the session's Ray instance.

`UI_SCREENSHOT=docs/ui.png pytest tests/integration/test_ui_browser.py` also refreshes the README's
screenshot; otherwise the screenshot goes to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import render_text_page
from tests.integration.conftest import BASE_URL, ROOT

pytestmark = pytest.mark.integration

LINES = ("INVOICE 12345", "TOTAL 42.50")
UI_ROUTE = "/uilite"
# No sandbox (root in a container), no GPU, and nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RESULT_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def ui_url(served):
    """The embedded default (lite.yaml) with the UI on, as its own application next to the others."""
    from ray import serve

    from serve_app.app import build_graph
    from serve_app.config import OCRAppConfig

    lite = OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml")
    config = OCRAppConfig.model_validate({**lite.model_dump(), "ui": {"enabled": True}})
    serve.run(build_graph(config), name="ui-lite", route_prefix=UI_ROUTE)
    yield f"{BASE_URL}{UI_ROUTE}{config.ui.path}/"
    serve.delete("ui-lite")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium not found: install Debian's package with `apt-get install -y chromium`.")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, ui_url):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.goto(ui_url)
    expect(opened.locator("#ocr-submit")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    yield opened
    context.close()


def upload(page, path: Path) -> None:
    """Drop a file on the image input and wait until Gradio has stored it (the preview points at it)."""
    from playwright.sync_api import expect

    page.locator("#ocr-image input[type=file]").set_input_files(str(path))
    preview = page.locator("#ocr-image img")
    expect(preview).to_have_attribute("src", re.compile(re.escape(path.name)), timeout=RESULT_TIMEOUT_MS)


def expect_text(page, pattern: str) -> None:
    """Wait for the recognized text; on a timeout, say what the page showed instead (error, toasts, progress)."""
    from playwright.sync_api import expect

    text = page.locator("#ocr-text textarea")
    try:
        expect(text).to_have_value(re.compile(pattern), timeout=RESULT_TIMEOUT_MS)
    except AssertionError as failure:
        shown = {
            "error": page.locator("#ocr-error").inner_text() if page.locator("#ocr-error").is_visible() else None,
            "toasts": page.locator("[data-testid='toast-body']").all_inner_texts(),
            "progress": page.locator("#ocr-text .progress-text, #ocr-text .eta-bar, .wrap.default").all_inner_texts(),
            "image": page.locator("#ocr-image img").get_attribute("src") if page.locator("#ocr-image img").count() else None,
        }
        raise AssertionError(f"{failure}\nthe page showed: {shown}") from None


def test_read_then_spot_with_the_boxes_drawn(page, tmp_path):
    from playwright.sync_api import expect

    image_path = tmp_path / "invoice.png"
    render_text_page(LINES, size=(520, 220)).save(image_path)
    upload(page, image_path)

    page.locator("#ocr-submit").click()
    expect_text(page, "INVOICE 12345")
    assert page.locator("#ocr-text textarea").input_value().splitlines() == list(LINES)
    expect(page.locator("#ocr-details")).to_contain_text("PP-OCRv6-small")
    expect(page.locator("#ocr-details")).to_contain_text("decode")
    expect(page.locator("#ocr-exports")).to_contain_text(".json")
    for suffix in (".txt", ".md"):
        expect(page.locator("#ocr-exports")).to_contain_text(suffix)
    expect(page.locator("#ocr-overlay")).to_be_hidden()
    expect(page.locator("#ocr-error")).to_be_hidden()

    page.get_by_label("Text with positions (boxes)").check()
    page.locator("#ocr-submit").click()
    overlay = page.locator("#ocr-overlay img")
    expect(overlay).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
    assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [520, 220]
    table = page.locator("#ocr-boxes")
    for line in LINES:
        expect(table).to_contain_text(line)
    expect(table.get_by_role("grid")).to_have_attribute("aria-rowcount", str(len(LINES) + 1))  # + header

    screenshot = Path(os.environ.get("UI_SCREENSHOT") or tmp_path / "ui.png")
    if not screenshot.is_absolute():
        screenshot = ROOT / screenshot
    page.screenshot(path=str(screenshot), full_page=True)
    assert 0 < screenshot.stat().st_size < 300_000


def test_errors_read_as_messages_and_the_page_stays_usable(page, tmp_path):
    from playwright.sync_api import expect

    error = page.locator("#ocr-error")
    page.locator("#ocr-submit").click()  # nothing uploaded yet
    expect(error).to_contain_text("image first", timeout=RESULT_TIMEOUT_MS)

    fake = tmp_path / "notes.png"  # a text file named like an image: the preprocessor refuses it
    fake.write_text("not an image at all\n")
    upload(page, fake)
    page.locator("#ocr-submit").click()
    # This request's own message: the first one's shares its title, and a click while a request is
    # still running is dropped by Gradio, so the steps below must start after this answer arrived.
    expect(error).to_contain_text("not an image Pillow can read", timeout=RESULT_TIMEOUT_MS)
    expect(error).to_contain_text("Please check the image")
    assert "Traceback" not in page.content()

    big = tmp_path / "big.png"  # over limits.max_body_bytes (20 MiB in lite.yaml)
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024))
    page.locator("#ocr-image input[type=file]").set_input_files(str(big))
    # Refused by the UI when the upload reaches it, or by Gradio's upload itself when mounted with a
    # max_file_size: either way a message in the page.
    too_large = page.get_by_text(re.compile("The file is too large|exceed the maximum allowed size"))
    uploaded = page.locator("#ocr-image img[src*='big.png']")
    expect(uploaded.or_(too_large).first).to_be_attached(timeout=RESULT_TIMEOUT_MS)
    if uploaded.count():
        page.locator("#ocr-submit").click()
    expect(too_large.first).to_be_visible(timeout=RESULT_TIMEOUT_MS)

    text_file = tmp_path / "notes.txt"  # not an image type at all: Gradio's upload refuses it
    text_file.write_text("hello\n")
    page.locator("#ocr-image input[type=file]").set_input_files(str(text_file))
    expect(page.get_by_text("Invalid file type")).to_be_visible(timeout=RESULT_TIMEOUT_MS)

    image_path = tmp_path / "invoice.png"  # and a good image works right after
    render_text_page(LINES, size=(520, 220)).save(image_path)
    upload(page, image_path)
    page.locator("#ocr-submit").click()
    expect_text(page, "TOTAL 42.50")
    expect(error).to_be_hidden()


def test_a_click_while_a_page_is_being_read_is_kept(page, tmp_path):
    """A second image and click while the first is still read: the page ends with the second's text."""
    from playwright.sync_api import expect

    slow = tmp_path / "long.png"  # many lines: the lite graph takes a while on it
    render_text_page([f"LINE {n} OF A LONG PAGE" for n in range(24)], size=(900, 1750)).save(slow)
    quick = tmp_path / "short.png"
    render_text_page(("SECOND IMAGE 777",), size=(520, 140)).save(quick)
    upload(page, slow)
    page.locator("#ocr-submit").click()
    expect(page.locator("#ocr-text .eta-bar, #ocr-text .progress-text").first).to_be_attached(timeout=RESULT_TIMEOUT_MS)
    upload(page, quick)
    page.locator("#ocr-submit").click()
    expect_text(page, "SECOND IMAGE 777")
    expect(page.locator("#ocr-error")).to_be_hidden()


def test_a_pdf_is_read_page_by_page(page, tmp_path):
    from playwright.sync_api import expect

    pages = [render_text_page((line,), size=(612, 300)) for line in ("PAGE ONE 111", "PAGE TWO 222", "PAGE THREE 333")]
    pdf_path = tmp_path / "letter.pdf"
    pages[0].save(pdf_path, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    page.get_by_text("…or a PDF document").click()
    page.locator("#ocr-pdf input[type=file]").set_input_files(str(pdf_path))
    expect(page.locator("#ocr-pdf")).to_contain_text("letter.pdf", timeout=RESULT_TIMEOUT_MS)
    page.locator("#ocr-pages textarea, #ocr-pages input").first.fill("1,3")
    page.locator("#ocr-submit").click()
    expect_text(page, "PAGE THREE 333")
    text = page.locator("#ocr-text textarea")
    assert text.input_value().split() == "PAGE ONE 111 PAGE THREE 333".split()
    expect(page.locator("#ocr-details")).to_contain_text("Pages 2")
    expect(page.locator("#ocr-error")).to_be_hidden()
