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
        return await self.engine.generate(DecodeRequest(prompt, image, sampling, request_id))

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def ping(self) -> bool:
        return True

    async def __del__(self):
        await self.engine.shutdown()
