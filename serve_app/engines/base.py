"""The decoder engine contract. The Decoder deployment holds one engine, chosen by config."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.stage_io import DecodeChunk, DecodeRequest, DecodeResult


class DecoderEngine(ABC):
    """Generates text from a prompt plus the image as the encoder stage made it (embeddings, detected text), or,
    for engines that run the vision tower themselves (`vision_tower`), the prepared image."""

    supports_vision_tower = False

    def __init__(self, model: ModelConfig, decoder: DecoderConfig, model_path: str, vision_tower: bool = False):
        if vision_tower and not self.supports_vision_tower:
            raise ValueError(f"{type(self).__name__} cannot run the vision tower (encoder.placement in_decoder)")
        self.model = model
        self.decoder = decoder
        self.model_path = model_path  # local checkpoint directory (already resolved)
        self.vision_tower = vision_tower  # encoder.placement in_decoder: requests bring PreparedImage

    @abstractmethod
    async def start(self) -> None:
        """Load weights and warm up. Called once in the replica's constructor."""

    @abstractmethod
    def stream(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        """Greedy-decode one request, yielding new text as it comes; the last chunk has the finish
        reason. Closing the iterator early must stop (abort) the generation. Concurrent calls must be safe."""

    async def generate(self, request: DecodeRequest) -> DecodeResult:
        """The whole generation at once."""
        return await collect(self.stream(request))

    @abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine can no longer serve (Ray Serve then replaces the replica)."""

    async def shutdown(self) -> None:
        """Release engine resources (processes, memory)."""


async def collect(chunks: AsyncIterator[DecodeChunk]) -> DecodeResult:
    started = time.perf_counter()
    texts: list[str] = []
    token_ids: list[int] = []
    prompt_tokens, prompt_token_ids, finish_reason, spotted = 0, [], None, None
    warnings: list[str] = []
    async for chunk in chunks:
        warnings.extend(chunk.warnings or ())
        spotted = chunk.spotted if chunk.spotted is not None else spotted
        texts.append(chunk.text)
        token_ids.extend(chunk.token_ids)
        prompt_tokens = prompt_tokens or chunk.prompt_tokens
        prompt_token_ids = prompt_token_ids or chunk.prompt_token_ids or []
        finish_reason = chunk.finish_reason or finish_reason
    if finish_reason is None:
        raise RuntimeError("the engine's stream ended without a finish reason")
    return DecodeResult(
        text="".join(texts),
        token_ids=token_ids,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids),
        finish_reason=finish_reason,
        prompt_token_ids=prompt_token_ids,
        spotted=spotted,
        decode_ms=(time.perf_counter() - started) * 1000,
        warnings=warnings,
    )
