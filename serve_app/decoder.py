"""Decoder stage (fraction of a GPU): prompt + precomputed image embeddings -> text."""

from __future__ import annotations

from ray import serve

from serve_app.config import OCRAppConfig
from serve_app.engines import DecoderEngine, load_engine_class
from serve_app.model_files import resolve_model_path
from serve_app.stage_io import DecodeRequest, DecodeResult, ImageEmbeddings, SamplingOptions


@serve.deployment
class Decoder:
    async def __init__(self, config: OCRAppConfig, engine_class: type[DecoderEngine] | None = None):
        # `engine_class` lets tests inject an engine; production picks it from `decoder.engine`.
        engine_class = engine_class or load_engine_class(config.decoder.engine)
        self.engine = engine_class(config.model, config.decoder, resolve_model_path(config.model))
        await self.engine.start()

    async def generate(
        self, prompt: str, image: ImageEmbeddings, sampling: SamplingOptions, request_id: str
    ) -> DecodeResult:
        result = await self.engine.generate(DecodeRequest(prompt, image, sampling, request_id))
        result.encode_ms, result.encoder_batch_size = image.encode_ms, image.batch_size
        return result

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def ping(self) -> bool:
        return True

    async def __del__(self):
        engine = getattr(self, "engine", None)  # absent if the constructor failed
        if engine is not None:
            await engine.shutdown()
