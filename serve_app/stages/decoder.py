"""Decoder stage (fraction of a GPU): prompt + precomputed image embeddings -> text; with encoder.placement
in_decoder, prompt + the Preprocessor's prepared image -> text (vLLM runs the vision tower)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator

from ray import serve

from serve_app.config import OCRAppConfig, RepetitionGuardConfig
from serve_app.engines import DecoderEngine, load_engine_class
from serve_app.engines.base import collect
from serve_app.errors import EngineStoppedError, quiet_client_error_logs
from serve_app.metrics import DecoderMetrics
from serve_app.model.model_files import resolve_model_path
from serve_app.results.repetition import TailRepetitionCheck, clean_repeated_substrings
from serve_app.stage_io import (
    DecodeChunk,
    DecodeRequest,
    DecodeResult,
    DetectedText,
    ImageEmbeddings,
    PreparedImage,
    SamplingOptions,
)

StageImage = ImageEmbeddings | DetectedText | PreparedImage  # what the encoder made, or the page itself (in_decoder)

# Tokens per chunk when only the whole text is wanted: fewer output objects, chunks and guard steps.
COLLECT_CHUNK_TOKENS = 16
# After the engine died: time for the failed requests' 503s to leave before the replica exits.
EXIT_AFTER_ENGINE_DEATH_S = 1.0

logger = logging.getLogger("ray.serve")


async def guarded(chunks: AsyncIterator[DecodeChunk], guard: RepetitionGuardConfig) -> AsyncIterator[DecodeChunk]:
    """Pass chunks through; stop (closing the engine's stream, which aborts it) once the text's tail loops, as
    the official clients' streaming check does."""
    check = TailRepetitionCheck(
        guard.start_chars, guard.check_every_chars, guard.window_chars, guard.max_unit_chars, guard.min_repeats
    )
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if guard.enabled and check.add(chunk.text) and chunk.finish_reason is None:
                chunk.finish_reason = "repetition"
                yield chunk
                return
            yield chunk


def clean_result(result: DecodeResult, guard: RepetitionGuardConfig) -> DecodeResult:
    """The official final cleanup: a long text whose tail loops keeps one copy of it."""
    if result.finish_reason == "repetition":
        result.warnings.append("The model started repeating itself; generation was stopped early.")
    if guard.enabled:
        text = clean_repeated_substrings(result.text, guard.cleanup_min_chars, guard.cleanup_min_repeats)
        if text != result.text:
            result.text = text
            result.warnings.append("A repeated tail was removed from the text.")
    return result


async def with_pixels(image: StageImage) -> StageImage:
    """A prepared image's pixels fetched from the object store (in_decoder); other inputs as they are."""
    return await image.with_pixels() if isinstance(image, PreparedImage) else image


@serve.deployment
class Decoder:
    async def __init__(self, config: OCRAppConfig, engine_class: type[DecoderEngine] | None = None):
        config.decoder.apply_cpu_nice()  # before the engine starts, so its processes inherit it
        quiet_client_error_logs()
        # `engine_class` lets tests inject an engine; production picks it from `decoder.engine`.
        engine_name = "pp_ocr" if config.model.family == "pp_ocr" else config.decoder.engine
        engine_class = engine_class or load_engine_class(engine_name)
        self.guard = config.repetition_guard
        self.exiting = False
        self.metrics = DecoderMetrics()
        self.engine = engine_class(
            config.model, config.decoder, resolve_model_path(config.model),
            vision_tower=config.encoder.placement == "in_decoder",
        )
        await self.engine.start()

    def replace_replica(self, reason: str) -> None:
        """The engine is dead, so every later request here would fail: exit the process, and Ray Serve
        starts a new replica now instead of after several failed health checks."""
        if not self.exiting:
            self.exiting = True
            logger.error("decoder engine stopped (%s); exiting so that Ray Serve replaces this replica", reason)
            asyncio.get_running_loop().call_later(EXIT_AFTER_ENGINE_DEATH_S, os._exit, 1)

    async def generate(self, prompt: str, image: StageImage, sampling: SamplingOptions, request_id: str) -> DecodeResult:
        started = time.perf_counter()
        image = await with_pixels(image)
        # Nobody reads the chunks but the repetition guard: chunks of several tokens instead of one make that
        # many times fewer output objects, chunks and guard/metrics steps here.
        interval = max(sampling.stream_interval, COLLECT_CHUNK_TOKENS)
        sampling = dataclasses.replace(sampling, stream_interval=interval)
        stream = self._measured(self.engine.stream(DecodeRequest(prompt, image, sampling, request_id)))
        try:
            result = clean_result(await collect(stream), self.guard)
        except EngineStoppedError as error:
            self.replace_replica(type(error.__cause__).__name__)
            raise
        result.decode_ms = (time.perf_counter() - started) * 1000
        if not isinstance(image, PreparedImage):  # in_decoder: the tower's time is part of decode_ms
            result.encode_ms, result.encoder_batch_size = image.encode_ms, image.batch_size
        return result

    async def generate_stream(
        self, prompt: str, image: StageImage, sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[DecodeChunk]:
        """Streaming variant (call through a handle with `stream=True`)."""
        image = await with_pixels(image)
        try:
            async for chunk in self._measured(self.engine.stream(DecodeRequest(prompt, image, sampling, request_id))):
                yield chunk
        except EngineStoppedError as error:
            self.replace_replica(type(error.__cause__).__name__)
            raise

    async def _measured(self, chunks: AsyncIterator[DecodeChunk]) -> AsyncIterator[DecodeChunk]:
        """The engine's stream through the repetition guard, observed for the decoder's metrics."""
        started = time.perf_counter()
        prompt_tokens = output_tokens = 0
        finish_reason = None
        try:
            async with contextlib.aclosing(guarded(chunks, self.guard)) as stream:
                async for chunk in stream:
                    if chunk.token_ids and output_tokens == 0:
                        self.metrics.time_to_first_token_ms.observe((time.perf_counter() - started) * 1000)
                    output_tokens += len(chunk.token_ids)
                    prompt_tokens = prompt_tokens or chunk.prompt_tokens
                    finish_reason = chunk.finish_reason or finish_reason
                    yield chunk
        finally:
            self.metrics.latency_ms.observe((time.perf_counter() - started) * 1000)
            if output_tokens:  # Ray counters take positive increments only
                self.metrics.output_tokens.inc(output_tokens)
            if prompt_tokens:
                self.metrics.prompt_tokens.inc(prompt_tokens)
            self.metrics.finished.inc(tags={"finish_reason": finish_reason or "aborted"})

    async def check_health(self) -> None:
        try:
            await self.engine.check_health()
        except Exception as error:
            self.replace_replica(f"health check: {type(error).__name__}")
            raise

    async def ping(self) -> bool:
        return True

    async def __del__(self):
        engine = getattr(self, "engine", None)  # absent if the constructor failed
        if engine is not None:
            await engine.shutdown()
