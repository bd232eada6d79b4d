"""The graph's stage code in one process (no Ray, no HTTP): the split pipeline (Preprocessor -> VisionEncoder
with its batching -> Decoder), pages encoded once, and vLLM held to a fixed output length."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def fixed_length_outputs() -> None:
    """Make every vLLM request of this process run to max_tokens (`ignore_eos=True`).

    VLLMEngine builds its SamplingParams with `from vllm import SamplingParams` at call time, and
    SamplingOptions has no ignore_eos: replacing that module attribute with a factory that adds it
    keeps the engine's own request path while fixing the output length. Bench processes only; the
    real class stays at `vllm._real_sampling_params`.
    """
    import vllm

    real = getattr(vllm, "_real_sampling_params", None) or vllm.SamplingParams

    def sampling_params(*args, **kwargs):
        kwargs.setdefault("ignore_eos", True)
        return real(*args, **kwargs)

    vllm._real_sampling_params = real
    vllm.SamplingParams = sampling_params


def encode_pages(config, model_path: str, pages: list[bytes]) -> tuple[list, list]:
    """The Preprocessor's and the vision tower's code, run once on `pages` (the text task's prompt):
    their PreparedImages and embeddings, in order."""
    from serve_app.model.hunyuan_vl import encode_images, load_vision_tower, resolve_device
    from serve_app.profiles import TEXT_ZH
    from serve_app.stages.preprocessor import ImagePreparer

    preparer = ImagePreparer(config, model_path)
    tower = load_vision_tower(model_path, config.model.dtype, resolve_device(config.model.device))
    prepared = [preparer.prepare(page, TEXT_ZH) for page in pages]
    embeddings = encode_images(
        tower, [p.pixels for p in prepared], [p.image_grid_thw for p in prepared], preparer.normalization
    )
    return prepared, embeddings


class BatchingEncoder:
    """The VisionEncoder stage without Ray: its tower encoder (VisionTowerEncoder) behind the same batching
    (serve_app.stages.batching.BatchWhileBusy), recording each call's size and time."""

    def __init__(self, tower_encoder, max_batch: int, wait_s: float):
        from serve_app.stages.batching import BatchWhileBusy

        self.tower_encoder = tower_encoder
        self.batcher = BatchWhileBusy(self._encode, max_batch, wait_s)
        self.batch_sizes: list[int] = []
        self.batch_ms: list[float] = []

    async def encode(self, prepared):
        return await self.batcher.submit(prepared)

    def _encode(self, items: list) -> list:
        results = self.tower_encoder.encode(items)
        self.batch_sizes.append(len(items))
        self.batch_ms.append(results[0].encode_ms)
        return results

    async def close(self) -> None:
        await self.batcher.close()


class SplitPipeline:
    """Preprocessor -> VisionEncoder -> Decoder stage code in one process (no Ray, no HTTP)."""

    def __init__(self, config, model_path: str):
        from serve_app.engines.vllm_engine import VLLMEngine
        from serve_app.model.hunyuan_vl import resolve_device
        from serve_app.stages.preprocessor import ImagePreparer
        from serve_app.stages.vision_encoder import VisionTowerEncoder

        self.config = config
        self.preparer = ImagePreparer(config, model_path)
        self.device = resolve_device(config.model.device)
        tower_encoder = VisionTowerEncoder(config)  # the stage's own code: the checkpoint of config.model
        self.tower = tower_encoder.tower
        self.encoder = BatchingEncoder(tower_encoder, config.encoder.max_batch_size, config.encoder.batch_wait_timeout_s)
        self.engine = VLLMEngine(config.model, config.decoder, model_path)
        self.start_s = 0.0

    async def start(self) -> None:
        started = time.perf_counter()
        await self.engine.start()
        self.start_s = time.perf_counter() - started

    async def run(self, payload: bytes, max_tokens: int) -> dict[str, Any]:
        """One page end to end (the text task); token counts and per-stage times."""
        from serve_app.profiles import TEXT_ZH
        from serve_app.stage_io import DecodeRequest, SamplingOptions

        started = time.perf_counter()
        prepared = await asyncio.to_thread(self.preparer.prepare, payload, TEXT_ZH)
        prepared_at = time.perf_counter()
        embeddings = await self.encoder.encode(prepared)
        encoded_at = time.perf_counter()
        result = await self.engine.generate(
            DecodeRequest(prepared.prompt, embeddings, SamplingOptions(max_tokens=max_tokens))
        )
        done = time.perf_counter()
        return {
            "completion_tokens": result.completion_tokens,
            "prompt_tokens": result.prompt_tokens,
            "preprocess_s": prepared_at - started,
            "encode_s": encoded_at - prepared_at,
            "decode_s": done - encoded_at,
        }

    async def shutdown(self) -> None:
        await self.encoder.close()
        await self.engine.shutdown()
