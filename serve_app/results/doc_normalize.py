"""The official HunyuanOCR 1.5 clean-up of document-parsing (doc_parse) markdown, ported.

Source: `normalize_doc_parse_markdown` in Tencent-Hunyuan/HunyuanOCR `inference/utils/output_utils.py`
at commit 4e70513f8c0f7904b8195a500c54a5ef67a52ed0 (the same passes, character for character, as at
c55965d3da1e6f41987abec8068f2e70851318bc; the two versions differ only in `infer_stream`). The official
clients run it after `clean_repeated_substrings`, for the doc_parse task ONLY ("other tasks have
different output formats and must not be touched").

The ten passes, in the official order, each with the same rule as the original (patterns and guards
unchanged; the edit statistics the original returns are dropped):

  U   strip layout coordinate tails `(x1,y1),(x2,y2)` at the end of text lines; a bare coordinate
      line (a figure's box) goes; never inside math or on table lines
  T   `<table><caption>X</caption>...</table>` -> `X` + blank line + the table without the caption
  E   a display block that is exactly `\\begin{array}{l}...\\end{array}` with `\\\\ \\\\` paragraph
      breaks -> one display block per paragraph
  C   a display block that is exactly one aligned/align*/align/split/cases/gather/gathered env whose
      rows are independent equations -> one `\\[ row \\]` per row
  C2  a display block that is exactly one `\\begin{array}{lrc|}` of `&`-separated independent
      equations (worksheets) -> one `\\[ cell \\]` per cell
  D   balance `\\left`/`\\right` in display blocks with `\\right.` / `\\left.`
  A   a `$...$` alone on its line that looks like a real formula -> `$$ ... $$` display block
  W   a bare arithmetic line (digits and ×÷+-=) -> `$$ ... $$` per drill, ÷ -> \\div, × -> \\times
  F   strip equation numbers (`\\tag{}`, `\\quad (n)`, `\\cdots (n)`, trailing ` (1.2.3)`) in display blocks
  V   drop a leading bare `&` and surplus trailing `}` in display blocks
"""

from __future__ import annotations

import re

__all__ = ["normalize_document"]

# Display math blocks, as every math pass finds them: `$$...$$`, then `\[...\]`.
_DOLLAR_BLOCK = re.compile(r"\$\$([\s\S]*?)\$\$")
_BRACKET_BLOCK = re.compile(r"\\\[([\s\S]*?)\\\]")


def normalize_document(text: str) -> str:
    """doc_parse model output -> the same markdown with the ten official passes applied, in order."""
    for apply_pass in (_pass_u, _pass_t, _pass_e, _pass_c, _pass_c2, _pass_d, _pass_a, _pass_w, _pass_f, _pass_v):
        text = apply_pass(text)
    return text


def _each_display_block(text: str, rewrite) -> str:
    """`rewrite(match, kind)` on every `$$...$$` block (kind "$$"), then every `\\[...\\]` block (kind "\\[")."""
    text = _DOLLAR_BLOCK.sub(lambda match: rewrite(match, "$$"), text)
    return _BRACKET_BLOCK.sub(lambda match: rewrite(match, r"\["), text)


def _each_display_inner(text: str, rewrite_inner) -> str:
    """The content of every display block through `rewrite_inner`, delimiters kept."""

    def rewrite(match, kind):
        close = "$$" if kind == "$$" else r"\]"
        return kind + rewrite_inner(match.group(1)) + close

    return _each_display_block(text, rewrite)


def _split_blocks(pieces: list[str], kind: str) -> str:
    """Pieces as separate display blocks (of the same kind for E), each surrounded by blank lines."""
    if kind == "$$":
        return "\n\n" + "\n\n".join(f"$$ {piece} $$" for piece in pieces) + "\n\n"
    return "\n\n" + "\n\n".join(f"\\[ {piece} \\]" for piece in pieces) + "\n\n"


