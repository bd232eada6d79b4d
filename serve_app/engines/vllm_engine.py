"""Production decoder engine: vLLM's AsyncLLM generating from a prompt plus precomputed image embeddings.

The embeddings reach vLLM through the HunYuanVL subclass in `serve_app.engines.vllm_hunyuan_embeds`
(registered with `model_class_overrides`, input enabled by `enable_mm_embeds`). By default the
image limit is 0 ("embeddings only"), so the decoder never builds or loads the vision tower. With
`vision_tower=True` (encoder.placement in_decoder) the engine loads it and takes the Preprocessor's
8-bit patches instead, running the same tower forward as the VisionEncoder stage inside vLLM.
Continuous batching, KV cache management and scheduling are vLLM's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import logging
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.engines.engine_guard import POLL_S, child_pids, guard_children
from serve_app.engines.base import DecoderEngine
from serve_app.errors import EngineStoppedError, InvalidRequestError
from serve_app.model.hunyuan_vl import torch_dtype
from serve_app.stage_io import DecodeChunk, DecodeRequest, PreparedImage
from serve_app.engines.vllm_hunyuan_embeds import MODEL_CLASS_OVERRIDE, image_token_counts

logger = logging.getLogger(__name__)

ARCHITECTURE = "HunYuanVLForConditionalGeneration"
# Derived from ModelConfig / fixed by this engine; setting them in engine_args would contradict it.
ENGINE_OWNED_ARGS = frozenset({"model", "dtype", "enable_mm_embeds", "model_class_overrides"})


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {field.name for field in dataclasses.fields(AsyncEngineArgs)}


def validate_engine_args(engine_args: dict[str, Any]) -> None:
    """Raise ValueError naming every key that is not a vLLM AsyncEngineArgs field (or is engine-owned)."""
    names = _engine_arg_names()
    problems = []
    for key in sorted(engine_args):
        if key in ENGINE_OWNED_ARGS:
            problems.append(f"{key!r} is set by the engine from the model config")
        elif key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{key!r} is not a vLLM AsyncEngineArgs field{hint}")
    if problems:
        raise ValueError("; ".join(problems))


def build_engine_args(
    model: ModelConfig, decoder: DecoderConfig, model_path: str, vision_tower: bool = False
) -> dict[str, Any]:
    """Keyword arguments for AsyncEngineArgs: our defaults, overridden by the config's engine_args, plus the
    settings this engine owns (checkpoint, dtype, the embeddings model class)."""
    validate_engine_args(decoder.engine_args)
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": model.served_model_name,
        # Split placement: embeddings only, no vision tower in the decoder (the VisionEncoder stage owns it).
        # In the decoder: one image per prompt, as HunyuanOCR's official `vllm serve` recipe.
        "limit_mm_per_prompt": {"image": 1 if vision_tower else 0},
        # HunyuanOCR's official serving flags: every page is a new image, so prefixes rarely repeat.
        "enable_prefix_caching": False,
        "mm_processor_cache_gb": 0,
        # Guided JSON (the fields task): compact whitespace, or a weak model pads JSON with endless spaces.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if vision_tower:
        # vLLM sizes its encoder budget and cache from the largest image its processor would make: the config's
        # pixel budget, not the checkpoint's (the tiny one's is 256x256; a page larger than that would never fit).
        args["mm_processor_kwargs"] = {"size": {"shortest_edge": model.min_pixels, "longest_edge": model.max_pixels}}
    args.update(decoder.engine_args)
    args.update(
        dtype=model.dtype,
        enable_mm_embeds=True,
        model_class_overrides={ARCHITECTURE: MODEL_CLASS_OVERRIDE},
    )
    return args


def fit_max_tokens(params, prompt_tokens: int, max_model_len: int) -> str | None:
    """Clamp `params.max_tokens` to what fits the context after the prompt (a page's image tokens included);
    the warning to return, or None. A prompt that leaves no room is refused (ValueError: a 400)."""
    room = max_model_len - prompt_tokens
    if room < 1:
        raise ValueError(
            f"the prompt takes {prompt_tokens} tokens (the image included); the decoder's max_model_len is {max_model_len}"
        )
    if params.max_tokens <= room:
        return None
    asked, params.max_tokens = params.max_tokens, room
    return (
        f"max_tokens was lowered from {asked} to {room}: the prompt takes {prompt_tokens} of the decoder's "
        f"{max_model_len} context tokens."
    )


def _ray_stat_loggers() -> list | None:
    """In a Ray process, vLLM's engine metrics (vllm:* -> ray_vllm_*) go out through Ray's metrics."""
    import ray

    if not ray.is_initialized():
        return None
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    return [RayPrometheusStatLogger]


class VLLMEngine(DecoderEngine):
    supports_vision_tower = True

    def __init__(self, model: ModelConfig, decoder: DecoderConfig, model_path: str, vision_tower: bool = False):
        super().__init__(model, decoder, model_path, vision_tower)
        self.engine_args = build_engine_args(model, decoder, model_path, vision_tower)
        self.torch_dtype = torch_dtype(model.dtype)
        self._llm = None
        self._in_flight: set[str] = set()
        self._merge_size = 2
        self._hidden_size: int | None = None
        self._image_token = ""
        self._guard: subprocess.Popen | None = None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        from vllm.config import StructuredOutputsConfig

        engine_args = dict(self.engine_args)
        if isinstance(engine_args.get("structured_outputs_config"), dict):
            engine_args["structured_outputs_config"] = StructuredOutputsConfig(**engine_args["structured_outputs_config"])
        self._choose_cpu_executor()
        from vllm.platforms import current_platform

        from serve_app.engines.engine_guard import engines_dir, record_engine, wait_for_orphaned_engines

        engines = None
        if current_platform.is_cuda_alike():
            # A replica replacing one whose engine died: that engine's processes can outlive it for a while,
            # holding their GPU memory. Wait for them (killing those whose decoder is gone) before starting.
            engines = engines_dir()
            await asyncio.to_thread(wait_for_orphaned_engines, engines)
        children_before = child_pids()
        try:
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=_ray_stat_loggers())
        except Exception as error:
            # vLLM's own message is "Engine core initialization failed. See root cause above":
            # say which model and arguments, the cause is chained.
            raise RuntimeError(
                f"vLLM engine failed to start for {self.model_path} with {self.decoder.engine_args}: {error}"
            ) from error
        hf_config = self._llm.model_config.hf_config
        self._merge_size = hf_config.vision_config.spatial_merge_size
        self._hidden_size = hf_config.get_text_config().hidden_size
        self._image_token = self._llm.get_tokenizer().convert_ids_to_tokens(hf_config.image_token_id)
        self._guard = guard_children(children_before)  # vLLM's processes: stopped even if we are killed
        if engines is not None:  # for the next engine on these GPUs, should this replica die
            name = ""
            with contextlib.suppress(Exception):  # outside a Serve replica (tests, benches) there is no context
                from ray import serve

                context = serve.get_replica_context()
                name = f"{context.app_name}/{context.deployment}"
            record_engine(engines, children_before, name)
        logger.info("vLLM engine started in %.1f s", time.perf_counter() - started)

    def _choose_cpu_executor(self) -> None:
        """vLLM's CPU platform swaps its one-process UniProc executor for the MP one (a separate worker process)
        unless VLLM_ENABLE_V1_MULTIPROCESSING is "0". AsyncLLM still runs its engine core in a process of its own
        either way; the variable only keeps the worker inside it (decoder.cpu_worker_in_engine_core)."""
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # the setting is read when the engine's config is made, in this process
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.decoder.cpu_worker_in_engine_core else "1"

    def _engine(self):
        if self._llm is None:
            raise RuntimeError("vLLM engine is not running (not started, or shut down)")
        return self._llm

    def _embeddings_tensor(self, request: DecodeRequest) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = request.image.to_tensor(self.torch_dtype)  # a copy: Ray's arrays are read-only
        grid = torch.from_numpy(np.array(request.image.image_grid_thw, dtype=np.int64, copy=True)).reshape(3)
        # Checked here too (vLLM's parser checks again) so a bad stage output fails with a plain ValueError.
        expected = int(image_token_counts(grid, self._merge_size).sum())
        if embeds.ndim != 2 or embeds.shape[0] != expected or embeds.shape[1] != self._hidden_size:
            raise ValueError(
                f"image embeddings have shape {tuple(embeds.shape)}, but image_grid_thw {grid.tolist()} "
                f"needs ({expected}, {self._hidden_size})"
            )
        return embeds, grid

    def _patches_input(self, image: PreparedImage) -> dict[str, torch.Tensor]:
        """The Preprocessor's 8-bit patches as vLLM's image input (encoder.placement in_decoder)."""
        if not self.vision_tower:
            raise ValueError("this decoder runs without a vision tower (encoder.placement split): send embeddings")
        if image.pixels is None or image.normalization is None:
            raise ValueError("prepared image without its pixels or their normalisation")
        normalization = image.normalization
        return {
            "pixel_values": torch.from_numpy(np.array(image.pixels, copy=True)),  # writable; vLLM checks the rest
            "pixel_normalization": torch.tensor([normalization.scale, normalization.offset], dtype=torch.float32),
            "image_grid_thw": torch.from_numpy(np.array(image.image_grid_thw, dtype=np.int64, copy=True)).reshape(3),
        }

    async def stream(self, request: DecodeRequest) -> AsyncIterator[DecodeChunk]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        llm = self._engine()
        if request.prompt.count(self._image_token) != 1:
            # Also catches an instruction that smuggles in the image token: vLLM would expand only one.
            raise ValueError(f"the prompt must contain exactly one image placeholder {self._image_token!r}")
        if isinstance(request.image, PreparedImage):
            image = self._patches_input(request.image)
        else:
            embeds, grid = self._embeddings_tensor(request)
            image = {"image_embeds": embeds, "image_grid_thw": grid}
        sampling = request.sampling
        prompt = {"prompt": request.prompt, "multi_modal_data": {"image": image}}
        try:
            params = SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty,
                skip_special_tokens=True,
                structured_outputs=(
                    StructuredOutputsParams(json=sampling.json_schema) if sampling.json_schema is not None else None
                ),
                output_kind=RequestOutputKind.DELTA,  # only what is new since the last chunk
                stream_interval=sampling.stream_interval,
            )
            # Render (tokenize, expand the image placeholder) ourselves, off the event loop; passing
            # raw prompts to generate() is deprecated in vLLM 0.32.
            (engine_input,) = await llm.renderer.render_cmpl_async([parse_model_prompt(llm.model_config, prompt)])
            warning = fit_max_tokens(params, len(engine_input["prompt_token_ids"]), llm.model_config.max_model_len)
        except (ValueError, VLLMClientError) as error:
            # e.g. image tokens + max_tokens over max_model_len: the caller can fix it (smaller image/max_tokens).
            raise InvalidRequestError(f"The decoder rejected the request: {error}") from error
        # vLLM aborts by external id, and aborts every request sharing it: keep ours unique.
        request_id = request.request_id or uuid.uuid4().hex
        if request_id in self._in_flight:
            request_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        self._in_flight.add(request_id)
        finished = sent_prompt = False
        try:
            async with contextlib.aclosing(llm.generate(engine_input, params, request_id)) as outputs:
                async for output in outputs:
                    completion = output.outputs[0]
                    finish_reason = completion.finish_reason if output.finished else None
                    if output.finished and finish_reason not in ("stop", "length"):
                        raise RuntimeError(f"vLLM finished request {request_id} with reason {finish_reason!r}")
                    yield DecodeChunk(
                        warnings=[warning] if warning and not sent_prompt else None,
                        text=completion.text,
                        token_ids=list(completion.token_ids),
                        prompt_tokens=len(output.prompt_token_ids or []),
                        prompt_token_ids=None if sent_prompt else list(output.prompt_token_ids or []),
                        finish_reason=finish_reason,
                    )
                    sent_prompt = True
                    finished = output.finished
        except VLLMClientError as error:
            raise InvalidRequestError(f"The decoder rejected the request: {error}") from error
        except EngineDeadError as error:
            # The Decoder replaces its replica at once (and its health check fails): retriable.
            raise EngineStoppedError("The decoder engine stopped; retry shortly.") from error
        except EngineGenerateError as error:
            if isinstance(error.__cause__, ValueError):
                raise InvalidRequestError(f"The decoder rejected the request: {error.__cause__}") from error
            raise
        finally:
            self._in_flight.discard(request_id)
            if not finished:
                # The caller stopped reading (disconnect, cancellation, repetition guard): free the sequence now.
                await asyncio.shield(llm.abort(request_id))

    async def check_health(self) -> None:
        # AsyncLLM.check_health raises EngineDeadError once the engine core process died or
        # the output loop stopped; before start / after shutdown there is no engine at all.
        await self._engine().check_health()

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
        guard, self._guard = self._guard, None
        if guard is not None:  # it exits by itself once the engine's processes are gone
            try:
                await asyncio.to_thread(guard.wait, 2 * POLL_S + 1)
            except subprocess.TimeoutExpired:
                guard.kill()
