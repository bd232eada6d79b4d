"""Parsers on real-looking model outputs, malformed ones included; box and polygon mapping through resize and EXIF."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from serve_app.results.parsers import (
    FieldsParseError,
    LayoutRegion,
    normalize_layout_category,
    parse_fields,
    parse_layout,
    parse_spotting,
    parse_table_rows,
    to_caller_pixels,
    to_caller_polygon,
)

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


SPOTTING_POSITION_TOKENS = (
    "<quad><pos_102><pos_35><pos_398><pos_80></quad><ref>INVOICE</ref>"
    "<quad><pos_110><pos_850><pos_705><pos_901></quad><ref>Total (USD) 42.50</ref>"
    "<quad><pos_300><pos_930><pos_700><pos_980></quad><ref>谢谢惠顾</ref>"
)
SPOTTING_JSON = (
    '[{"box": [102, 35, 398, 80], "text": "INVOICE"}, {"bbox": [110, 850, 705, 901], "text": "Total (USD) 42.50"},\n'
    ' {"box": [300, 930, 700, 980], "text": "谢谢惠顾"}]'
)


@pytest.mark.parametrize(
    "model_text",
    [
        SPOTTING_POSITION_TOKENS,
        re.sub(r"</?(?:quad|ref)>", "", SPOTTING_POSITION_TOKENS),
        SPOTTING_JSON,
        f"```json\n{SPOTTING_JSON}\n```",
        f"  ```\n{SPOTTING_JSON}```  ",
    ],
    ids=["format2", "format2-untagged", "json", "json-fenced", "json-plain-fence"],
)
def test_spotting_position_tokens_and_json(model_text):
    result = parse_spotting(model_text)
    assert [item.text for item in result.items] == ["INVOICE", "Total (USD) 42.50", "谢谢惠顾"]
    assert [item.box for item in result.items] == [(102, 35, 398, 80), (110, 850, 705, 901), (300, 930, 700, 980)]
    assert result.malformed == 0


@pytest.mark.parametrize(
    "model_text, texts",
    [
        ("ATLANTA (AP) Second(1,2),(3,4)", ["ATLANTA (AP) Second"]),
        ("金额(小写)(10,10),(200,40)合计 (A)(10,50),(200,80)", ["金额(小写)", "合计 (A)"]),
        ("<ref>f(x) = (a, b)</ref><quad>(1,2),(3,4)</quad>", ["f(x) = (a, b)"]),
        ("Hello( 1 , 2 ) , ( 3 , 4 )", ["Hello"]),
    ],
)
def test_spotting_text_with_parentheses_keeps_its_text(model_text, texts):
    result = parse_spotting(model_text)
    assert [item.text for item in result.items] == texts
    assert result.malformed == 0


def test_spotting_position_tokens_malformed_items():
    good = "<quad><pos_1><pos_2><pos_3><pos_4></quad><ref>GOOD</ref>"
    text = (
        good
        + "<quad><pos_1><pos_2><pos_1200><pos_4></quad><ref>OUT OF RANGE</ref>"
        + "<quad><pos_30><pos_2><pos_3><pos_4></quad><ref>INVERTED</ref>"
        + "<quad><pos_1><pos_2><pos_3><pos_4></quad><ref> </ref>"  # no text
        + good
        + "<quad><pos_1><pos_2>"  # cut by max_tokens
    )
    result = parse_spotting(text)
    assert [item.text for item in result.items] == ["GOOD", "GOOD"]
    assert result.malformed == 4
    cut_text = parse_spotting(good + "<quad><pos_1><pos_2><pos_3><pos_4></quad><ref>HEL")
    assert [item.text for item in cut_text.items] == ["GOOD"] and cut_text.malformed == 1
    huge = parse_spotting("<quad><pos_" + "9" * 5000 + "><pos_1><pos_2><pos_3></quad><ref>X</ref>" + good)
    assert [item.text for item in huge.items] == ["GOOD"] and huge.malformed == 1
    debris = parse_spotting("stray " + good + "<ref>A</ref> junk")
    assert [item.text for item in debris.items] == ["GOOD"] and debris.malformed == 2


def test_spotting_json_malformed_items():
    text = (
        '[{"box": [10, 10, 200, 40], "text": "GOOD"},'
        ' {"box": [10, 10, 1200, 40], "text": "OUT OF RANGE"},'
        ' {"box": [300, 40, 100, 10], "text": "INVERTED"},'
        ' {"box": [10, 10, 200, 40], "text": "  "},'
        ' {"box": [10, 10, 200], "text": "THREE NUMBERS"},'
        ' {"text": "NO BOX"},'
        ' {"box": [true, 1, 2, 3], "text": "BOOL"},'
        ' {"box": ["1", "2", "3", "x"], "text": "NOT A NUMBER"},'
        ' "not an object",'
        ' {"box": [10.7, 50, 200, 80.2], "text": 42}]'
    )
    result = parse_spotting(text)
    assert [(item.text, item.box) for item in result.items] == [("GOOD", (10, 10, 200, 40)), ("42", (10, 50, 200, 80))]
    assert result.malformed == 8


@pytest.mark.parametrize(
    "model_text, texts, malformed",
    [
        ('[{"box": [1, 2, 3, 4], "text": "A"}, {"box": [5, 6', ["A"], 1),  # cut by max_tokens
        ('```json\n[{"box": [1, 2, 3, 4], "text": "A"},\n{"box": [1, 2, 3, 4], "text": "B"},\n', ["A", "B"], 1),
        ('[{"box": [1, 2, 3, 4], "text": "A"} {"box": [1, 2, 3, 4], "text": "B"}]', ["A"], 1),  # no comma
        ('[{"box": [1, 2, 3, 4], "text": "A"}] and some chatter', ["A"], 1),
        ('[{"box": [1, 2, 3, 4], "text": "A\\u00e9"}]', ["Aé"], 0),
        ("[]", [], 0),
        ('[{"box": [1, 2, 3, 4], "text": "A"},\n]', ["A"], 0),  # a trailing comma
        ('[{"box": [1, 2, 3, ', [], 1),
    ],
)
def test_spotting_json_truncated_keeps_complete_items(model_text, texts, malformed):
    result = parse_spotting(model_text)
    assert [item.text for item in result.items] == texts
    assert result.malformed == malformed


def test_spotting_huge_numbers_are_bounded():
    digits = "9" * 100_000
    for text in (
        f'[{{"box": [1, 2, 3, {digits}], "text": "A"}}, {{"box": [1, 2, 3, 4], "text": "B"}}]',
        f'[{{"box": [1, 2, 3, {digits}.5e3], "text": "A"}}, {{"box": [1, 2, 3, 4], "text": "B"}}]',
        f"A(1,2),(3,{digits})B(1,2),(3,4)",
    ):
        result = parse_spotting(text)
        assert [item.text for item in result.items][-1].endswith("B")
        assert result.malformed == (1 if text.startswith("[") else 0)  # format3: the bad tail joins B's text


@pytest.mark.parametrize(
    "garbage",
    ["[{", "[{" * 50_000, "```json", "```json\n[", "<pos_", "<quad><pos_1>", '[{"box": NaN}]', "[" * 10_000,
     '[{"box": [1e999, 1, 2, 3], "text": "A"}]', "\ud800((", None],
)
def test_spotting_garbage_never_raises(garbage):
    result = parse_spotting(garbage)
    assert result.items == [] and result.malformed >= 0


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


def test_polygon_maps_back_through_the_resize_and_clamps():
    points = [(100, 200), (500, 200), (500, 1000), (100, 1000)]
    assert to_caller_polygon(points, (640, 480), (640, 480), 1) == [[64, 96], [320, 96], [320, 480], [64, 480]]
    # the polygon's bounding box is the box `to_caller_pixels` gives for the same corners
    assert to_caller_polygon([(0, 0), (1000, 1000)], (641, 479), (641, 479), 1) == [[0, 0], [641, 479]]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_polygon_maps_back_through_every_exif_orientation(orientation):
    stored = Image.new("RGB", (400, 300), "white")
    stored.paste((0, 0, 0), (40, 30, 120, 90))
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    shown = ImageOps.exif_transpose(stored)
    ys, xs = np.nonzero(np.asarray(shown.convert("L")) < 128)
    width, height = shown.size
    x1, y1 = round(xs.min() * 1000 / width), round(ys.min() * 1000 / height)
    x2, y2 = round((xs.max() + 1) * 1000 / width), round((ys.max() + 1) * 1000 / height)
    polygon = to_caller_polygon([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], shown.size, stored.size, orientation)
    assert len(polygon) == 4
    xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
    mapped = [min(xs), min(ys), max(xs), max(ys)]
    assert mapped == pytest.approx([40, 30, 120, 90], abs=1)
    assert mapped == to_caller_pixels((x1, y1, x2, y2), shown.size, stored.size, orientation)


LAYOUT_HY_META = (
    "# 年度报告<hy-meta><layout>Section-Title</layout><poly>(100,50),(900,50),(900,90),(100,90)</poly></hy-meta>\n\n"
    "正文 (第一段) 内容。<hy-meta><layout>paragraph</layout><poly>(100,100),(900,100),(900,300),(100,300)</poly></hy-meta>\n\n"
    "<table><tr><td>1</td></tr></table><hy-meta><layout>table</layout><quad>(100,320),(900,600)</quad></hy-meta>\n\n"
    "<hy-meta><layout>page_footer</layout><poly>(400,950),(600,950),(600,980),(400,980)</poly></hy-meta>"
)


def test_layout_hy_meta_regions_in_reading_order():
    result = parse_layout(LAYOUT_HY_META)
    assert result.malformed == 0
    assert result.items == [
        LayoutRegion("section_title", [(100, 50), (900, 50), (900, 90), (100, 90)], "# 年度报告"),
        LayoutRegion("paragraph", [(100, 100), (900, 100), (900, 300), (100, 300)], "正文 (第一段) 内容。"),
        # a 2-point quad is a box: its four corners; the region's text may hold HTML
        LayoutRegion("table", [(100, 320), (900, 320), (900, 600), (100, 600)], "<table><tr><td>1</td></tr></table>"),
        LayoutRegion("footer", [(400, 950), (600, 950), (600, 980), (400, 980)], ""),
    ]


def test_layout_plain_layout_task_has_empty_texts_and_polygons_of_more_points():
    text = (
        "<hy-meta><layout>figure</layout><poly>(1,2),(30,2),(40,20),(30,40),(1,40)</poly></hy-meta>"
        "<hy-meta><layout>figure_title</layout><quad>(1,50),(40,60)</quad></hy-meta>"
    )
    result = parse_layout(text)
    assert [(r.category, len(r.polygon), r.text) for r in result.items] == [("figure", 5, ""), ("figure_title", 4, "")]
    assert result.malformed == 0


def test_layout_hy_meta_malformed_regions():
    poly = "<poly>(1,2),(30,2),(30,40),(1,40)</poly>"
    text = (
        f"A<hy-meta><layout>paragraph</layout>{poly}</hy-meta>"
        "B<hy-meta><layout>paragraph</layout><poly>(1,2),(30,2),(30,40)</poly></hy-meta>"  # three points
        "C<hy-meta><layout>paragraph</layout><poly>(1,2),(1300,2),(30,40),(1,40)</poly></hy-meta>"  # out of range
        "D<hy-meta><layout>paragraph</layout><quad>(30,2),(1,40)</quad></hy-meta>"  # inverted box
        "E<hy-meta><layout> </layout>" + poly + "</hy-meta>"  # no category
        "F<hy-meta><layout>paragraph</layout><poly>(1,2),(" + "9" * 5000 + ",2),(30,40),(1,40)</poly></hy-meta>"
        "G<hy-meta><layout>para</layout>(1,2)</hy-meta>"  # garbled tags: joins nothing
        f"H<hy-meta><layout>paragraph</layout>{poly}</hy-meta>"
        "I<hy-meta><layout>para"  # cut by max_tokens
    )
    result = parse_layout(text)
    assert [(r.text, r.category) for r in result.items] == [("A", "paragraph"), ("H", "paragraph")]
    assert result.malformed == 7
    tail = parse_layout(f"A<hy-meta><layout>paragraph</layout>{poly}</hy-meta>\n\nThe next paragraph, cut")
    assert len(tail.items) == 1 and tail.malformed == 1


def test_layout_json_forms():
    text = (
        '```json\n[{"layout_type": "Title", "bbox": "(100,50),(900,50),(900,90),(100,90)", "text": " 报告 "},\n'
        ' {"layout_type": "figure", "bbox": "[[1,2],[30,2],[30,40],[1,40]]"},\n'
        ' {"layout_type": "chart-title", "bbox": [[1, 50], [40, 50], [40, 60], [1, 60]], "text": 7},\n'
        ' {"layout_type": "table", "bbox": [100, 320, 900, 600]}]\n```'
    )
    result = parse_layout(text)
    assert result.malformed == 0
    assert result.items == [
        LayoutRegion("section_title", [(100, 50), (900, 50), (900, 90), (100, 90)], "报告"),
        LayoutRegion("figure", [(1, 2), (30, 2), (30, 40), (1, 40)], ""),
        LayoutRegion("figure_title", [(1, 50), (40, 50), (40, 60), (1, 60)], ""),
        LayoutRegion("table", [(100, 320), (900, 320), (900, 600), (100, 600)], ""),
    ]


def test_layout_json_malformed_and_truncated():
    text = (
        '[{"layout_type": "paragraph", "bbox": "(1,2),(30,2),(30,40),(1,40)", "text": "A"},'
        ' {"layout_type": "paragraph", "bbox": "__import__(\'os\').system(\'exit 1\')"},'  # never eval()
        ' {"layout_type": "paragraph", "bbox": "[__import__(\'os\')]"},'
        ' {"layout_type": "paragraph", "bbox": "[[1,2],[3,4],[5,6]]"},'  # three points
        ' {"layout_type": "paragraph", "bbox": "[[1,2],[3,4],[5,6],[7,' + "9" * 5000 + ']]"},'
        ' {"layout_type": 3, "bbox": "(1,2),(30,2),(30,40),(1,40)"},'
        ' {"bbox": "(1,2),(30,2),(30,40),(1,40)"},'
        ' {"layout_type": "paragraph", "bbox": "(1,2),(30,2),(30,40),(1,40)", "text": "B"},'
        ' {"layout_type": "paragraph", "bbox": "(1,2),(30'
    )
    result = parse_layout(text)
    assert [r.text for r in result.items] == ["A", "B"]
    assert result.malformed == 7


@pytest.mark.parametrize(
    "model_text",
    [
        # the tags skipped as special tokens: a category and points run into the text; nothing is guessed
        "# 年度报告section_title(100,50),(900,50),(900,90),(100,90)\n正文paragraph(100,100),(900,100),(900,300),(100,300)",
        "just a document with no layout at all",
        "",
        "[1, 2, 3]",
    ],
)
def test_layout_without_a_known_form_gives_nothing_and_no_guess(model_text):
    result = parse_layout(model_text)
    assert result.items == [] and result.malformed == 0


@pytest.mark.parametrize(
    "garbage",
    [
        "<hy-meta>",
        "<hy-meta>" * 10_000,
        "[{" * 50_000,
        '[{"layout_type": "x", "bbox": "' + "[" * 10_000 + '"}]',
        "\x00\ufffd<hy-meta><layout>\ud800</layout><poly>(((</poly></hy-meta>",
        None,
    ],
)
def test_layout_garbage_never_raises(garbage):
    result = parse_layout(garbage)
    assert result.items == [] and result.malformed >= 0


@pytest.mark.parametrize(
    "category, canonical",
    [
        ("Para Title", "para_title"), ("paratitle", "para_title"), ("table-of-contents", "table_of_contents"),
        ("table_of_figures", "table_of_contents"), ("TableTitle", "table_title"), ("table", "table"),
        ("chart_title", "figure_title"), ("chart", "figure"), ("Figure", "figure"), ("para", "paragraph"),
        ("paragraph span", "paragraph"), ("Title", "section_title"), ("heading", "section_title"),
        ("page_header", "header"), ("page-footer", "footer"), ("footer", "footer"), (" Formula ", "formula"),
    ],
)
def test_layout_categories_are_canonicalised_like_the_scorer(category, canonical):
    assert normalize_layout_category(category) == canonical


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