# ---- U: layout coordinate tails --------------------------------------------------------------------
# "数据来源于高德地图驾车导航数据(39,337),(512,900)" -> "数据来源于高德地图驾车导航数据";
# "(147,90),(925,415)" alone on its line (a figure's box) -> the line is deleted.
_COORD_PAIR = re.compile(r"\(\d{1,4},\d{1,4}\),\(\d{1,4},\d{1,4}\)")
_TRAILING_COORDS = re.compile(r"(?:[ \t,，]*\(\d{1,4},\d{1,4}\),\(\d{1,4},\d{1,4}\))+[ \t]*$")
_MATH_SPAN = re.compile(r"\$\$[\s\S]*?\$\$|\$[^\$\n]+\$|\\\[[\s\S]*?\\\]")
_MASK = re.compile(r"\x00U(\d+)\x00")


def _is_table_line(line: str) -> bool:
    lower = line.lower()
    return "<table" in lower or "<tr" in lower or "<td" in lower or "</td" in lower


def _pass_u(text: str) -> str:
    spans: list[str] = []  # math spans masked so that point sets like \{(2,4),(3,3)\} survive

    def mask(match):
        spans.append(match.group(0))
        return f"\x00U{len(spans) - 1}\x00"

    lines = []
    for line in _MATH_SPAN.sub(mask, text).split("\n"):
        if _is_table_line(line) or not _COORD_PAIR.search(line):
            lines.append(line)
            continue
        stripped = _TRAILING_COORDS.sub("", line)
        if stripped == line:  # coordinates, but not as a clean tail: left alone
            lines.append(line)
        elif stripped.strip():  # text, then the coordinates: the text stays
            lines.append(stripped.rstrip())
        # else: a bare coordinate line, deleted
    return _MASK.sub(lambda match: spans[int(match.group(1))], "\n".join(lines))


# ---- T: table caption out of the table -------------------------------------------------------------
_TABLE_CAPTION = re.compile(r"<table([^>]*)>\s*<caption[^>]*>([\s\S]*?)</caption>\s*([\s\S]*?)</table>", re.IGNORECASE)
_STRAY_TD = re.compile(r"^<td>\s*(?=<tr>)", re.IGNORECASE)


def _pass_t(text: str) -> str:
    def move_caption(match):
        attributes = match.group(1) or ""
        caption = match.group(2).strip()
        body = _STRAY_TD.sub("", match.group(3).strip())  # a stray <td> some outputs put before <tr>
        if not caption:
            return match.group(0)
        return f"{caption}\n\n<table{attributes}>{body}</table>"

    return _TABLE_CAPTION.sub(move_caption, text)


# ---- E: array{l} with \\ \\ paragraph breaks -------------------------------------------------------
_PARAGRAPH_BREAK = re.compile(r"\\\\\s*\\\\")
_ARRAY_L = re.compile(r"\\begin\{array\}\{l\}([\s\S]*?)\\end\{array\}")
_TRAILING_ROW_BREAK = re.compile(r"\\\\$")


def _braces_balanced(text: str) -> bool:
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _array_l_paragraphs(inner: str) -> list[str] | None:
    if not _PARAGRAPH_BREAK.search(inner):
        return None
    paragraphs = []
    for part in _PARAGRAPH_BREAK.split(inner):
        part = _TRAILING_ROW_BREAK.sub("", part.strip()).strip()
        if part.startswith("{") and part.endswith("}") and _braces_balanced(part[1:-1]):
            part = part[1:-1].strip()  # one group around the whole paragraph: unwrapped
        if part:
            paragraphs.append(part)
    return paragraphs


def _pass_e(text: str) -> str:
    def split(match, kind):
        array = _ARRAY_L.fullmatch(match.group(1).strip())
        if not array:
            return match.group(0)
        paragraphs = _array_l_paragraphs(array.group(1))
        if not paragraphs or len(paragraphs) < 2:
            return match.group(0)
        return _split_blocks(paragraphs, kind)

    return _each_display_block(text, split)


# ---- C: multi-row environments of independent equations --------------------------------------------
_ROW_ENVIRONMENTS = ["aligned", "align\\*", "align", "split", "cases", "gather", "gathered"]
_ROW_ENVIRONMENT = re.compile(r"\\begin\{(" + "|".join(_ROW_ENVIRONMENTS) + r")\}([\s\S]*?)\\end\{\1\}")
_ROW_BREAK = re.compile(r"\\\\(?:\s*\[[^\]]*\])?")  # \\ with an optional [3pt] spacing
# A row that continues the previous one (alignment or relation first): the rows are one formula.
_ROW_CONTINUATION = re.compile(
    r"^(&|=|\\approx|\+|-|\\geq|\\leq|\\le|\\ge|<|>|\\times|\\cdot|\\pm|\\mp|\\Rightarrow|\\rightarrow|\\to|\\equiv)"
)


