"""The decoder engine contract. The Decoder deployment holds one engine, chosen by config."""

from __future__ import annotations

from abc import ABC, abstractmethod

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.stage_io import DecodeRequest, DecodeResult


class DecoderEngine(ABC):
    """Generates text from a prompt plus precomputed image embeddings."""

    def __init__(self, model: ModelConfig, decoder: DecoderConfig, model_path: str):
        self.model = model
        self.decoder = decoder
        self.model_path = model_path  # local checkpoint directory (already resolved)

    @abstractmethod
    async def start(self) -> None:
        """Load weights and warm up. Called once in the replica's constructor."""

    @abstractmethod
    async def generate(self, request: DecodeRequest) -> DecodeResult:
        """Greedy-decode one request. Concurrent calls must be safe."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine can no longer serve (Ray Serve then replaces the replica)."""

    async def shutdown(self) -> None:
        """Release engine resources (processes, memory)."""
