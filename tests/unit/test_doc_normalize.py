"""The port of HunyuanOCR 1.5's doc_parse clean-up: each pass on the examples of the official comments."""

from __future__ import annotations

import pytest

from serve_app.results.doc_normalize import normalize_document


# ---- U: layout coordinate tails -------------------------------------------------------------------
def test_u_strips_a_trailing_coordinate_tail_and_keeps_the_text():
    assert normalize_document("数据来源于高德地图驾车导航数据(39,337),(512,900)") == "数据来源于高德地图驾车导航数据"
    assert normalize_document("图1 销量 (39,337),(512,900), (1,2),(3,4)  ") == "图1 销量"


def test_u_deletes_a_bare_coordinate_line():
    assert normalize_document("Above\n(147,90),(925,415)\nBelow") == "Above\nBelow"


@pytest.mark.parametrize(
    "text",
    [
        "点集 $\\{(2,4),(3,3)\\}$",  # a point set in math
        "A = $$ (2,4),(3,3) $$",
        "\\[ (2,4),(3,3) \\]",
        "<td>(147,90),(925,415)</td>",  # a table line
        "see (147,90),(925,415) above",  # not at the end of the line: too risky
        "(12345,1),(2,3)",  # 5-digit coordinates are not a layout tail
    ],
)
def test_u_leaves_math_tables_and_inline_coordinates(text):
    assert normalize_document(text) == text


# ---- T: table caption -----------------------------------------------------------------------------
def test_t_moves_the_caption_before_the_table():
    assert normalize_document("<table><caption>X</caption><tr><td>1</td></tr></table>") == (
        "X\n\n<table><tr><td>1</td></tr></table>"
    )
    # attributes kept, a stray <td> before the first <tr> dropped, an empty caption left alone
    assert normalize_document('<table border="1"> <caption>表1</caption> <td><tr><td>1</td></tr></table>') == (
        '表1\n\n<table border="1"><tr><td>1</td></tr></table>'
    )
    empty = "<table><caption> </caption><tr><td>1</td></tr></table>"
    assert normalize_document(empty) == empty


# ---- E: array{l} with \\ \\ paragraph breaks --------------------------------------------------------
def test_e_splits_an_array_l_block_at_paragraph_breaks():
    assert normalize_document("$$\\begin{array}{l}{a=1} \\\\ \\\\ b=2\\\\\\end{array}$$") == (
        "\n\n$$ a=1 $$\n\n$$ b=2 $$\n\n"
    )
    assert normalize_document("\\[\\begin{array}{l}a \\\\ \\\\ b\\end{array}\\]") == "\n\n\\[ a \\]\n\n\\[ b \\]\n\n"


# ---- C: multi-row environments --------------------------------------------------------------------
def test_c_splits_rows_that_are_independent_equations():
    assert normalize_document("$$\\begin{cases} x=1 \\\\[3pt] y=2 \\end{cases}$$") == (
        "\n\n\\[ x=1 \\]\n\n\\[ y=2 \\]\n\n"
    )


def test_c_keeps_one_multi_line_aligned_formula():
    aligned = "$$\\begin{aligned} x &= a \\\\ &= b \\\\ &= c \\end{aligned}$$"
    assert normalize_document(aligned) == aligned
    relation_led = "\\[\\begin{gather} x \\\\ = y \\end{gather}\\]"
    assert normalize_document(relation_led) == relation_led


# ---- C2: worksheet arrays -------------------------------------------------------------------------
def test_c2_splits_an_array_of_independent_equations():
    worksheet = "$$\\begin{array}{l} a= &b= &c= \\\\ d= &e= &f= \\end{array}$$"
    assert normalize_document(worksheet) == "\n\n" + "\n\n".join(f"\\[ {c}= \\]" for c in "abcdef") + "\n\n"


def test_c2_keeps_a_real_alignment():
    putnam = "$$\\begin{array}{ll} x &= a \\\\ y &= b \\end{array}$$"
    assert normalize_document(putnam) == putnam


# ---- D: \left / \right ----------------------------------------------------------------------------
def test_d_balances_left_and_right():
    assert normalize_document("$$\\left( x $$") == "$$\\left( x \\right.$$"
    assert normalize_document("$$ x \\right) $$") == "$$ \\left. x \\right) $$"
    assert normalize_document("$$\\left( x \\end{array}$$") == "$$\\left( x \\right. \\end{array}$$"
    balanced = "$$\\left( x \\right)$$"
    assert normalize_document(balanced) == balanced


# ---- A: whole-line inline formula -----------------------------------------------------------------
def test_a_promotes_a_real_formula_alone_on_its_line():
    assert normalize_document("$\\frac{a}{b}$") == "\n\n$$ \\frac{a}{b} $$\n\n"
    assert normalize_document("  $a+b+c+d+e+f+g=h$ ") == "\n\n$$ a+b+c+d+e+f+g=h $$\n\n"  # >= 15 chars
    for kept in ("$x$", "the value $\\frac{a}{b}$ is small"):
        assert normalize_document(kept) == kept


# ---- W: bare arithmetic lines ---------------------------------------------------------------------
def test_w_wraps_bare_arithmetic_drills():
    assert normalize_document("50÷8=") == "$$ 50\\div 8= $$"
    assert normalize_document("73.33+65.66-71.73=67.26    1.5×4=6") == (
        "$$ 73.33+65.66-71.73=67.26 $$\n$$ 1.5\\times 4=6 $$"
    )
    assert normalize_document("315÷3.5=90     31.2÷6=5.2") == "$$ 315\\div 3.5=90 $$\n$$ 31.2\\div 6=5.2 $$"
    for kept in ("x=1+2", "2020-2021", "第1题 3+4=7", "12 = 12"):
        assert normalize_document(kept) == kept


# ---- F: equation numbers --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("$$ E=mc^2 \\tag{1} $$", "$$ E=mc^2 $$"),
        ("$$ a+b=c \\quad (2) $$", "$$ a+b=c $$"),
        ("$$ x=1 \\cdots\\cdots(3) $$", "$$ x=1 $$"),
        ("\\[ a+b=c+d (1.2.3) \\]", "\\[ a+b=c+d\\]"),
        ("$$ (1.2) $$", "$$ (1.2) $$"),  # too near the start: could be an (i,t)= form
    ],
)
def test_f_strips_equation_numbers(text, expected):
    assert normalize_document(text) == expected


# ---- V: display-block repair ----------------------------------------------------------------------
def test_v_drops_a_leading_ampersand_and_surplus_closing_braces():
    assert normalize_document("$$ &x=1 $$") == "$$ x=1 $$"
    assert normalize_document("$$ x^{2}}} $$") == "$$ x^{2} $$"
    assert normalize_document("$$ \\{ x \\} $$") == "$$ \\{ x \\} $$"  # escaped braces do not count


def test_order_and_plain_text():
    # U runs first, on the raw text; a plain paragraph goes through untouched.
    text = "# 标题\n\n正文第一段。\n\n图 2 趋势(10,20),(30,40)\n$\\frac{1}{2}$"
    assert normalize_document(text) == "# 标题\n\n正文第一段。\n\n图 2 趋势\n\n\n$$ \\frac{1}{2} $$\n\n"
    assert normalize_document("") == ""