def _rows_are_independent(rows: list[str]) -> bool:
    if any("&" in row for row in rows):
        return False
    return not any(_ROW_CONTINUATION.match(row) for row in rows[1:])


def _pass_c(text: str) -> str:
    def split(match, kind):
        environment = _ROW_ENVIRONMENT.fullmatch(match.group(1).strip())
        if not environment:
            return match.group(0)
        rows = [row.strip() for row in _ROW_BREAK.split(environment.group(2)) if row.strip()]
        if len(rows) < 2 or not _rows_are_independent(rows):
            return match.group(0)
        return _split_blocks(rows, r"\[")  # always \[ \] blocks, whatever the original delimiter

    return _each_display_block(text, split)


# ---- C2: array of &-separated independent equations (worksheets) -----------------------------------
_ARRAY = re.compile(r"\\begin\{array\}\{[lrc|]+\}([\s\S]*?)\\end\{array\}")
_CELL_CONTINUATION = re.compile(r"^(=|\\approx|\+|-|\\times|\\div|\\leq|\\geq|\\le|\\ge|<|>|\\cdot)")


def _cell_is_independent_equation(cell: str) -> bool:
    cell = cell.strip()
    if not cell or _CELL_CONTINUATION.match(cell):
        return False
    return "=" in cell or "\\approx" in cell


def _pass_c2(text: str) -> str:
    def split(match, kind):
        array = _ARRAY.fullmatch(match.group(1).strip())
        if not array:
            return match.group(0)
        rows = [row for row in _ROW_BREAK.split(array.group(1)) if row.strip()]
        if len(rows) < 2 or len([row for row in rows if "&" in row]) < 2:
            return match.group(0)
        for row in rows:  # empty cells (unfilled worksheet slots) are ignored
            cells = [cell for cell in row.split("&") if cell.strip()]
            if not cells or not all(_cell_is_independent_equation(cell) for cell in cells):
                return match.group(0)  # real alignment, mixed content or a row that is no equation
        cells = [cell.strip() for row in rows for cell in row.split("&") if cell.strip()]
        if len(cells) < 2:
            return match.group(0)
        return _split_blocks(cells, r"\[")

    return _each_display_block(text, split)


# ---- D: \left / \right balance ---------------------------------------------------------------------
_LEFT = re.compile(r"\\left(?![a-zA-Z@])")
_RIGHT = re.compile(r"\\right(?![a-zA-Z@])")
_END_ENVIRONMENT = re.compile(r"\\end\{[^}]+\}")
_BEGIN_ENVIRONMENT = re.compile(r"\\begin\{[^}]+\}")


def _balance_left_right(content: str) -> str:
    lefts, rights = len(_LEFT.findall(content)), len(_RIGHT.findall(content))
    if lefts > rights:  # \right. before the last \end{...}, else at the end
        missing = r"\right." * (lefts - rights)
        ends = list(_END_ENVIRONMENT.finditer(content))
        if ends:
            at = ends[-1].start()
            return content[:at] + missing + " " + content[at:]
        return content.rstrip() + " " + missing
    if rights > lefts:  # \left. after the first \begin{...}, else at the start
        missing = r"\left." * (rights - lefts)
        begin = _BEGIN_ENVIRONMENT.search(content)
        if begin:
            return content[: begin.end()] + " " + missing + content[begin.end() :]
        return " " + missing + content
    return content


def _pass_d(text: str) -> str:
    return _each_display_inner(text, _balance_left_right)


# ---- A: a whole-line inline formula -> display -----------------------------------------------------
_INLINE_WHOLE_LINE = re.compile(r"(?m)^[ \t]*\$([^\$\n]+?)\$[ \t]*$")
_RICH_TOKEN = re.compile(
    r"\\(?:frac|sum|int|prod|therefore|because|forall|exists|begin|left|right|sqrt|partial|nabla|infty|cdot|times"
    r"|div|leq|geq|neq|approx|equiv|to|rightarrow|leftarrow|leftrightarrow|cap|cup|in|notin|subset|supseteq|cong"
    r"|sim)\b"
)


