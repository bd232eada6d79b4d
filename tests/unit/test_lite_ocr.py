"""The PP-OCRv6 pipeline of serve_app.model.lite_ocr on text rendered with a TrueType font (models from the rapidocr wheel)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serve_app.model.lite_ocr import (
    CLS_MODEL,
    DET_MODEL,
    REC_MODEL,
    TextDetector,
    TextRecognizer,
    assemble_lines,
    quad_to_bbox,
)
from tests.conftest import render_text_page

LINES = ("INVOICE 12345", "TOTAL 42.50")


def render(lines, size=(480, 200), fg=(20, 20, 20), bg=(255, 255, 255)) -> np.ndarray:
    """An RGB uint8 page with one text line every 70 px."""
    return np.array(render_text_page(lines, size, fg, bg))


@pytest.fixture(scope="module")
def detector() -> TextDetector:
    return TextDetector(num_threads=2)


@pytest.fixture(scope="module")
def recognizer() -> TextRecognizer:
    return TextRecognizer(num_threads=2)


def test_models_are_bundled_in_the_wheel():
    for path in (DET_MODEL, REC_MODEL, CLS_MODEL):
        assert path.is_file() and path.stat().st_size > 100_000, path


def test_two_lines_detected_in_order_and_read_back(detector, recognizer):
    page = render(LINES)
    regions = detector.detect(page)
    assert len(regions) == 2
    top = [float(r.quad[:, 1].min()) for r in regions]
    assert top[0] < top[1]  # reading order: top to bottom
    for region in regions:
        assert region.quad.shape == (4, 2) and region.quad.dtype == np.float32
        assert region.crop.dtype == np.uint8 and region.crop.ndim == 3 and region.crop.shape[2] == 3
        assert 0.0 < region.detection_score <= 1.0 and region.angle == 0
    x1, y1, x2, y2 = quad_to_bbox(regions[0].quad)
    assert 20 <= x1 < 40 and 30 <= y1 < 50 and 200 < x2 < 320 and 60 < y2 < 90  # where it was drawn

    results = recognizer.recognize([r.crop for r in regions])
    assert [text for text, _ in results] == list(LINES)
    assert all(score > 0.8 for _, score in results)
    lines = assemble_lines(regions, results)
    assert [line.text for line in lines] == list(LINES)


def test_rgb_convention_matches_rapidocr_on_a_colour_image(detector, recognizer):
    """Coloured text, where channel order matters: crops come back RGB, and our RGB->BGR conversion gives
    exactly what rapidocr.RapidOCR() computes from the same picture (which it converts to BGR itself)."""
    from rapidocr import RapidOCR

    page = render(LINES, fg=(200, 30, 30), bg=(240, 240, 120))  # red on yellow
    regions = detector.detect(page)
    background = regions[0].crop[0, :].reshape(-1, 3).mean(axis=0)
    assert background[0] > 200 and background[2] < 160  # yellow in RGB order (BGR would read 120, ..., 240)

    lines = assemble_lines(regions, recognizer.recognize([r.crop for r in regions]))
    reference = RapidOCR(params={"Global.log_level": "warning"})(Image.fromarray(page))
    assert [line.text for line in lines] == list(reference.txts)
    np.testing.assert_allclose([line.score for line in lines], reference.scores, atol=1e-5)
    np.testing.assert_allclose(np.stack([line.quad for line in lines]), reference.boxes, atol=1e-3)


def test_upside_down_text_is_turned_upright(detector, recognizer):
    page = np.ascontiguousarray(np.rot90(render(LINES[:1], size=(480, 110)), 2))
    regions = detector.detect(page)
    assert regions and all(region.angle == 180 for region in regions)
    texts = [text for text, _ in recognizer.recognize([r.crop for r in regions])]
    words = " ".join(texts).split()
    assert "12345" in words and any(word.startswith("INVOICE") for word in words), texts


def test_blank_page_has_no_regions(detector, recognizer):
    assert detector.detect(np.full((200, 300, 3), 255, dtype=np.uint8)) == []
    assert recognizer.recognize([]) == []
    assert assemble_lines([], []) == []


def test_inputs_are_checked(detector, recognizer):
    with pytest.raises(ValueError):
        detector.detect(np.zeros((20, 30), dtype=np.uint8))  # grayscale
    with pytest.raises(ValueError):
        detector.detect(np.zeros((20, 30, 4), dtype=np.uint8))  # RGBA
    with pytest.raises(ValueError):
        recognizer.recognize([np.zeros((20, 30, 3), dtype=np.float32)])


def test_assemble_lines_drops_what_rapidocr_drops(detector):
    regions = detector.detect(render(LINES))
    lines = assemble_lines(regions, [("  ", 0.99), ("TOTAL 42.50", 0.4)])
    assert lines == []  # blank text, then confidence below rapidocr's text_score 0.5
    with pytest.raises(ValueError):
        assemble_lines(regions, [("x", 1.0)])


def test_sleeping_threads_read_the_same_as_spinning_ones(detector, recognizer):
    """model.thread_spinning off (the default): onnxruntime's idle threads sleep instead of spin-waiting, with the
    sessions' other options as rapidocr sets them; the same regions and text come back."""
    sleeping_detector, sleeping_recognizer = TextDetector(num_threads=2, spinning=False), TextRecognizer(2, spinning=False)
    for component in (sleeping_detector._det, sleeping_detector._cls, sleeping_recognizer._rec):
        options = component.session.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == 2
    assert detector._det.session.session.get_session_options().intra_op_num_threads == 2
    page = render(LINES)
    spinning_regions, sleeping_regions = detector.detect(page), sleeping_detector.detect(page)
    assert [r.quad.tolist() for r in sleeping_regions] == [r.quad.tolist() for r in spinning_regions]
    crops = [region.crop for region in sleeping_regions]
    assert sleeping_recognizer.recognize(crops) == recognizer.recognize(crops)
