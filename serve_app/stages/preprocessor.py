"""Preprocessor stage (CPU): untrusted bytes -> model-ready pixels and the chat prompt."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from serve_app.config import OCRAppConfig
from serve_app.errors import InvalidRequestError, quiet_client_error_logs
from serve_app.model.hunyuan_vl import image_to_patch_pixels
from serve_app.inputs.documents import pdf_page_count, render_page
from serve_app.metrics import PreprocessorMetrics
from serve_app.inputs.images import DecodedImage, budget_size, decode_image, fit_decoded
from serve_app.model.model_files import resolve_model_path
from serve_app.profiles import chat_messages, profile_for
from serve_app.stage_io import PixelNormalization, PreparedImage


class ImagePreparer:
    """The stage's work without Ray: the model's own processor and chat template, plus our limits."""

    def __init__(self, config: OCRAppConfig, model_path: str):
        from transformers import AutoProcessor

        self.config = config
        # The PIL backend resizes exactly as HunyuanOCR's reference processor (bicubic PIL). Its settings
        # (patch size, normalisation) define the model input: image_to_patch_pixels lays the pixels out in
        # its patches, and the encoder normalises them as it would.
        self.processor = AutoProcessor.from_pretrained(model_path, backend="pil")
        image_processor = self.processor.image_processor
        self.normalization = PixelNormalization.of(image_processor)
        self.resize_factor = image_processor.patch_size * image_processor.merge_size
        # The model input size of an image of a given (oriented) size: JPEGs are decoded at reduced
        # size (1/2, 1/4, 1/8) when that still covers it, instead of decoding every pixel to throw most away.
        self.model_size_for = functools.partial(
            budget_size, factor=self.resize_factor, min_pixels=config.model.min_pixels, max_pixels=config.model.max_pixels
        )
        self.system_message = profile_for(config.model.version).system_message
        self.reserved_tokens = [token for token in self.processor.tokenizer.all_special_tokens if token]
        # A big photo is resized in bands on these threads (the same pixels up to rounding).
        self.image_threads = config.preprocessor.image_threads
        self.image_pool = (
            ThreadPoolExecutor(self.image_threads, thread_name_prefix="image-bands") if self.image_threads > 1 else None
        )

    def build_prompt(self, instruction: str) -> str:
        # A special token typed into the instruction (an image placeholder, a turn marker) would change
        # the prompt's structure, not its text.
        for token in self.reserved_tokens:
            if token in instruction:
                raise InvalidRequestError(f"prompt contains the reserved token {token!r}; remove it.", "prompt")
        # The official clients' message list (an empty system message first), through the checkpoint's own template.
        messages = chat_messages(instruction, self.system_message)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prepare(self, image_bytes: bytes, instruction: str) -> PreparedImage:
        started = time.perf_counter()
        decoded = decode_image(image_bytes, self.config.limits, target_size=self.model_size_for)
        return self.prepare_decoded(decoded, instruction, started)

    def prepare_decoded(self, decoded: DecodedImage, instruction: str, started: float) -> PreparedImage:
        # The target size comes from the full-resolution size: the same model input (and grid) whether
        # or not the JPEG was decoded at reduced size.
        model = self.config.model
        model_image = fit_decoded(
            decoded, self.resize_factor, model.min_pixels, model.max_pixels, self.image_pool, self.image_threads
        )
        # Already at the model input size, so the processor would only normalise and patchify: patchify
        # here, in 8 bits (a quarter of the bytes to hand over); the encoder normalises on its device.
        patches, image_grid_thw = image_to_patch_pixels(model_image, self.processor.image_processor)
        return PreparedImage(
            pixels=patches,
            image_grid_thw=image_grid_thw,
            prompt=self.build_prompt(instruction),
            original_size=decoded.original_size,
            oriented_size=decoded.oriented_size,  # full resolution: spotting boxes scale to it
            model_size=model_image.size,
            exif_orientation=decoded.exif_orientation,
            normalization=self.normalization,
            preprocess_ms=(time.perf_counter() - started) * 1000,
        )


class PixelPreparer:
    """The PP-OCR family's preparation: decoded, validated, oriented RGB pixels. Its detector sizes
    the image itself, and it takes no instruction.

    No reduced-size JPEG decoding here: the detector's line boxes are in pixels of these pixels and are
    mapped back to the caller's image as they are (postprocess.structure), so the pixels must be full size."""

    def __init__(self, config: OCRAppConfig):
        self.config = config

    def prepare(self, image_bytes: bytes, instruction: str) -> PreparedImage:
        started = time.perf_counter()
        return self.prepare_decoded(decode_image(image_bytes, self.config.limits), instruction, started)

    def prepare_decoded(self, decoded: DecodedImage, instruction: str, started: float) -> PreparedImage:
        return PreparedImage(
            pixels=np.asarray(decoded.image, dtype=np.uint8),
            image_grid_thw=np.zeros(3, dtype=np.int64),
            prompt="",
            original_size=decoded.original_size,
            oriented_size=decoded.image.size,
            model_size=decoded.image.size,
            exif_orientation=decoded.exif_orientation,
            preprocess_ms=(time.perf_counter() - started) * 1000,
        )


@serve.deployment
class Preprocessor:
    def __init__(self, config: OCRAppConfig):
        config.preprocessor.apply_cpu_nice()
        quiet_client_error_logs()  # a bad upload is one INFO line in this replica's log, not a traceback
        self.config = config
        if config.model.family == "pp_ocr":
            self.preparer = PixelPreparer(config)
        else:
            self.preparer = ImagePreparer(config, resolve_model_path(config.model))
        self.metrics = PreprocessorMetrics()

    def _observed(self, prepared: PreparedImage) -> PreparedImage:
        self.metrics.latency_ms.observe(prepared.preprocess_ms)
        self.metrics.image_pixels.observe(prepared.original_size[0] * prepared.original_size[1] / 1e6)
        return prepared

    async def prepare(self, image_bytes: bytes, instruction: str) -> PreparedImage:
        # Decoding and resizing are CPU work: keep them off the replica's event loop. The caller (the ingress)
        # reads the prompt and sizes; the pixels go by reference, for the encoder alone.
        return self._observed(
            await asyncio.to_thread(lambda: self.preparer.prepare(image_bytes, instruction).pixels_by_reference())
        )

    async def pdf_page_count(self, pdf_bytes: bytes) -> int:
        return await asyncio.to_thread(pdf_page_count, pdf_bytes)

    async def prepare_pdf_page(self, pdf_bytes: bytes, page_number: int, instruction: str) -> PreparedImage:
        return self._observed(
            await asyncio.to_thread(lambda: self._prepare_pdf_page(pdf_bytes, page_number, instruction).pixels_by_reference())
        )

    def _prepare_pdf_page(self, pdf_bytes: bytes, page_number: int, instruction: str) -> PreparedImage:
        started = time.perf_counter()
        limits, model = self.config.limits, self.config.model
        page = render_page(pdf_bytes, page_number, model.max_pixels, limits.pdf_max_dpi)
        decoded = DecodedImage(page, page.size, exif_orientation=1, format="PDF")
        return self.preparer.prepare_decoded(decoded, instruction, started)

    async def ping(self) -> bool:
        return True
