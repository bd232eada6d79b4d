"""Decoded text + task -> the structured result both APIs return (boxes, regions, fields, table rows)."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.errors import ModelOutputError
from serve_app.model.tasks import TaskRequest
from serve_app.results.doc_normalize import normalize_document
from serve_app.results.parsers import (
    FieldsParseError,
    oriented_to_stored,
    parse_fields,
    parse_layout,
    parse_spotting,
    parse_table_rows,
    to_caller_pixels,
    to_caller_polygon,
)
from serve_app.stage_io import DecodeResult, PreparedImage


@dataclass
class StructuredResult:
    boxes: list[dict] | None = None  # spotting: [{"text", "bbox": [x1, y1, x2, y2]}] in caller pixels
    regions: list[dict] | None = None  # layout: [{"category", "polygon": [[x, y], ...], "text"}] in caller pixels
    fields: dict | None = None  # fields: exactly the requested keys
    rows: list[list[str]] | None = None  # table/document: cells of the HTML table, when it parses
    warnings: list[str] = field(default_factory=list)


def structure(task: TaskRequest, result: DecodeResult, prepared: PreparedImage) -> StructuredResult:
    """Structure the answer by the task's output kind. `result.text` is normalised in place where the official
    client does it (1.5's document parsing), so both APIs return the same text."""
    output = task.output
    structured = StructuredResult(warnings=[*task.warnings, *result.warnings])
    if result.finish_reason == "length":
        structured.warnings.append("The output reached max_tokens and may be cut short.")
    if output == "spotting" and result.spotted is not None:
        # The engine located the lines itself (PP-OCR): boxes in pixels of the oriented image.
        structured.boxes = [
            {"text": line.text, "bbox": oriented_to_stored(line.box, prepared.original_size, prepared.exif_orientation)}
            for line in result.spotted
        ]
    elif output == "spotting":
        spotted = parse_spotting(result.text)
        structured.boxes = [
            {
                "text": item.text,
                "bbox": to_caller_pixels(item.box, prepared.oriented_size, prepared.original_size, prepared.exif_orientation),
            }
            for item in spotted.items
        ]
        if spotted.malformed:
            structured.warnings.append(f"{spotted.malformed} spotting item(s) could not be parsed and were skipped.")
    elif output == "fields":
        try:
            structured.fields = parse_fields(result.text, task.fields)
        except FieldsParseError as error:
            hint = " (cut by max_tokens: raise it)" if result.finish_reason == "length" else ""
            raise ModelOutputError(
                f"The fields task needs a JSON answer, but {error}{hint}. The vLLM engine guarantees valid "
                f"JSON by guided decoding; the model's text was: {result.text[:200]!r}"
            ) from None
    elif output == "layout":
        layout = parse_layout(result.text)
        structured.regions = [
            {
                "category": region.category,
                "polygon": to_caller_polygon(
                    region.polygon, prepared.oriented_size, prepared.original_size, prepared.exif_orientation
                ),
                "text": region.text,
            }
            for region in layout.items
        ]
        if layout.malformed:
            structured.warnings.append(f"{layout.malformed} layout region(s) could not be parsed and were skipped.")
    elif output == "document" and not task.custom_prompt:
        # 1.5's official doc_parse post-processing (figure coordinates, table captions, formula blocks).
        result.text = normalize_document(result.text)
    if output in ("html", "markdown", "document") and task.task in ("table", "document"):
        structured.rows = parse_table_rows(result.text)
    return structured
