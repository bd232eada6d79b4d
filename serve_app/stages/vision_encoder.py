"""VisionEncoder stage (fraction of a GPU): pixels -> image embeddings (HunyuanOCR) or detected text
regions (PP-OCR), concurrent requests batched."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from serve_app.stages.batching import BatchWhileBusy
from serve_app.config import OCRAppConfig
from serve_app.errors import quiet_client_error_logs
from serve_app.model.hunyuan_vl import encode_image_tensors, encode_images, load_vision_tower, resolve_device
from serve_app.metrics import EncoderMetrics
from serve_app.model.model_files import resolve_model_path
from serve_app.stage_io import DetectedText, ImageEmbeddings, PreparedImage


class VisionTowerEncoder:
    """HunyuanOCR: the vision tower alone, several images per call."""

    def __init__(self, config: OCRAppConfig):
        self.tower = load_vision_tower(
            resolve_model_path(config.model), config.model.dtype, resolve_device(config.model.device)
        )

    def encode(self, batch: list[PreparedImage]) -> list[ImageEmbeddings]:
        started = time.perf_counter()
        normalization = batch[0].normalization  # one preprocessor config, so one normalisation per batch
        if any(item.normalization != normalization for item in batch):
            raise ValueError("images in one batch were prepared with different pixel normalisations")
        embeddings = encode_image_tensors(
            self.tower, [item.pixels for item in batch], [item.image_grid_thw for item in batch], normalization
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        # In the tower's dtype, so a bfloat16 tower's embeddings cross to the decoder in half the bytes of float32.
        return [
            ImageEmbeddings.from_tensor(emb, item.image_grid_thw, encode_ms=elapsed_ms, batch_size=len(batch))
            for emb, item in zip(embeddings, batch)
        ]

    def probe(self) -> None:
        """The smallest image the tower takes (one merged token) through a real forward pass."""
        config = self.tower.config
        merge = int(config.spatial_merge_size)
        patch_dim = 3 * int(getattr(config, "temporal_patch_size", 1) or 1) * int(config.patch_size) ** 2
        grid = np.array([1, merge, merge], dtype=np.int64)
        (embeddings,) = encode_images(self.tower, [np.zeros((merge * merge, patch_dim), np.float32)], [grid])
        if not np.isfinite(embeddings).all():
            raise RuntimeError("the vision tower produced non-finite embeddings")


class TextDetectionEncoder:
    """PP-OCR family: text detection, crops and angle correction (one image at a time)."""

    def __init__(self, config: OCRAppConfig):
        from serve_app.model.lite_ocr import TextDetector

        self.detector = TextDetector(num_threads=config.model.num_threads)

    def encode(self, batch: list[PreparedImage]) -> list[DetectedText]:
        started = time.perf_counter()
        regions = [self.detector.detect(item.pixels) for item in batch]
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [DetectedText(regions=found, encode_ms=elapsed_ms, batch_size=len(batch)) for found in regions]

    def probe(self) -> None:
        self.detector.detect(np.full((32, 32, 3), 255, np.uint8))


@serve.deployment
class VisionEncoder:
    def __init__(self, config: OCRAppConfig):
        config.encoder.apply_cpu_nice()
        quiet_client_error_logs()
        family_encoder = TextDetectionEncoder if config.model.family == "pp_ocr" else VisionTowerEncoder
        self.encoder = family_encoder(config)
        # One tower call at a time; a call takes every image that queued while the previous one ran.
        self.batcher = BatchWhileBusy(
            self._encode_batch, config.encoder.max_batch_size, config.encoder.batch_wait_timeout_s
        )
        self.health_period_s = config.encoder.health_check_period_s
        self.last_success = time.monotonic()
        self.failure: str | None = None  # the device error of the last failed batch, until a batch succeeds
        self.metrics = EncoderMetrics()

    async def encode(self, prepared: PreparedImage) -> ImageEmbeddings | DetectedText:
        return await self.batcher.submit(prepared)

    def _encode_batch(self, batch: list[PreparedImage]) -> list[ImageEmbeddings | DetectedText]:
        # On the batcher's thread, off the event loop, so requests keep queueing.
        try:
            results = self.encoder.encode(batch)
        except (RuntimeError, MemoryError) as error:  # device/runtime failures, not bad input (ValueError)
            self.failure = f"{type(error).__name__}: {error}"[:300]
            raise
        self.last_success, self.failure = time.monotonic(), None
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_latency_ms.observe(results[0].encode_ms if results else 0.0)
        for result in results:
            if isinstance(result, ImageEmbeddings):
                self.metrics.image_tokens.inc(len(result.embeddings))
                self.metrics.image_tokens_per_image.observe(len(result.embeddings))
        return results

    async def check_health(self) -> None:
        """Serve replaces the replica when this raises. Recent successful batches prove the tower works;
        otherwise (idle, or the last batch failed) a real forward pass on a minimal input must succeed."""
        if self.failure is None and time.monotonic() - self.last_success < self.health_period_s:
            return
        try:
            await asyncio.to_thread(self.encoder.probe)
        except Exception as error:
            raise RuntimeError(f"vision encoder probe failed: {type(error).__name__}: {error}") from error
        self.last_success, self.failure = time.monotonic(), None

    async def ping(self) -> bool:
        return True
