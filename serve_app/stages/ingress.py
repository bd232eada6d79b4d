"""Ingress: the HTTP APIs (FastAPI), both chaining the same three stages by deployment handles.

- `POST /ocr`: raw image body or multipart upload; a task (or free prompt) in query or form fields.
- `POST /v1/chat/completions`, `GET /v1/models`: OpenAI-compatible, images as data: URLs, SSE streams.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Query, Request
from pydantic import ValidationError
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle

from serve_app.api.auth import load_api_key
from serve_app.api.http_io import (
    first_error_cancels_rest,
    int_field,
    next_or_none,
    openai_finish_reason,
    read_body,
    sse_event,
    str_field,
)
from serve_app.api.chat_input import image_and_instruction, load_image
from serve_app.config import OCRAppConfig
from serve_app.errors import (
    InvalidRequestError,
    NotFoundError,
    OCRServiceError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
    as_service_error,
    validation_error,
)
from serve_app.metrics import IngressMetrics
from serve_app.api.middleware import APIKeyMiddleware, RequestMetricsMiddleware
from serve_app.api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
)
from serve_app.api.openai_schemas import Usage as ChatUsage
from serve_app.results.doc_normalize import normalize_document
from serve_app.results.postprocess import structure
from serve_app.inputs.documents import check_page_count, is_pdf, parse_page_selector
from serve_app.api.schemas import (
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    OCRResponse,
    PageResult,
    ServedModel,
    StageTimings,
    Usage,
)
from serve_app.stage_io import DecodeResult, PreparedImage, SamplingOptions
from serve_app.model.tasks import TaskRequest, build_task_request, fields_json_schema

logger = logging.getLogger("ray.serve")

ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 500, 503, 504)}
# A stage that does not answer a health ping within this is reported unavailable (it may be restarting).
HEALTH_PING_TIMEOUT_S = 5.0
OFF_LOOP_BYTES = 256 * 1024

app = FastAPI(
    title="HunyuanOCR service",
    description="OCR with HunyuanOCR as a three-stage Ray Serve graph: Preprocessor -> VisionEncoder -> Decoder.",
    version="0.2.0",
)


def error_response(error: BaseException, request: Request | None = None) -> JSONResponse:
    service_error = as_service_error(error)
    if request is not None:
        count_error(request, service_error)
    if service_error.status_code >= 500 and not isinstance(service_error, (ServiceUnavailableError, RequestTimeoutError)):
        logger.error("request failed: %s", type(error).__name__)  # not the message: it may quote the document
    headers = None
    if isinstance(service_error, ServiceUnavailableError):
        headers = {"Retry-After": str(service_error.retry_after_s)}
    return JSONResponse(service_error.to_dict(), status_code=service_error.status_code, headers=headers)


def count_error(request: Request, error: OCRServiceError) -> None:
    # The replica's metrics hang on the app's state: module globals would not survive Serve pickling
    # these handlers along with the app.
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.inc(tags={"error_type": error.error_type})


@app.exception_handler(OCRServiceError)
async def _service_error(request: Request, error: OCRServiceError) -> JSONResponse:
    return error_response(error, request)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(error.errors()), request)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and methods answer in the API's error shape too.
    status = error.status_code
    body = {"error": {"message": str(error.detail), "type": "not_found_error" if status == 404 else "invalid_request_error",
                      "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    return error_response(error, request)


# A client that left (499) is registered by class too: the catch-all above answers outside the metrics
# middleware and re-raises (Starlette's ServerErrorMiddleware), so it would count as a 500 and a failed replica call.
for _client_gone_error in (ClientDisconnect, TaskCancelledError, RequestCancelledError):
    app.add_exception_handler(_client_gone_error, _unexpected_error)


# Everything the routes use is defined above: Serve captures the app when the decorator runs.
@serve.deployment
@serve.ingress(app)
class OCRIngress:
    def __init__(
        self,
        config: OCRAppConfig,
        preprocessor: DeploymentHandle,
        encoder: DeploymentHandle | None,
        decoder: DeploymentHandle,
    ):
        config.ingress.apply_cpu_nice()
        self.config = config
        self.preprocessor = preprocessor
        self.encoder = encoder  # None with encoder.placement in_decoder: the decoder's vLLM runs the tower
        self.decoder = decoder
        # Read here, in the replica: the key never travels through Ray's config or logs. A configured
        # key file that cannot be read fails the replica (no silent fall back to an open service).
        self.api_key = load_api_key(config.security)
        self.metrics = IngressMetrics()
        model = config.model
        is_hunyuan = model.family == "hunyuan_vl"
        self.served_model = ServedModel(
            id=model.served_model_name,
            source=model.source,
            version=model.version if is_hunyuan else None,
            revision=model.revision if is_hunyuan else None,
        )

    def __serve_build_asgi_app__(self):
        """Serve calls this in the replica once the class-based routes are bound: the web UI is
        mounted here because Gradio's Blocks cannot be pickled with the module-level app."""
        if self.config.ui.enabled:
            import gradio as gr

            from serve_app.api.ui import build_ui

            gr.mount_gradio_app(
                self._asgi_app,
                build_ui(self.recognize, self.config),
                path=self.config.ui.path,
                max_file_size=self.config.limits.max_body_bytes,  # Gradio's own upload route, bounded too
                run_history=False,  # no copies of people's documents kept in the browser
            )
        self._asgi_app.state.metrics = self.metrics
        ui_path = self.config.ui.path if self.config.ui.enabled else None
        if self.api_key:
            self._asgi_app.add_middleware(APIKeyMiddleware, api_key=self.api_key, ui_path=ui_path)
        # Added last, so outermost: refused (401) requests are counted too.
        self._asgi_app.add_middleware(RequestMetricsMiddleware, metrics=self.metrics, ui_path=ui_path)
        return self._asgi_app

    # ------------------------------------------------------------------ the pipeline, shared by both APIs

    def _check_prompt(self, prompt: str | None) -> str | None:
        if prompt is not None and len(prompt) > self.config.limits.max_prompt_chars:
            raise InvalidRequestError(
                f"prompt is {len(prompt)} characters; the limit is {self.config.limits.max_prompt_chars}.", "prompt"
            )
        return prompt

    def _sampling(self, task: TaskRequest, max_tokens: int | None, temperature: float | None = None) -> SamplingOptions:
        limits, decoding = self.config.limits, self.config.decoding
        if max_tokens is None:
            max_tokens = limits.default_max_tokens
        elif not 1 <= max_tokens <= limits.max_tokens_cap:
            raise InvalidRequestError(
                f"max_tokens must be between 1 and {limits.max_tokens_cap}; got {max_tokens}.", "max_tokens"
            )
        schema = fields_json_schema(task.fields, self.config.fields_max_value_chars) if task.fields else None
        # The version's official decoding; a request's explicit temperature asks for sampling instead of greedy
        # (over the whole vocabulary: 1.0's top_k 1 would make it greedy again).
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=temperature if temperature else decoding.temperature,
            top_p=decoding.top_p,
            top_k=-1 if temperature else decoding.top_k,
            repetition_penalty=decoding.repetition_penalty,
            json_schema=schema,
        )

    def _stages(self, image_bytes: bytes, task: TaskRequest):
        """Start the chain. The encoder gets the preprocessor's response by reference, and the pixels in it
        are a reference of their own that only the encoder resolves: pixels never pass through the ingress.
        Callers release the pixels (`release_pixels`, and drop the response) once they have read the prompt."""
        prepared_response = self.preprocessor.prepare.remote(image_bytes, task.instruction)
        return prepared_response, self._encoded(prepared_response)

    def _encoded(self, prepared_response):
        """What the decoder reads the image from: the encoder's response, or (in_decoder) the preprocessor's, whose
        pixels the decoder fetches itself."""
        return self.encoder.encode.remote(prepared_response) if self.encoder is not None else prepared_response

    async def _run(
        self, image_bytes: bytes, task: TaskRequest, sampling: SamplingOptions, request_id: str
    ) -> tuple[PreparedImage, DecodeResult]:
        prepared_response, embeddings_response = self._stages(image_bytes, task)
        prepared = (await prepared_response).release_pixels()
        del prepared_response
        result = await self.decoder.generate.remote(prepared.prompt, embeddings_response, sampling, request_id)
        return prepared, result

    # ------------------------------------------------------------------ POST /ocr

    @app.post(
        "/ocr",
        response_model=OCRResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        summary="OCR one image",
        description="Send the image as the raw body (`curl --data-binary @page.jpg`) or as the `file` field "
        "of a multipart form. The other parameters go in the query string or as form fields.",
    )
    async def ocr(
        self,
        request: Request,
        task: str | None = Query(None, description="text (default), spotting, document, table, formula, chart, "
                                 "fields, subtitles, translate."),
        lang: str | None = Query(None, description="Language of the official instruction: zh (default) or en."),
        fields: list[str] | None = Query(None, description="Keys for the fields task (repeat, or comma-separated)."),
        target_language: str | None = Query(None, description="Target of the translate task (default English)."),
        prompt: str | None = Query(None, description="A free instruction instead of a task's official one."),
        max_tokens: int | None = Query(None, description="Most tokens to generate."),
        pages: str | None = Query(None, description="PDF pages to read, e.g. 1-3,7 (default: all)."),
        return_token_ids: bool = Query(False, description="Also return the prompt's and the generated token ids."),
    ) -> OCRResponse:
        started = time.perf_counter()
        params = {"task": task, "lang": lang, "target_language": target_language, "prompt": prompt, "pages": pages}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            image_bytes, form = await self._read_form(request)
            content_type = None
            for name in params:
                params[name] = params[name] if params[name] is not None else str_field(form.get(name))
            fields = fields or [value for value in form.getlist("fields") if isinstance(value, str)] or None
            max_tokens = max_tokens if max_tokens is not None else int_field(form.get("max_tokens"), "max_tokens")
        else:
            image_bytes = await read_body(request, self.config.limits.max_body_bytes)
        return await self.recognize(
            image_bytes,
            params["task"],
            params["lang"],
            fields,
            params["target_language"],
            params["prompt"],
            max_tokens,
            pages=params["pages"],
            content_type=content_type,
            return_token_ids=return_token_ids,
            started=started,
        )

    async def within_deadline(self, awaitable):
        """Bound a request's whole pipeline by limits.request_timeout_s. On expiry the awaited stage calls are
        cancelled (Serve propagates the cancellation, vLLM aborts the generation) and the caller gets 504."""
        timeout_s = self.config.limits.request_timeout_s
        try:
            return await asyncio.wait_for(awaitable, timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestTimeoutError(
                f"The request did not finish within {timeout_s:g} s and was cancelled; retry later, "
                "or send fewer pages or a smaller max_tokens."
            ) from None

    async def recognize(self, data: bytes | list[bytes], *args, **kwargs) -> OCRResponse:
        """An image, several images, or a PDF through the three stages, structured by task, within the
        request deadline. `/ocr` and the web UI both call this."""
        response = await self.within_deadline(self._recognize(data, *args, **kwargs))
        if self.config.security.log_payloads:
            logger.info("request %s: task %s, text %r", response.id, response.task, response.text)
        return response

    async def _recognize(
        self,
        data: bytes | list[bytes],
        task: str | None = None,
        lang: str | None = None,
        fields: list[str] | None = None,
        target_language: str | None = None,
        prompt: str | None = None,
        max_tokens: int | None = None,
        *,
        pages: str | None = None,
        content_type: str | None = None,
        return_token_ids: bool = False,
        started: float | None = None,
    ) -> OCRResponse:
        """Pages fan out concurrently and come back in order."""
        started = started or time.perf_counter()
        limits = self.config.limits
        model = self.config.model
        task_request = build_task_request(
            task, lang, fields, target_language, self._check_prompt(prompt), model.family, model.version
        )
        sampling = self._sampling(task_request, max_tokens)
        request_id = uuid.uuid4().hex
        images = data if isinstance(data, list) else [data]
        if len(images) == 1 and is_pdf(images[0], content_type):
            pdf = images[0]
            count = await self.preprocessor.pdf_page_count.remote(pdf)
            numbers = parse_page_selector(pages, count)
            check_page_count(len(numbers), limits.max_pages)
            prepared = [self.preprocessor.prepare_pdf_page.remote(pdf, number, task_request.instruction) for number in numbers]
        else:
            check_page_count(len(images), limits.max_pages)
            numbers = list(range(1, len(images) + 1))
            prepared = [self.preprocessor.prepare.remote(image, task_request.instruction) for image in images]
        self.metrics.pages.inc(len(numbers))
        pages_running = [
            self._page(number, response, task_request, sampling, f"{request_id}-{number}")
            for number, response in zip(numbers, prepared)
        ]
        del prepared  # each page holds its own response, until its pixels are encoded
        outcomes = await first_error_cancels_rest(pages_running)
        page_results = [outcome[0] for outcome in outcomes]
        token_ids = [outcome[1] for outcome in outcomes]
        usage = Usage(
            prompt_tokens=sum(page.usage.prompt_tokens for page in page_results),
            completion_tokens=sum(page.usage.completion_tokens for page in page_results),
            total_tokens=sum(page.usage.total_tokens for page in page_results),
        )
        timings = StageTimings(
            preprocess=round(sum(page.timings_ms.preprocess for page in page_results), 2),
            encode=round(sum(page.timings_ms.encode for page in page_results), 2),
            decode=round(sum(page.timings_ms.decode for page in page_results), 2),
            total=round((time.perf_counter() - started) * 1000, 2),
            encoder_batch_size=max(page.timings_ms.encoder_batch_size for page in page_results),
        )
        common = {"id": request_id, "model": self.config.model.served_model_name, "task": task_request.task}
        if len(page_results) == 1 and not is_pdf(images[0], content_type):
            page = page_results[0]
            return OCRResponse(
                **common,
                **page.model_dump(include={"text", "boxes", "regions", "fields", "rows", "finish_reason", "image", "warnings"}),
                usage=usage,
                timings_ms=timings,
                token_ids=token_ids[0][0] if return_token_ids else None,
                prompt_token_ids=token_ids[0][1] if return_token_ids else None,
            )
        reasons = {page.finish_reason for page in page_results}
        return OCRResponse(
            **common,
            text="\n\n".join(page.text for page in page_results),
            pages=page_results,
            finish_reason=next((reason for reason in ("length", "repetition") if reason in reasons), "stop"),
            usage=usage,
            timings_ms=timings,
            warnings=[f"page {page.page}: {warning}" for page in page_results for warning in page.warnings],
        )

    async def _page(
        self, number: int, prepared_response, task: TaskRequest, sampling: SamplingOptions, request_id: str
    ) -> tuple[PageResult, tuple[list[int], list[int]]]:
        """One page: encoder and decoder chained on the preprocessor's response."""
        embeddings_response = self._encoded(prepared_response)
        prepared = (await prepared_response).release_pixels()
        del prepared_response
        result = await self.decoder.generate.remote(prepared.prompt, embeddings_response, sampling, request_id)
        structured = structure(task, result, prepared)
        page = PageResult(
            page=number,
            text=result.text,
            boxes=structured.boxes,
            regions=structured.regions,
            fields=structured.fields,
            rows=structured.rows,
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
                total=round(prepared.preprocess_ms + result.encode_ms + result.decode_ms, 2),
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
            warnings=structured.warnings,
        )
        return page, (result.token_ids, result.prompt_token_ids)

    async def _read_form(self, request: Request):
        limits = self.config.limits
        declared = request.headers.get("content-length", "")
        if re.fullmatch(r"[0-9]{1,18}", declared) and int(declared) > limits.max_body_bytes + 64 * 1024:
            raise PayloadTooLargeError(f"The body is {declared} bytes; the limit is {limits.max_body_bytes} bytes.")
        try:
            form = await request.form(max_files=limits.max_pages, max_fields=16, max_part_size=limits.max_body_bytes)
        except OCRServiceError:
            raise
        except Exception as error:  # malformed multipart, or more files than max_pages
            detail = getattr(error, "detail", None) or str(error)  # Starlette's text starts "400: "
            if "Too many files" in detail:
                raise PayloadTooLargeError(f"At most {limits.max_pages} files (pages) per request.", "file") from None
            raise InvalidRequestError(f"The multipart form could not be parsed: {detail}") from None
        uploads = [item for name in ("file", "image") for item in form.getlist(name) if not isinstance(item, str)]
        if not uploads and not list(form.keys()):
            raise InvalidRequestError(
                "The multipart form could not be parsed: is it truncated, or missing its closing boundary?", "file"
            )
        if not uploads:
            raise InvalidRequestError("The multipart form needs the image in a file field named 'file'.", "file")
        files, total = [], 0
        for upload in uploads:
            content = await upload.read(limits.max_body_bytes + 1)
            total += len(content)
            if total > limits.max_body_bytes:
                raise PayloadTooLargeError(f"The files are over the limit of {limits.max_body_bytes} bytes.")
            files.append(content)
        return (files if len(files) > 1 else files[0]), form

    # ------------------------------------------------------------------ OpenAI-compatible API

    @app.get("/v1/models", response_model=ModelList)
    async def models(self) -> ModelList:
        served = self.served_model
        return ModelList(
            data=[ModelCard(id=served.id, root=served.source, revision=served.revision, version=served.version)]
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}}}},
    )
    async def chat_completions(self, request: Request):
        # Read with a limit (base64 images make the JSON ~4/3 of the image bytes), then validate.
        limit = -(-self.config.limits.max_body_bytes // 3) * 4 + 64 * 1024
        try:
            raw = await read_body(request, limit)
            # Parsing megabytes of JSON (a base64 image) is CPU work: off the event loop when large.
            if len(raw) > OFF_LOOP_BYTES:
                body = await asyncio.to_thread(ChatCompletionRequest.model_validate_json, raw)
            else:
                body = ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as error:
            raise validation_error(error.errors(), skip=0) from None
        served = self.config.model.served_model_name
        if body.model != served:
            raise NotFoundError(f"The model {body.model!r} does not exist; this server serves {served!r}.", "model")
        image_url, text = image_and_instruction(body.messages)
        image_bytes = await self.within_deadline(
            load_image(image_url, self.config.image_url, self.config.limits.max_body_bytes)
        )
        self.metrics.pages.inc()
        family = self.config.model.family
        if family != "hunyuan_vl":
            text = None  # models without instructions: the task (default text) decides, the chat text is ignored
        task_request = build_task_request(
            body.task, body.lang, body.fields, body.target_language, self._check_prompt(text), family,
            self.config.model.version,
        )
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        sampling = self._sampling(task_request, max_tokens, body.temperature)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            deadline = time.monotonic() + self.config.limits.request_timeout_s
            # Preprocessing errors (bad image) surface here, before the 200 of the stream is sent.
            prepared_response, embeddings_response = self._stages(image_bytes, task_request)
            prepared = (await self.within_deadline(prepared_response)).release_pixels()
            del prepared_response
            chunks = self.decoder.options(stream=True).generate_stream.remote(
                prepared.prompt, embeddings_response, sampling, request_id
            )
            return StreamingResponse(
                self._chat_stream(chunks, request_id, include_usage, deadline), media_type="text/event-stream"
            )
        _, result = await self.within_deadline(self._run(image_bytes, task_request, sampling, request_id))
        if task_request.output == "document" and not task_request.custom_prompt:
            result.text = normalize_document(result.text)  # as /ocr does: the official doc_parse post-processing
        if self.config.security.log_payloads:
            logger.info("request %s: text %r", request_id, result.text)
        return ChatCompletion(
            id=request_id,
            model=served,
            choices=[Choice(message=AssistantMessage(content=result.text), finish_reason=openai_finish_reason(result.finish_reason))],
            usage=ChatUsage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
        )

    async def _chat_stream(self, chunks, request_id: str, include_usage: bool, deadline: float) -> AsyncIterator[str]:
        model = self.config.model.served_model_name
        yield sse_event(ChatCompletionChunk(id=request_id, model=model, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]))
        prompt_tokens = completion_tokens = 0
        try:
            while True:
                try:
                    chunk = await next_or_none(chunks, deadline - time.monotonic())
                except (asyncio.TimeoutError, TimeoutError):
                    chunks.cancel()  # stops the decoder's generation
                    raise RequestTimeoutError(
                        f"The request did not finish within {self.config.limits.request_timeout_s:g} s and was "
                        "cancelled; retry later or with a smaller max_tokens."
                    ) from None
                if chunk is None:
                    break
                prompt_tokens = prompt_tokens or chunk.prompt_tokens
                completion_tokens += len(chunk.token_ids)
                finish = openai_finish_reason(chunk.finish_reason) if chunk.finish_reason else None
                if chunk.text or finish:
                    delta = Delta(content=chunk.text) if chunk.text else Delta()
                    yield sse_event(
                        ChatCompletionChunk(id=request_id, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish)])
                    )
        except Exception as error:  # the status line is sent already: report in the stream, OpenAI style
            service_error = as_service_error(error)
            self.metrics.errors.inc(tags={"error_type": service_error.error_type})
            yield sse_event(service_error.to_dict())
            yield sse_event("[DONE]")
            return
        if include_usage:
            usage = ChatUsage(
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
            )
            yield sse_event(ChatCompletionChunk(id=request_id, model=model, choices=[], usage=usage))
        yield sse_event("[DONE]")

    # ------------------------------------------------------------------ health

    @app.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def healthz(self) -> JSONResponse:
        stages = {}
        handles = {"preprocessor": self.preprocessor, "encoder": self.encoder, "decoder": self.decoder}
        for name, handle in ((name, handle) for name, handle in handles.items() if handle is not None):
            try:
                await asyncio.wait_for(handle.ping.remote(), HEALTH_PING_TIMEOUT_S)
                stages[name] = "ok"
            except (asyncio.TimeoutError, TimeoutError):
                stages[name] = f"unavailable: no answer within {HEALTH_PING_TIMEOUT_S:g} s"
            except Exception as error:  # a stage that cannot answer makes the service unhealthy
                stages[name] = f"unavailable: {type(error).__name__}"
        healthy = all(state == "ok" for state in stages.values())
        body = HealthResponse(status="ok" if healthy else "unavailable", stages=stages, model=self.served_model)
        return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
