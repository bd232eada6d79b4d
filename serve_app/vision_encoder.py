"""VisionEncoder stage (fraction of a GPU): pixels -> image embeddings, concurrent requests batched."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from serve_app.config import OCRAppConfig
from serve_app.hunyuan_vl import encode_images, load_vision_tower, resolve_device
from serve_app.model_files import resolve_model_path
from serve_app.stage_io import ImageEmbeddings, PreparedImage

@serve.deployment
class VisionEncoder:
    def __init__(self, config: OCRAppConfig):
        self.tower = load_vision_tower(
            resolve_model_path(config.model), config.model.dtype, resolve_device(config.model.device)
        )
        self.encode_batch.set_max_batch_size(config.encoder.max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(config.encoder.batch_wait_timeout_s)

    async def encode(self, prepared: PreparedImage) -> ImageEmbeddings:
        return await self.encode_batch(prepared)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def encode_batch(self, batch: list[PreparedImage]) -> list[ImageEmbeddings]:
        started = time.perf_counter()
        # One vision tower call for the whole batch, off the event loop so requests keep queueing.
        embeddings = await asyncio.to_thread(
            encode_images,
            self.tower,
            [item.pixel_values for item in batch],
            [item.image_grid_thw for item in batch],
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [
            ImageEmbeddings(embeddings=emb, image_grid_thw=item.image_grid_thw, encode_ms=elapsed_ms, batch_size=len(batch))
            for emb, item in zip(embeddings, batch)
        ]

    async def ping(self) -> bool:
        return True
