"""Ingress: the HTTP API (FastAPI) that chains the three stages by deployment handles."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import OCRAppConfig
from serve_app.errors import (
    InvalidRequestError,
    OCRServiceError,
    PayloadTooLargeError,
    as_service_error,
)
from serve_app.schemas import ErrorResponse, HealthResponse, ImageInfo, OCRResponse, StageTimings, Usage
from serve_app.stage_io import SamplingOptions

logger = logging.getLogger("ray.serve")

ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 413, 415, 500, 503)}
RETRY_AFTER_S = "1"

app = FastAPI(
    title="HunyuanOCR service",
    description="OCR with HunyuanOCR as a three-stage Ray Serve graph: Preprocessor -> VisionEncoder -> Decoder.",
    version="0.1.0",
)


def error_response(error: BaseException) -> JSONResponse:
    service_error = as_service_error(error)
    if service_error.status_code >= 500:
        logger.error("request failed: %r", error)
    headers = {"Retry-After": RETRY_AFTER_S} if service_error.status_code == 503 else None
    return JSONResponse(service_error.to_dict(), status_code=service_error.status_code, headers=headers)


@app.exception_handler(OCRServiceError)
async def _service_error(_: Request, error: OCRServiceError) -> JSONResponse:
    return error_response(error)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(InvalidRequestError(f"{param}: {first.get('msg')}", param=param))


@app.exception_handler(Exception)
async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    return error_response(error)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused as soon as it passes the limit (no unbounded buffering)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"The body is {declared} bytes; the limit is {max_bytes} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The body is over the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _str_field(value) -> str | None:
    return value if isinstance(value, str) else None


# Helpers above this point: Serve captures the app when the decorator runs, before later names exist.
@serve.deployment
@serve.ingress(app)
class OCRIngress:
    def __init__(
        self,
        config: OCRAppConfig,
        preprocessor: DeploymentHandle,
        encoder: DeploymentHandle,
        decoder: DeploymentHandle,
    ):
        self.config = config
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.decoder = decoder

    @app.post(
        "/ocr",
        response_model=OCRResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        summary="OCR one image",
        description="Send the image as the raw body (`curl --data-binary @page.jpg`) or as the `file` field "
        "of a multipart form. `prompt` and `max_tokens` go in the query string or as form fields.",
    )
    async def ocr(
        self,
        request: Request,
        prompt: str | None = Query(None, description="Instruction; the default extracts the text."),
        max_tokens: int | None = Query(None, description="Most tokens to generate."),
        return_token_ids: bool = Query(False, description="Also return the generated token ids."),
    ) -> OCRResponse:
        started = time.perf_counter()
        limits = self.config.limits
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            image_bytes, prompt, max_tokens = await self._read_form(request, prompt, max_tokens)
        else:
            image_bytes = await read_body(request, limits.max_body_bytes)
        instruction = self._instruction(prompt)
        sampling = SamplingOptions(max_tokens=self._max_tokens(max_tokens))
        request_id = uuid.uuid4().hex

        # The encoder receives the preprocessor's response by reference: pixels never pass through here.
        prepared_response = self.preprocessor.prepare.remote(image_bytes, instruction)
        embeddings_response = self.encoder.encode.remote(prepared_response)
        prepared = await prepared_response
        result = await self.decoder.generate.remote(prepared.prompt, embeddings_response, sampling, request_id)
        return OCRResponse(
            id=request_id,
            model=self.config.model.served_model_name,
            text=result.text,
            finish_reason=result.finish_reason,
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
            timings_ms=StageTimings(
                preprocess=round(prepared.preprocess_ms, 2),
                encode=round(result.encode_ms, 2),
                decode=round(result.decode_ms, 2),
                total=round((time.perf_counter() - started) * 1000, 2),
                encoder_batch_size=result.encoder_batch_size,
            ),
            image=ImageInfo(
                width=prepared.original_size[0],
                height=prepared.original_size[1],
                oriented_width=prepared.oriented_size[0],
                oriented_height=prepared.oriented_size[1],
                model_width=prepared.model_size[0],
                model_height=prepared.model_size[1],
                exif_orientation=prepared.exif_orientation,
            ),
            token_ids=result.token_ids if return_token_ids else None,
        )

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz(self) -> JSONResponse:
        stages = {}
        for name, handle in (("preprocessor", self.preprocessor), ("encoder", self.encoder), ("decoder", self.decoder)):
            try:
                await handle.ping.remote()
                stages[name] = "ok"
            except Exception as error:  # a stage that cannot answer makes the service unhealthy
                stages[name] = f"unavailable: {type(error).__name__}"
        healthy = all(state == "ok" for state in stages.values())
        body = HealthResponse(status="ok" if healthy else "unavailable", stages=stages)
        return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)

    async def _read_form(self, request: Request, prompt: str | None, max_tokens: int | None):
        limits = self.config.limits
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes + 64 * 1024:
            raise PayloadTooLargeError(f"The body is {declared} bytes; the limit is {limits.max_body_bytes} bytes.")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limits.max_body_bytes)
        except OCRServiceError:
            raise
        except Exception as error:  # malformed multipart
            raise InvalidRequestError(f"The multipart form could not be parsed: {error}") from None
        upload = form.get("file") or form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("The multipart form needs the image in a file field named 'file'.", "file")
        image_bytes = await upload.read(limits.max_body_bytes + 1)
        if len(image_bytes) > limits.max_body_bytes:
            raise PayloadTooLargeError(f"The file is over the limit of {limits.max_body_bytes} bytes.")
        prompt = prompt if prompt is not None else _str_field(form.get("prompt"))
        if max_tokens is None and form.get("max_tokens") not in (None, ""):
            raw = _str_field(form.get("max_tokens"))
            if raw is None or not raw.strip().lstrip("-").isdigit():
                raise InvalidRequestError("max_tokens must be an integer.", "max_tokens")
            max_tokens = int(raw)
        return image_bytes, prompt, max_tokens

    def _instruction(self, prompt: str | None) -> str:
        if prompt is None or not prompt.strip():
            return self.config.default_instruction
        if len(prompt) > self.config.limits.max_prompt_chars:
            raise InvalidRequestError(
                f"prompt is {len(prompt)} characters; the limit is {self.config.limits.max_prompt_chars}.", "prompt"
            )
        return prompt

    def _max_tokens(self, max_tokens: int | None) -> int:
        limits = self.config.limits
        if max_tokens is None:
            return limits.default_max_tokens
        if not 1 <= max_tokens <= limits.max_tokens_cap:
            raise InvalidRequestError(
                f"max_tokens must be between 1 and {limits.max_tokens_cap}; got {max_tokens}.", "max_tokens"
            )
        return max_tokens
