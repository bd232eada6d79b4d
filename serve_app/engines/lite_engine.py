"""Decoder engine of the PP-OCR family: batched text recognition of the detected line crops.

The VisionEncoder stage ran detection (boxes, crops, angle); this engine reads the crops with
PP-OCRv6 recognition (rapidocr's own pre/post-processing) and writes lines in reading order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.engines.base import DecoderEngine
from serve_app.stage_io import DecodeChunk, DecodeRequest, DetectedText, SpottedLine


class TextRecognitionEngine(DecoderEngine):
    def __init__(self, model: ModelConfig, decoder: DecoderConfig, model_path: str, vision_tower: bool = False):
        super().__init__(model, decoder, model_path, vision_tower)
        self._recognizer = None

    async def start(self) -> None:
        from serve_app.model.lite_ocr import TextRecognizer

        self._recognizer = TextRecognizer(num_threads=self.model.num_threads, spinning=self.model.thread_spinning)

    async def stream(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        from serve_app.model.lite_ocr import assemble_lines

        if self._recognizer is None:
            raise RuntimeError("the recognition engine is not started")
        detected = request.image
        if not isinstance(detected, DetectedText):
            raise TypeError(f"the PP-OCR decoder needs detected text regions, got {type(detected).__name__}")
        results = await asyncio.to_thread(self._recognizer.recognize, [region.crop for region in detected.regions])
        lines = assemble_lines(detected.regions, results)
        text = "\n".join(line.text for line in lines)
        # No tokens here: usage counts recognized lines as "completion tokens" would mislead; report 0.
        yield DecodeChunk(
            text=text,
            token_ids=[],
            prompt_tokens=0,
            finish_reason="stop",
            spotted=[SpottedLine(line.text, line.bbox) for line in lines],
        )

    async def check_health(self) -> None:
        if self._recognizer is None:
            raise RuntimeError("the recognition engine is not started")

    async def shutdown(self) -> None:
        self._recognizer = None