def _looks_like_a_real_formula(formula: str) -> bool:
    formula = formula.strip()
    return len(formula) >= 15 or bool(_RICH_TOKEN.search(formula))


def _pass_a(text: str) -> str:
    def promote(match):
        formula = match.group(1).strip()
        return f"\n\n$$ {formula} $$\n\n" if _looks_like_a_real_formula(formula) else match.group(0)

    return _INLINE_WHOLE_LINE.sub(promote, text)


# ---- W: bare arithmetic lines -> display -----------------------------------------------------------
_BARE_ARITHMETIC = re.compile(r"^[\d\s×÷+\-=.,()（）]+$")
_DIGIT_PLUS_MINUS_DIGIT = re.compile(r"\d\s*[+\-]\s*\d")
_DRILL_GAP = re.compile(r"\s{2,}")


def _is_bare_arithmetic(line: str) -> bool:
    line = line.strip()
    if len(line) < 3 or len(line) > 80 or "=" not in line or not _BARE_ARITHMETIC.match(line):
        return False
    return "÷" in line or "×" in line or bool(_DIGIT_PLUS_MINUS_DIGIT.search(line))


def _pass_w(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if not _is_bare_arithmetic(line):
            lines.append(line)
            continue
        line = line.strip()
        drills = [part.strip() for part in _DRILL_GAP.split(line) if part.strip()]
        if len(drills) < 2 or not all("=" in drill for drill in drills):
            drills = [line]  # several drills only when each part is an equation of its own
        for drill in drills:
            lines.append("$$ " + drill.replace("÷", "\\div ").replace("×", "\\times ") + " $$")
    return "\n".join(lines)


# ---- F: equation numbers ---------------------------------------------------------------------------
_TAG = re.compile(r"\\tag\s*\{[^}]*\}\s*")
_QUAD_NUMBER = re.compile(r"\\q?quad\s*\{?\s*\((\d[\d\.\-]*)\)\s*\}?\s*$")
_CDOTS_NUMBER = re.compile(r"(?:\\cdots){2,}\s*\((\d[\d\.\-]*)\)\s*$")
_TRAILING_NUMBER = re.compile(r"\s+\((\d[\d\.\-]+)\)\s*$")  # " (1.2.3)" at the very end


def _strip_equation_numbers(content: str) -> str:
    for pattern in (_TAG, _QUAD_NUMBER, _CDOTS_NUMBER):
        match = pattern.search(content)
        while match:
            content = content[: match.start()] + content[match.end() :]
            match = pattern.search(content)
    match = _TRAILING_NUMBER.search(content)
    if match and match.start() > 5:  # not a "(i,t)=" near the start
        content = content[: match.start()].rstrip()
    return content


def _pass_f(text: str) -> str:
    return _each_display_inner(text, _strip_equation_numbers)


# ---- V: low-risk display-block LaTeX repair --------------------------------------------------------
_LEADING_AMPERSAND = re.compile(r"^(\s*)&")
_TRAILING_BRACE = re.compile(r"\}\s*$")


def _net_brace_depth(content: str) -> int:
    depth, index = 0, 0
    while index < len(content):
        char = content[index]
        if char == "\\":  # an escaped character (\{ \} \\) does not count
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        index += 1
    return depth


def _repair_display_block(content: str) -> str:
    content = _LEADING_AMPERSAND.sub(r"\1", content)  # an alignment tab is illegal in displaymath
    surplus = -_net_brace_depth(content)
    while surplus > 0:  # only trailing surplus '}' go; braces are never added
        match = _TRAILING_BRACE.search(content)
        if not match:
            break
        backslashes, at = 0, match.start() - 1
        while at >= 0 and content[at] == "\\":
            backslashes += 1
            at -= 1
        if backslashes % 2 == 1:  # an escaped \}: stop
            break
        content = content[: match.start()] + content[match.start() + 1 :]
        surplus -= 1
    return content


def _pass_v(text: str) -> str:
    return _each_display_inner(text, _repair_display_block)
