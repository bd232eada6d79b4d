"""VisionEncoder stage (fraction of a GPU): pixels -> image embeddings (HunyuanOCR) or detected text
regions (PP-OCR), concurrent requests batched."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from serve_app.config import OCRAppConfig
from serve_app.hunyuan_vl import encode_images, load_vision_tower, resolve_device
from serve_app.model_files import resolve_model_path
from serve_app.stage_io import DetectedText, ImageEmbeddings, PreparedImage


class VisionTowerEncoder:
    """HunyuanOCR: the vision tower alone, several images per call."""

    def __init__(self, config: OCRAppConfig):
        self.tower = load_vision_tower(
            resolve_model_path(config.model), config.model.dtype, resolve_device(config.model.device)
        )

    def encode(self, batch: list[PreparedImage]) -> list[ImageEmbeddings]:
        started = time.perf_counter()
        embeddings = encode_images(
            self.tower, [item.pixel_values for item in batch], [item.image_grid_thw for item in batch]
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [
            ImageEmbeddings(embeddings=emb, image_grid_thw=item.image_grid_thw, encode_ms=elapsed_ms, batch_size=len(batch))
            for emb, item in zip(embeddings, batch)
        ]


class TextDetectionEncoder:
    """PP-OCR family: text detection, crops and angle correction (one image at a time)."""

    def __init__(self, config: OCRAppConfig):
        from serve_app.lite_ocr import TextDetector

        self.detector = TextDetector(num_threads=config.model.num_threads)

    def encode(self, batch: list[PreparedImage]) -> list[DetectedText]:
        started = time.perf_counter()
        regions = [self.detector.detect(item.pixel_values) for item in batch]
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [DetectedText(regions=found, encode_ms=elapsed_ms, batch_size=len(batch)) for found in regions]


@serve.deployment
class VisionEncoder:
    def __init__(self, config: OCRAppConfig):
        family_encoder = TextDetectionEncoder if config.model.family == "pp_ocr" else VisionTowerEncoder
        self.encoder = family_encoder(config)
        self.encode_batch.set_max_batch_size(config.encoder.max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(config.encoder.batch_wait_timeout_s)

    async def encode(self, prepared: PreparedImage) -> ImageEmbeddings | DetectedText:
        return await self.encode_batch(prepared)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def encode_batch(self, batch: list[PreparedImage]) -> list[ImageEmbeddings | DetectedText]:
        # The whole batch in one call, off the event loop so requests keep queueing.
        return await asyncio.to_thread(self.encoder.encode, batch)

    async def ping(self) -> bool:
        return True
