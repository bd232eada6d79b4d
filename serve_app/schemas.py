"""HTTP response schemas (shown in the OpenAPI document at /docs)."""

from __future__ import annotations

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


class OCRResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: str = Field(description="'stop', or 'length' when max_tokens cut the text.")
    usage: Usage
    timings_ms: StageTimings
    image: ImageInfo
    token_ids: list[int] | None = Field(None, description="Generated token ids, when return_token_ids=true.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str
    stages: dict[str, str]
