"""VisionEncoder stage (fraction of a GPU): pixels -> image embeddings (HunyuanOCR) or detected text
regions (PP-OCR), concurrent requests batched."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ray import serve

from serve_app.stages.batching import BatchWhileBusy
from serve_app.config import OCRAppConfig
from serve_app.errors import ServiceUnavailableError, quiet_client_error_logs
from serve_app.model.hunyuan_vl import encode_image_tensors, encode_images, load_vision_tower, resolve_device
from serve_app.metrics import EncoderMetrics
from serve_app.model.model_files import resolve_model_path
from serve_app.stage_io import DetectedText, ImageEmbeddings, PreparedImage

logger = logging.getLogger("ray.serve")


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error (torch's own class, or a RuntimeError that says so, as older kernels raise)."""
    oom_class = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_class is not None and isinstance(error, oom_class)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def free_cuda_cache() -> None:
    """Return the caching allocator's free blocks to the GPU (only where CUDA is in use in this process)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _out_of_memory_error(detail: str) -> ServiceUnavailableError:
    """The caller's error (torch's message, with the device's memory figures, only in the log). A fresh error,
    not chained to the OOM: that one's traceback holds the failed call's frames, and so their tensors."""
    logger.warning("vision tower out of memory on a single image: %s", detail)
    return ServiceUnavailableError(
        "The vision encoder ran out of GPU memory on this image; retry shortly, or send a smaller image."
    )


def encode_splitting_on_oom(encode: Callable[[list], Sequence], batch: list) -> list:
    """`encode(batch)`; if that runs out of GPU memory, each image again on its own (the cache freed between),
    so one large image does not fail the others. Per image: its result, or the exception it got alone (an
    out-of-memory as a retriable ServiceUnavailableError). Other errors of the whole batch are raised."""
    try:
        return list(encode(batch))
    except Exception as error:  # noqa: BLE001 - only out-of-memory is handled here
        if not is_out_of_memory(error):
            raise
        detail = f"{type(error).__name__}: {error}"[:500]
    # Outside the except block: the error's traceback (and the tensors its frames hold) is released.
    free_cuda_cache()
    if len(batch) == 1:
        return [_out_of_memory_error(detail)]
    logger.warning("vision tower ran out of memory on a batch of %d images; retrying them one at a time", len(batch))
    results: list = []
    for item in batch:
        failure = None
        try:
            (result,) = encode([item])
        except Exception as error:  # noqa: BLE001 - the failure belongs to this image alone
            failure = error
            if is_out_of_memory(error):
                failure = _out_of_memory_error(f"{type(error).__name__}: {error}"[:500])
            result = None
        results.append(failure if failure is not None else result)
        del failure, result
        free_cuda_cache()
    return results


class VisionTowerEncoder:
    """HunyuanOCR: the vision tower alone, several images per call."""

    @staticmethod
    def patch_count(item: PreparedImage) -> int:
        """16x16 patches the tower takes for this image (its cost in a batch)."""
        return int(item.pixels.shape[0])

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

        self.detector = TextDetector(num_threads=config.model.num_threads, spinning=config.model.thread_spinning)

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
        # One tower call at a time; a call takes every image that queued while the previous one ran (up to
        # max_batch_size images and, for the vision tower, max_batch_patches patches).
        patch_count = getattr(self.encoder, "patch_count", None)
        self.batcher = BatchWhileBusy(
            self._encode_batch,
            config.encoder.max_batch_size,
            config.encoder.batch_wait_timeout_s,
            weight=patch_count,
            max_weight=config.encoder.max_batch_patches if patch_count is not None else None,
        )
        self.health_period_s = config.encoder.health_check_period_s
        self.last_success = time.monotonic()
        self.failure: str | None = None  # the device error of the last failed batch, until a batch succeeds
        self.metrics = EncoderMetrics()

    async def encode(self, prepared: PreparedImage) -> ImageEmbeddings | DetectedText:
        return await self.batcher.submit(await prepared.with_pixels())

    def _encode_batch(self, batch: list[PreparedImage]) -> list[ImageEmbeddings | DetectedText | Exception]:
        # On the batcher's thread, off the event loop, so requests keep queueing. An out-of-memory batch is
        # retried image by image; an image that still fails gets its own error (a result that is an exception).
        try:
            results = encode_splitting_on_oom(self._encode_call, batch)
        except (RuntimeError, MemoryError) as error:  # device/runtime failures, not bad input (ValueError)
            self.failure = f"{type(error).__name__}: {error}"[:300]
            raise
        failed = [result for result in results if isinstance(result, BaseException)]
        if failed and len(failed) == len(results):  # nothing went through: the health check probes the tower
            self.failure = f"{type(failed[0]).__name__}: {failed[0]}"[:300]
        else:
            self.last_success, self.failure = time.monotonic(), None
        return results

    def _encode_call(self, batch: list[PreparedImage]) -> list[ImageEmbeddings | DetectedText]:
        """One call of the encoder, measured."""
        results = self.encoder.encode(batch)
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
