"""The metric functions of bench/accuracy.py on hand-made cases."""

from __future__ import annotations

import pytest

from bench.accuracy import (
    Line,
    aggregate,
    bbox_of,
    cer,
    end_to_end,
    evaluate_image,
    iou,
    levenshtein,
    line_metrics,
    normalize_text,
    parse_response,
    read_gt,
)

GT = [
    Line("TAN WOON YANN", (72, 25, 326, 64)),
    Line("TOTAL:", (10, 100, 110, 120)),
    Line("9.00", (200, 100, 260, 120)),
]


def test_normalize_text():
    assert normalize_text("  Total \t :\n 9.00 ") == "total : 9.00"
    assert normalize_text("ÉTÉ") == normalize_text("été")


def test_levenshtein_and_cer_arithmetic():
    assert levenshtein("", "") == 0
    assert levenshtein("abc", "") == 3
    assert levenshtein("", "abcd") == 4
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abcdef", "abcxef") == 1
    assert cer("sitting", "kitten") == pytest.approx(3 / 6)
    assert cer("", "abcd") == 1.0  # everything deleted
    assert cer("abcdefgh", "abcd") == 1.0  # 4 insertions / 4
    assert cer("", "") == 0.0 and cer("x", "") == 1.0


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_perfect_match():
    pred = [Line(g.text.lower(), g.bbox) for g in GT]  # case does not count
    m = line_metrics(pred, GT)
    assert (m["matched"], m["recall"], m["precision"], m["f1"], m["line_cer"]) == (3, 1.0, 1.0, 1.0, 0.0)
    assert end_to_end("tan woon  yann\nTOTAL:\n9.00", GT)["e2e_cer"] == 0.0


def test_missed_line():
    m = line_metrics(GT[:2], GT)
    assert m["matched"] == 2 and m["recall"] == pytest.approx(2 / 3) and m["precision"] == 1.0
    assert m["line_cer"] == 0.0  # only IoU-paired lines count in the line CER
    e2e = end_to_end("TAN WOON YANN TOTAL:", GT)
    assert e2e["e2e_edits"] == 5 and e2e["e2e_chars"] == len("tan woon yann total: 9.00")


def test_wrong_text_counts_in_cer_not_in_matches():
    pred = [GT[0], Line("TOTAL :", GT[1].bbox), Line("9.O0", GT[2].bbox)]
    m = line_metrics(pred, GT)
    assert m["matched"] == 1 and m["iou_pairs"] == 3
    assert m["recall"] == pytest.approx(1 / 3) and m["precision"] == pytest.approx(1 / 3)
    assert m["line_edits"] == 2 and m["line_chars"] == 13 + 6 + 4
    assert m["line_cer"] == pytest.approx(2 / 23)


def test_iou_just_below_and_above_half():
    gt = [Line("ABC", (0, 0, 100, 10))]
    # pred (0,0,x,10) inside gt: IoU = x / 100
    assert line_metrics([Line("ABC", (0, 0, 49.9, 10))], gt)["matched"] == 0
    assert line_metrics([Line("ABC", (0, 0, 50, 10))], gt)["matched"] == 1  # exactly 0.5 matches
    below = line_metrics([Line("ABX", (0, 0, 49.9, 10))], gt)
    assert below["iou_pairs"] == 0 and below["line_cer"] is None
    above = line_metrics([Line("ABX", (0, 0, 50.1, 10))], gt)
    assert above["iou_pairs"] == 1 and above["line_cer"] == pytest.approx(1 / 3)


def test_matching_is_one_to_one():
    gt = [Line("A", (0, 0, 10, 10))]
    pred = [Line("A", (0, 0, 10, 10)), Line("A", (0, 0, 10, 9))]
    m = line_metrics(pred, gt)
    assert m["matched"] == 1 and m["recall"] == 1.0 and m["precision"] == 0.5


def test_empty_predictions():
    m = line_metrics([], GT)
    assert (m["matched"], m["recall"], m["precision"], m["f1"], m["line_cer"]) == (0, 0.0, 0.0, 0.0, None)
    assert end_to_end("", GT)["e2e_cer"] == 1.0
    both_empty = line_metrics([], [])
    assert both_empty["recall"] == 1.0 and both_empty["precision"] == 1.0
    assert line_metrics([Line("X", (0, 0, 1, 1))], [])["precision"] == 0.0


def test_no_boxes_gives_null_line_metrics_and_aggregates():
    per_image = [evaluate_image("TAN WOON YANN TOTAL: 9.00", None, GT), evaluate_image("", None, GT)]
    assert per_image[0]["recall"] is None and per_image[0]["e2e_cer"] == 0.0
    total = aggregate(per_image)
    assert total["recall"] is None and total["line_cer"] is None
    assert total["e2e_cer"] == pytest.approx(0.5) and total["e2e_cer_mean"] == pytest.approx(0.5)

    boxed = [evaluate_image("", GT, GT), evaluate_image("", GT[:1], GT)]
    total = aggregate(boxed)
    assert total["matched"] == 4 and total["recall"] == pytest.approx(4 / 6) and total["precision"] == 1.0


def test_parse_response_and_boxes():
    text, lines = parse_response({"task": "spotting", "text": "A\nB",
                                  "boxes": [{"text": "A", "bbox": [1, 2, 3, 4]},
                                            {"text": "B", "bbox": [[0, 0], [5, 0], [5, 2], [0, 2]]}]})
    assert text == "A\nB" and [l.bbox for l in lines] == [(1, 2, 3, 4), (0, 0, 5, 2)]
    assert parse_response({"text": "only text"}) == ("only text", None)
    assert bbox_of([326, 25, 72, 25, 72, 64, 326, 64]) == (72, 25, 326, 64)


def test_read_gt_keeps_commas_in_text(tmp_path):
    csv = tmp_path / "000.csv"
    csv.write_text("\ufeff110,144,383,144,383,163,110,163,NO.53 55,57 & 59, JALAN SAGU 18,\n\n")
    (line,) = read_gt(csv)
    assert line.text == "NO.53 55,57 & 59, JALAN SAGU 18," and line.bbox == (110, 144, 383, 163)
