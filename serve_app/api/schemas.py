"""HTTP response schemas (shown in the OpenAPI document at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens, image tokens included.")
    completion_tokens: int
    total_tokens: int


class StageTimings(BaseModel):
    preprocess: float = Field(description="Decode, validate, resize, image processor (ms).")
    encode: float = Field(description="Vision tower call that served this image (ms).")
    decode: float = Field(description="Text generation (ms).")
    total: float = Field(description="Whole request as seen by the ingress (ms).")
    encoder_batch_size: int = Field(description="Images that shared the vision tower call.")


class ImageInfo(BaseModel):
    width: int = Field(description="Width as sent (before EXIF orientation).")
    height: int
    oriented_width: int = Field(description="Width after EXIF orientation.")
    oriented_height: int
    model_width: int = Field(description="Width of the image the model saw.")
    model_height: int
    exif_orientation: int = Field(description="EXIF orientation that was applied (1 = none).")


class SpottedBox(BaseModel):
    text: str
    bbox: list[int] = Field(description="[x1, y1, x2, y2] in the pixels of the image as sent.")


class Region(BaseModel):
    """A layout region (layout/layout_parse tasks)."""

    category: str = Field(description="Canonical category: paragraph, section_title, para_title, table, "
                          "table_title, figure, figure_title, header, footer, ...")
    polygon: list[list[int]] = Field(description="[[x, y], ...] (4 or more points) in the pixels of the image as sent.")
    text: str = Field(description="The region's content (layout_parse); empty for layout.")


class PageResult(BaseModel):
    page: int = Field(description="1-based page number (PDF page, or position of the image in the request).")
    text: str
    boxes: list[SpottedBox] | None = None
    fields: dict[str, Any] | None = None
    rows: list[list[str]] | None = None
    regions: list[Region] | None = Field(
        None, description="layout/layout_parse tasks: regions in reading order, polygon in the caller's pixels."
    )
    finish_reason: str
    usage: Usage
    timings_ms: StageTimings
    image: ImageInfo
    warnings: list[str] = Field(default_factory=list)


class OCRResponse(BaseModel):
    id: str
    model: str
    task: str
    text: str = Field(description="The model's answer: text, markdown, HTML, LaTeX or JSON, by task; "
                      "for several pages, the pages' texts joined by blank lines.")
    pages: list[PageResult] | None = Field(None, description="PDFs and multi-image requests: one result per page, in order.")
    boxes: list[SpottedBox] | None = Field(None, description="spotting: text lines with boxes.")
    fields: dict[str, Any] | None = Field(None, description="fields: exactly the requested keys.")
    rows: list[list[str]] | None = Field(None, description="table/document: table cells, when the HTML parses.")
    regions: list[Region] | None = Field(
        None, description="layout/layout_parse tasks: regions in reading order, polygon in the caller's pixels."
    )
    finish_reason: str = Field(
        description="'stop'; 'length' when max_tokens cut the text; 'repetition' when the repetition guard stopped it."
    )
    usage: Usage
    timings_ms: StageTimings
    image: ImageInfo | None = Field(None, description="Single-image requests: the image's sizes.")
    warnings: list[str] = Field(default_factory=list)
    token_ids: list[int] | None = Field(None, description="Generated token ids, when return_token_ids=true.")
    prompt_token_ids: list[int] | None = Field(
        None, description="The prompt's token ids as the decoder received them, when return_token_ids=true."
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ServedModel(BaseModel):
    """Which checkpoint every replica loaded: the source, the HunyuanOCR version, and the exact hub commit."""

    id: str = Field(description="The model id the API reports (served_model_name).")
    source: str = Field(description="Hub id, local directory or builtin source.")
    version: str | None = Field(None, description="HunyuanOCR release whose recipe is served (None: PP-OCR).")
    revision: str | None = Field(None, description="Hub commit every replica loads (resolved once at start).")


class HealthResponse(BaseModel):
    status: str
    stages: dict[str, str]
    model: ServedModel
