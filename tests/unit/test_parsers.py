"""Parsers on real-looking model outputs, malformed ones included; box mapping through resize and EXIF."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from serve_app.results.parsers import (
    FieldsParseError,
    parse_fields,
    parse_spotting,
    parse_table_rows,
    to_caller_pixels,
)
from serve_app.results.repetition import clean_repeated_tail, repeated_tail

SPOTTING_TAGGED = (
    "<ref>INVOICE</ref><quad>(102,35),(398,80)</quad>"
    "<ref>Total (USD) 42.50</ref><quad>(110,850),(705,901)</quad>"
    "<ref>谢谢惠顾</ref><quad>(300,930),(700,980)</quad>"
)
SPOTTING_PLAIN = "INVOICE(102,35),(398,80)\nTotal (USD) 42.50(110,850),(705,901)\n谢谢惠顾(300,930),(700,980)"


@pytest.mark.parametrize("model_text", [SPOTTING_TAGGED, SPOTTING_PLAIN])
def test_spotting_items_with_and_without_tags(model_text):
    result = parse_spotting(model_text)
    assert [item.text for item in result.items] == ["INVOICE", "Total (USD) 42.50", "谢谢惠顾"]
    assert result.items[1].box == (110, 850, 705, 901)
    assert result.malformed == 0


def test_spotting_skips_and_counts_malformed_items():
    text = (
        "GOOD(10,10),(200,40)"
        "(5,5),(9,9)"  # no text
        "OUT OF RANGE(10,10),(1200,40)"
        "INVERTED(300,40),(100,10)"
        "ALSO GOOD(10,50),(200,80)"
        "TRUNCATED(10,9"  # cut by max_tokens
    )
    result = parse_spotting(text)
    assert [item.text for item in result.items] == ["GOOD", "ALSO GOOD"]
    assert result.malformed == 4


def test_spotting_on_garbage_never_raises():
    for text in ["", "(((", "no boxes at all", "(1,2),(3,", "\x00\ufffd" * 50]:
        result = parse_spotting(text)
        assert result.items == []


def test_box_maps_back_through_the_resize():
    # The model saw a resized copy; 0..1000 coordinates scale to the caller's pixels.
    assert to_caller_pixels((100, 200, 500, 1000), (640, 480), (640, 480), 1) == [64, 96, 320, 480]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_box_maps_back_through_every_exif_orientation(orientation):
    # A black block at a known place of the stored image; find it in the image the model sees
    # (EXIF applied), express it as 0..1000, map back: it lands where it was stored.
    stored = Image.new("RGB", (400, 300), "white")
    stored.paste((0, 0, 0), (40, 30, 120, 90))
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    shown = ImageOps.exif_transpose(stored)
    ys, xs = np.nonzero(np.asarray(shown.convert("L")) < 128)
    width, height = shown.size
    box = (
        round(xs.min() * 1000 / width),
        round(ys.min() * 1000 / height),
        round((xs.max() + 1) * 1000 / width),
        round((ys.max() + 1) * 1000 / height),
    )
    mapped = to_caller_pixels(box, shown.size, stored.size, orientation)
    assert mapped == pytest.approx([40, 30, 120, 90], abs=1)


def test_fields_json_with_exact_keys():
    assert parse_fields('{"company": "ACME", "total": "42.50", "extra": 1}', ("company", "total", "date")) == {
        "company": "ACME",
        "total": "42.50",
        "date": None,
    }
    assert parse_fields('```json\n{"a": "1"}\n```', ("a",)) == {"a": "1"}


@pytest.mark.parametrize("bad", ['{"a": "1"', "not json", '["a"]', ""])
def test_fields_invalid_json_is_a_clear_error(bad):
    with pytest.raises(FieldsParseError):
        parse_fields(bad, ("a",))


def test_table_rows_from_model_html():
    html = (
        "<table><tr><th>Item</th><th>Qty</th></tr>"
        "<tr><td>Tea &amp; milk</td><td>2</td></tr><tr><td colspan='2'> Total  3 </td></tr></table>"
    )
    assert parse_table_rows(html) == [["Item", "Qty"], ["Tea & milk", "2"], ["Total 3"]]


def test_table_rows_absent_without_a_table():
    assert parse_table_rows("just text") is None
    assert parse_table_rows("<table></table>") is None
    assert parse_table_rows("<table><tr><td>cut") is None or parse_table_rows("<table><tr><td>cut") == []


def test_repeated_tail_detection_on_tokens():
    looping = [5, 6, 7] + [1, 2, 3] * 10
    assert repeated_tail(looping, min_repeats=8, max_period=8, min_span=16) == (3, 10)
    assert repeated_tail([1, 2, 3, 4, 5, 6] * 2, min_repeats=8, max_period=8, min_span=4) is None
    assert repeated_tail([9] * 10, min_repeats=8, max_period=8, min_span=16) is None  # too short a span


def test_clean_repeated_tail_keeps_one_copy_even_if_the_last_is_cut():
    text = "Total 42.50\n" + "1. 1. " * 20 + "1."
    cleaned, changed = clean_repeated_tail(text, min_repeats=8, max_period=64, min_span=32)
    # One copy of the looping block is kept (its phase may differ: " 1." or "1. ").
    assert changed and cleaned.startswith("Total 42.50\n1.") and cleaned.count("1.") <= 2
    assert clean_repeated_tail("A normal receipt line.", 8, 64, 32) == ("A normal receipt line.", False)
