"""The debug decoder engine: PyTorch-native `generate` on HunYuanVLForConditionalGeneration's language model.

Images arrive as precomputed embeddings (the vision tower's output). They enter the model through
transformers' `mm_encoder_outputs`, the same path the model takes after running its own vision tower, so
the input embeddings and the XD-RoPE position ids (computed from `input_ids`, `mm_token_type_ids` and
`image_grid_thw`) are exactly those of the pixel path. One request at a time; slow but a faithful reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import torch

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.engines.base import DecoderEngine
from serve_app.model.hunyuan_vl import (
    expand_image_placeholder,
    image_token_count,
    load_model_config,
    load_text_model,
    resolve_device,
    torch_dtype,
)
from serve_app.stage_io import DecodeChunk, DecodeRequest

logger = logging.getLogger(__name__)


class TransformersEngine(DecoderEngine):
    def __init__(self, model: ModelConfig, decoder: DecoderConfig, model_path: str, vision_tower: bool = False):
        super().__init__(model, decoder, model_path, vision_tower)
        self.device = resolve_device(model.device)
        self.dtype = torch_dtype(model.dtype)
        self._model = None
        self._processor = None
        self._eos_token_ids: list[int] = []
        self._pad_token_id: int | None = None
        self._merge_size = 2
        self._text_hidden_size = 0
        self._lock = asyncio.Lock()
        self._broken: str | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        async with self._lock:
            await asyncio.to_thread(self._probe)

    def _load(self) -> None:
        from transformers import AutoProcessor

        config = load_model_config(self.model_path)
        self._merge_size = int(config.vision_config.spatial_merge_size)
        self._text_hidden_size = int(config.text_config.hidden_size)
        self._processor = AutoProcessor.from_pretrained(self.model_path, backend="pil")  # tokenizer side only
        started = time.perf_counter()
        model = load_text_model(self.model_path, self.dtype, self.device)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self._processor.tokenizer.eos_token_id
        self._eos_token_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = model.generation_config.pad_token_id
        self._pad_token_id = int(pad) if pad is not None else self._processor.tokenizer.pad_token_id
        self._model = model
        self._broken = None
        logger.info(
            "transformers engine loaded %s on %s (%s) in %.1f s, vision tower not loaded",
            self.model_path,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    async def shutdown(self) -> None:
        async with self._lock:
            self._model = None
            self._broken = "engine shut down"
            if self.device == "cuda":
                torch.cuda.empty_cache()

    async def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError(f"transformers engine has no model ({self._broken or 'not started'})")
        if self._broken is not None:
            raise RuntimeError(f"transformers engine is broken: {self._broken}")
        if self._lock.locked():
            return  # busy generating: the model is in use, not stuck (Serve's health timeout bounds a hang)
        async with self._lock:
            await asyncio.to_thread(self._probe)

    def _probe(self) -> None:
        """One forward pass over a couple of tokens; marks the engine broken if it fails or gives NaN."""
        model = self._model
        if model is None:
            raise RuntimeError("transformers engine has no model")
        try:
            token = self._pad_token_id if self._pad_token_id is not None else self._eos_token_ids[0]
            with torch.inference_mode():
                ids = torch.tensor([[token, token]], device=model.device)
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
                if not bool(torch.isfinite(logits).all()):
                    raise RuntimeError("non-finite logits")
        except Exception as error:
            self._broken = f"health probe failed: {error!r}"
            raise

    # ------------------------------------------------------------------------------------------ generation

    def _inputs(self, request: DecodeRequest) -> dict:
        processor = self._processor
        grid = np.asarray(request.image.image_grid_thw, dtype=np.int64).reshape(-1)
        n_tokens = image_token_count(grid, self._merge_size)
        embeddings = np.asarray(request.image.embeddings)
        if embeddings.ndim != 2 or embeddings.shape != (n_tokens, self._text_hidden_size):
            raise ValueError(
                f"image embeddings have shape {embeddings.shape}, expected ({n_tokens}, {self._text_hidden_size}) "
                f"for image_grid_thw {grid.tolist()}"
            )
        text = expand_image_placeholder(
            request.prompt,
            n_tokens,
            processor.image_token,
            processor.image_start_token,
            processor.image_end_token,
        )
        # The processor tokenizes exactly as for pixels (same kwargs, same mm_token_type_ids); with no images
        # passed it leaves the already-expanded placeholders alone.
        encoded = processor(text=[text], return_tensors="pt")
        model = self._model
        device = model.device
        features = request.image.to_tensor(model.dtype).to(device)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {
            "input_ids": encoded["input_ids"].to(device),
            "attention_mask": encoded["attention_mask"].to(device),
            "mm_token_type_ids": encoded["mm_token_type_ids"].to(device),
            "image_grid_thw": torch.from_numpy(grid.reshape(1, 3).copy()).to(device),
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features.unsqueeze(0))},
        }

    def _generation_config(self, request: DecodeRequest):
        from transformers import GenerationConfig

        sampling = request.sampling
        if sampling.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {sampling.max_tokens}")
        options = {
            "max_new_tokens": int(sampling.max_tokens),
            "eos_token_id": self._eos_token_ids,
            "pad_token_id": self._pad_token_id,
            "repetition_penalty": float(sampling.repetition_penalty),
        }
        if sampling.temperature > 0 and sampling.top_k != 1:
            options.update(do_sample=True, temperature=float(sampling.temperature))
            options["top_k"] = int(sampling.top_k) if sampling.top_k > 0 else None
            options["top_p"] = float(sampling.top_p)
        else:
            options["do_sample"] = False
        return GenerationConfig(**options)

    def _run_generate(self, inputs: dict, generation_config, streamer, stop: threading.Event) -> None:
        model = self._model
        if model is None:
            raise RuntimeError("transformers engine is not started")
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        try:
            with torch.inference_mode():
                model.generate(
                    **inputs,
                    generation_config=generation_config,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
                )
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as error:
            if "CUDA error" in str(error) or "device-side assert" in str(error):
                self._broken = f"generate failed: {error!r}"
            raise
        finally:
            streamer.end()

    async def stream(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        if self._broken is not None:
            raise RuntimeError(f"transformers engine is broken: {self._broken}")
        if self._model is None:
            raise RuntimeError("transformers engine is not started")
        inputs = await asyncio.to_thread(self._inputs, request)
        generation_config = self._generation_config(request)
        prompt_ids = [int(t) for t in inputs["input_ids"][0].tolist()]
        prompt_tokens = len(prompt_ids)
        tokenizer = self._processor.tokenizer
        loop = asyncio.get_running_loop()
        new_tokens: asyncio.Queue[list[int] | None] = asyncio.Queue()
        stop = threading.Event()
        streamer = _QueueStreamer(loop, new_tokens)
        async with self._lock:  # one generation at a time: this is the debug engine
            worker = asyncio.ensure_future(
                asyncio.to_thread(self._run_generate, inputs, generation_config, streamer, stop)
            )
            token_ids: list[int] = []
            emitted = ""
            try:
                while (step := await new_tokens.get()) is not None:
                    token_ids.extend(step)
                    # Like vLLM's detokenizer, hold back an incomplete UTF-8 sequence until it completes.
                    text = tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")
                    delta, emitted = text[len(emitted) :], text
                    yield DecodeChunk(
                        text=delta,
                        token_ids=step,
                        prompt_tokens=prompt_tokens,
                        prompt_token_ids=None if len(token_ids) > len(step) else prompt_ids,
                    )
                await worker  # surfaces a failure of generate itself
                hit_eos = bool(token_ids) and token_ids[-1] in self._eos_token_ids
                finish_reason = "length" if not hit_eos and len(token_ids) >= request.sampling.max_tokens else "stop"
                yield DecodeChunk(
                    text="", token_ids=[], prompt_tokens=prompt_tokens, prompt_token_ids=prompt_ids, finish_reason=finish_reason
                )
            finally:
                stop.set()  # the caller stopped early (or we are done): end generate at the next token
                with contextlib.suppress(Exception):
                    await asyncio.shield(worker)


class _QueueStreamer:
    """transformers streamer: hands each new token to the event loop (the prompt comes first: skipped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, [int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
