"""PDF input: page selection and rendering with pypdfium2 at a scale that fits the pixel budget.

PDFium is not thread-safe: every call into it holds one process-wide lock.
"""

from __future__ import annotations

import math
import re
import threading

from PIL import Image

from serve_app.errors import InvalidDocumentError, InvalidRequestError, PayloadTooLargeError

PDF_MAGIC = b"%PDF-"
_PAGE_RANGE = re.compile(r"([0-9]{1,6})\s*(?:-\s*([0-9]{1,6}))?")  # ASCII digits only
POINTS_PER_INCH = 72
_PDFIUM_LOCK = threading.Lock()


def is_pdf(data: bytes, content_type: str | None = None) -> bool:
    return data[:1024].lstrip().startswith(PDF_MAGIC) or (content_type or "").startswith("application/pdf")


def parse_page_selector(selector: str | None, page_count: int) -> list[int]:
    """`"1-3,7"` -> [1, 2, 3, 7] (1-based, in document order, no duplicates); None or "" -> every page."""
    if selector is None or not selector.strip():
        return list(range(1, page_count + 1))
    pages: set[int] = set()
    for part in selector.split(","):
        part = part.strip()
        match = _PAGE_RANGE.fullmatch(part)
        if match is None:
            raise InvalidRequestError(f"pages: {part!r} is not a page number or range like 1-3,7.", "pages")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first < 1 or last < first:
            raise InvalidRequestError(f"pages: {part!r} is not an increasing range of pages from 1.", "pages")
        if last > page_count:
            raise InvalidRequestError(f"pages: {part!r} is past the document's last page ({page_count}).", "pages")
        pages.update(range(first, last + 1))
    return sorted(pages)



def open_pdf(data: bytes):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        raise InvalidDocumentError(f"The PDF could not be opened (corrupt, encrypted or not a PDF): {error}") from None


def pdf_page_count(data: bytes) -> int:
    with _PDFIUM_LOCK:
        document = open_pdf(data)
        try:
            return len(document)
        finally:
            document.close()


def render_scale(width_pt: float, height_pt: float, max_pixels: int, max_dpi: int) -> float:
    """Pixels per point: the page fills the pixel budget, but never above `max_dpi`."""
    if width_pt <= 0 or height_pt <= 0:
        raise InvalidDocumentError("The PDF has a page with an empty size.")
    scale = min(max_dpi / POINTS_PER_INCH, math.sqrt(max_pixels / (width_pt * height_pt)))
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > max_pixels:
        scale *= 0.995  # PDFium rounds the bitmap's sides up
    return scale


def render_page(data: bytes, page_number: int, max_pixels: int, max_dpi: int) -> Image.Image:
    """One page (1-based) as an RGB image within `max_pixels`."""
    with _PDFIUM_LOCK:
        document = open_pdf(data)
        try:
            if not 1 <= page_number <= len(document):
                raise InvalidRequestError(f"The PDF has no page {page_number}.", "pages")
            page = document[page_number - 1]
            width_pt, height_pt = page.get_size()
            scale = render_scale(width_pt, height_pt, max_pixels, max_dpi)
            image = page.render(scale=scale, may_draw_forms=True).to_pil().convert("RGB")
            page.close()
            return image
        except InvalidRequestError:
            raise
        except Exception as error:  # pdfium rendering failures on broken pages
            raise InvalidDocumentError(f"Page {page_number} of the PDF could not be rendered: {error}") from None
        finally:
            document.close()


def check_page_count(selected: int, max_pages: int) -> None:
    if selected > max_pages:
        raise PayloadTooLargeError(
            f"{selected} pages selected; at most {max_pages} pages per request. Use `pages` (e.g. 1-{max_pages})."
        )
