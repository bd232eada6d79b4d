"""VLLMEngine (AsyncLLM + the HunYuanVL embeddings subclass) on the tiny checkpoint, with the CPU deployment's
engine settings: decoding from precomputed embeddings == transformers' generate from pixels, token for token.

One engine for the whole module (vLLM starts in ~15-25 s on 2 cores). AsyncLLM binds to the event loop of its
first request, so every test runs its coroutines on one module-scoped loop.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


from serve_app.config import DecoderConfig, ModelConfig, OCRAppConfig  # noqa: E402
from serve_app.engines.vllm_engine import VLLMEngine, build_engine_args, validate_engine_args  # noqa: E402
from serve_app.model.hunyuan_vl import encode_images, image_token_count, load_vision_tower  # noqa: E402
from serve_app.errors import InvalidRequestError
from serve_app.stage_io import DecodeRequest, ImageEmbeddings, SamplingOptions  # noqa: E402
from serve_app.engines.vllm_hunyuan_embeds import HunYuanVLEmbedsDataParser  # noqa: E402
from tests.conftest import make_image, to_bytes  # noqa: E402
from tests.integration.conftest import start_engine  # noqa: E402

pytestmark = pytest.mark.integration

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu.yaml"
# What configs/cpu.yaml's decoder uses; the file wins when present so the test follows the deployment.
FALLBACK_ENGINE_ARGS = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 * 2**20,
    "max_model_len": 2048,  # a 512x512 image (274 image tokens) + prompt + ~1.7k generated tokens
    "max_num_seqs": 32,
    "enable_prefix_caching": False,
    "mm_processor_cache_gb": 0,
}
INSTRUCTION = "提取图中的文字。"
MAX_TOKENS = 24
# Landscape, portrait, a long strip, and one larger than the pixel budget (downscaled to the largest grid).
SIZES = [(320, 200), (120, 400), (600, 90), (900, 700)]


def _deployment_configs(checkpoint: Path) -> tuple[ModelConfig, DecoderConfig]:
    if CPU_CONFIG.exists():
        app = OCRAppConfig.from_serve_config(CPU_CONFIG)
        model = app.model.model_copy(update={"source": str(checkpoint)})
        return model, app.decoder
    model = ModelConfig(
        source=str(checkpoint), dtype="float32", device="cpu", min_pixels=128 * 128, max_pixels=512 * 512
    )
    return model, DecoderConfig(engine="vllm", engine_args=FALLBACK_ENGINE_ARGS)


@pytest.fixture(scope="module")
def configs(tiny_checkpoint):
    model, decoder = _deployment_configs(tiny_checkpoint)
    assert model.dtype == "float32" and decoder.engine_args.get("enforce_eager") is True
    return model, decoder


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, configs, loop):
    model, decoder = configs
    engine = VLLMEngine(model, decoder, str(tiny_checkpoint))
    start_engine(engine, loop, decoder)
    yield engine
    loop.run_until_complete(engine.shutdown())


@pytest.fixture(scope="module")
def cases(tiny_checkpoint, configs):
    """Per image: prompt, embeddings from the pipeline's vision tower, and transformers' greedy output."""
    from transformers import AutoProcessor, HunYuanVLForConditionalGeneration

    model_config, _ = configs
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    full_model = HunYuanVLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    tower = load_vision_tower(str(tiny_checkpoint), torch.float32, "cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    budget = {"shortest_edge": model_config.min_pixels, "longest_edge": model_config.max_pixels}
    out = []
    for seed, (width, height) in enumerate(SIZES):
        image = make_image(width, height, seed=seed)
        inputs = processor(text=[prompt], images=[image], size=budget, return_tensors="pt")
        with torch.inference_mode():
            generated = full_model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        grid = inputs["image_grid_thw"][0].numpy()
        (embeddings,) = encode_images(tower, [inputs["pixel_values"].numpy()], [grid])
        embeddings.setflags(write=False)  # as they arrive through Ray
        out.append(
            {
                "prompt": prompt,
                "image": ImageEmbeddings(embeddings=embeddings, image_grid_thw=grid),
                "hf_ids": generated[0, inputs["input_ids"].shape[1] :].tolist(),
                "hf_prompt_tokens": inputs["input_ids"].shape[1],
            }
        )
    grids = {tuple(case["image"].image_grid_thw.tolist()) for case in out}
    assert len(grids) == len(SIZES), f"images should give distinct grids, got {grids}"
    return out


def _request(case, request_id: str = "", embeddings: np.ndarray | None = None, max_tokens: int = MAX_TOKENS):
    image = case["image"]
    if embeddings is not None:
        image = ImageEmbeddings(embeddings=embeddings, image_grid_thw=image.image_grid_thw)
    return DecodeRequest(case["prompt"], image, SamplingOptions(max_tokens=max_tokens), request_id)


def test_embeddings_match_transformers_generate(engine, cases, loop):
    for index, case in enumerate(cases):
        result = loop.run_until_complete(engine.generate(_request(case, f"match-{index}")))
        assert result.token_ids == case["hf_ids"], f"image {index} grid {case['image'].image_grid_thw.tolist()}"
        assert result.prompt_tokens == case["hf_prompt_tokens"]
        assert result.completion_tokens == len(result.token_ids)
        assert result.finish_reason == ("length" if len(result.token_ids) == MAX_TOKENS else "stop")
        assert isinstance(result.text, str) and result.decode_ms > 0


def test_concurrent_requests_match_sequential(engine, cases, loop):
    requests = [_request(case, f"batch-{i}") for i, case in enumerate(cases + cases)]

    async def all_at_once():
        return await asyncio.gather(*(engine.generate(request) for request in requests))

    results = loop.run_until_complete(all_at_once())
    assert [r.token_ids for r in results] == [case["hf_ids"] for case in cases + cases]


def test_duplicate_request_ids_are_independent(engine, cases, loop):
    async def same_id():
        return await asyncio.gather(*(engine.generate(_request(case, "same-id")) for case in cases))

    assert [r.token_ids for r in loop.run_until_complete(same_id())] == [case["hf_ids"] for case in cases]


def test_random_embeddings_change_the_output(engine, cases, loop):
    case = cases[0]
    noise = np.random.default_rng(0).standard_normal(case["image"].embeddings.shape).astype(np.float32)
    result = loop.run_until_complete(engine.generate(_request(case, "random", embeddings=noise)))
    assert result.token_ids != case["hf_ids"]


@pytest.mark.parametrize("change", ["one_row_short", "one_row_extra", "wrong_hidden", "flat"])
def test_malformed_embeddings_are_rejected_with_value_error(engine, cases, loop, change):
    embeddings = cases[0]["image"].embeddings
    bad = {
        "one_row_short": embeddings[:-1],
        "one_row_extra": np.concatenate([embeddings, embeddings[:1]]),
        "wrong_hidden": embeddings[:, :-1],
        "flat": embeddings.reshape(-1),
    }[change]
    with pytest.raises(ValueError, match="image_grid_thw"):
        loop.run_until_complete(engine.generate(_request(cases[0], f"bad-{change}", embeddings=bad)))
    # A rejected request leaves the engine serving.
    loop.run_until_complete(engine.check_health())
    assert loop.run_until_complete(engine.generate(_request(cases[0]))).token_ids == cases[0]["hf_ids"]


@pytest.mark.parametrize("change", ["no_placeholder", "two_placeholders", "max_tokens_0"])
def test_bad_prompt_or_sampling_is_rejected_with_value_error(engine, cases, loop, change):
    case = cases[0]
    image_token = engine._image_token
    prompt, sampling = case["prompt"], SamplingOptions(max_tokens=8)
    if change == "no_placeholder":
        prompt = prompt.replace(image_token, "")
    elif change == "two_placeholders":  # e.g. an instruction that contains the image token
        prompt = prompt.replace(INSTRUCTION, INSTRUCTION + image_token)
    else:
        sampling = SamplingOptions(max_tokens=0)
    # A malformed prompt is a pipeline bug (ValueError -> 500); a bad max_tokens is the caller's (400).
    with pytest.raises(InvalidRequestError if change == "max_tokens_0" else ValueError):
        loop.run_until_complete(engine.generate(DecodeRequest(prompt, case["image"], sampling, f"bad-{change}")))


def test_a_prepared_image_is_refused_without_the_vision_tower(tiny_checkpoint, engine, configs, loop):
    """The split placement's engine has no tower (nothing built or loaded): pixels are a pipeline error, not a crash."""
    from serve_app.stages.preprocessor import ImagePreparer

    model, _ = configs
    prepared = ImagePreparer(OCRAppConfig(model=model), str(tiny_checkpoint)).prepare(to_bytes(make_image(64, 48)), INSTRUCTION)
    with pytest.raises(ValueError, match="encoder.placement split"):
        loop.run_until_complete(engine.generate(DecodeRequest(prepared.prompt, prepared, SamplingOptions(max_tokens=4))))
    loop.run_until_complete(engine.check_health())


def test_vllm_parser_rejects_wrong_row_count():
    """The same check inside vLLM, for callers that bypass VLLMEngine (e.g. AsyncLLM directly)."""
    parser = HunYuanVLEmbedsDataParser(2, expected_hidden_size=128)
    grid = torch.tensor([1, 8, 12])  # 4 * (6 + 1) + 2 = 30 rows
    items = parser.parse_mm_data({"image": {"image_embeds": torch.zeros(30, 128), "image_grid_thw": grid}})
    assert items.get_all_counts() == {"image": 1}
    with pytest.raises(ValueError, match=r"expected \(30, hidden\)"):
        parser.parse_mm_data({"image": {"image_embeds": torch.zeros(29, 128), "image_grid_thw": grid}})
    with pytest.raises(ValueError, match="hidden size"):
        parser.parse_mm_data({"image": {"image_embeds": torch.zeros(30, 64), "image_grid_thw": grid}})
    with pytest.raises(ValueError, match="image_grid_thw"):
        parser.parse_mm_data({"image": {"image_embeds": torch.zeros(30, 128)}})


def test_prompt_longer_than_max_model_len_is_rejected(engine, cases, loop):
    case = cases[0]
    long_prompt = case["prompt"].replace(INSTRUCTION, INSTRUCTION * 2000)
    request = DecodeRequest(long_prompt, case["image"], SamplingOptions(max_tokens=8), "too-long")
    with pytest.raises(InvalidRequestError, match="decoder rejected the request") as raised:
        loop.run_until_complete(engine.generate(request))
    assert raised.value.status_code == 400


def test_cancelled_request_is_aborted(engine, cases, loop):
    async def cancel_midway():
        task = asyncio.ensure_future(engine.generate(_request(cases[0], "cancel-me", max_tokens=1500)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if engine._llm.get_num_unfinished_requests() == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the cancelled request is still running in vLLM")

    loop.run_until_complete(cancel_midway())
    loop.run_until_complete(engine.check_health())


def test_check_health_on_live_engine(engine, loop):
    loop.run_until_complete(engine.check_health())


def test_engine_args_validation(configs, tiny_checkpoint):
    model, decoder = configs
    validate_engine_args(decoder.engine_args)
    args = build_engine_args(model, decoder, str(tiny_checkpoint))
    assert args["enable_mm_embeds"] is True and args["limit_mm_per_prompt"] == {"image": 0}
    assert args["dtype"] == model.dtype
    with pytest.raises(ValueError, match="'max_model_length'.*did you mean 'max_model_len'"):
        validate_engine_args({"max_model_length": 4096})
    with pytest.raises(ValueError, match="'dtype' is set by the engine"):
        validate_engine_args({"dtype": "float16"})


def test_bfloat16_embeddings_cross_as_bits_and_decode_as_their_float32_values(tiny_checkpoint, configs, loop):
    """The GPU default dtype: a bfloat16 tower's embeddings leave the VisionEncoder as 2-byte bits (half of
    float32's bytes), and a bfloat16 vLLM engine decodes them token for token as the same values sent as float32
    (the handoff before). Its own engine, stopped before the tests that count engine cores."""
    from serve_app.stages.preprocessor import ImagePreparer
    from serve_app.stages.vision_encoder import VisionTowerEncoder

    model, decoder = configs
    model = model.model_copy(update={"dtype": "bfloat16"})
    app = OCRAppConfig(model=model)
    prepared = [
        ImagePreparer(app, str(tiny_checkpoint)).prepare(to_bytes(make_image(width, height, seed)), INSTRUCTION)
        for seed, (width, height) in enumerate(SIZES[:2])
    ]
    encoder = VisionTowerEncoder(app)
    images = encoder.encode(prepared)  # one tower call, as the stage batches them
    # The handoff before: the same tower call's values as float32 arrays.
    pixels, grids = [item.pixels for item in prepared], [item.image_grid_thw for item in prepared]
    float32_arrays = encode_images(encoder.tower, pixels, grids, prepared[0].normalization)
    engine = VLLMEngine(model, decoder, str(tiny_checkpoint))
    loop.run_until_complete(engine.start())
    try:
        for index, (item, image, float32_array) in enumerate(zip(prepared, images, float32_arrays)):
            tokens = image_token_count(item.image_grid_thw, engine._merge_size)
            assert image.dtype == "bfloat16" and image.embeddings.dtype == np.int16
            assert image.embeddings.nbytes == tokens * engine._hidden_size * 2
            as_bits = pickle.loads(pickle.dumps(image, protocol=5))
            as_float32 = ImageEmbeddings(float32_array, item.image_grid_thw)
            bits, floats = (
                loop.run_until_complete(
                    engine.generate(DecodeRequest(item.prompt, handed, SamplingOptions(max_tokens=MAX_TOKENS)))
                )
                for handed in (as_bits, as_float32)
            )
            assert bits.completion_tokens > 0 and bits.token_ids == floats.token_ids, f"image {index}"
    finally:
        loop.run_until_complete(engine.shutdown())


def _own_engine_cores() -> list:
    """vLLM engine cores that are this process's own children. The session's Ray (started by this process too)
    runs the served graphs' decoders, whose engine cores are further down the tree and are not ours."""
    import psutil

    return [p for p in psutil.Process().children() if "EngineCore" in " ".join(p.cmdline() + [p.name()])]


def test_the_cpu_engine_runs_its_worker_inside_the_engine_core(engine):
    """decoder.cpu_worker_in_engine_core (default on): vLLM's UniProc executor, so no worker process that the
    engine core would busy-wait on (half of vLLM's CPU per request on 2 cores)."""
    assert engine.decoder.cpu_worker_in_engine_core
    assert engine._llm.vllm_config.parallel_config.distributed_executor_backend == "uni"
    [core] = _own_engine_cores()
    workers = [p for p in core.children(recursive=True) if "Worker" in " ".join(p.cmdline() + [p.name()])]
    assert workers == []


@pytest.mark.parametrize("worker_in_engine_core,backend", [(True, "uni"), (False, "mp")])
def test_cpu_executor_follows_the_config(tiny_checkpoint, configs, monkeypatch, worker_in_engine_core, backend):
    from vllm.engine.arg_utils import AsyncEngineArgs

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # whatever the engine sets, restored afterwards
    model, decoder = configs
    decoder = decoder.model_copy(update={"cpu_worker_in_engine_core": worker_in_engine_core})
    engine = VLLMEngine(model, decoder, str(tiny_checkpoint))
    engine._choose_cpu_executor()
    vllm_config = AsyncEngineArgs(**engine.engine_args).create_engine_config()
    assert vllm_config.parallel_config.distributed_executor_backend == backend


def test_engine_memory_levels_off_under_batches_of_every_size(engine, cases, loop):
    """Batches of 1-32 requests of varied lengths make new operand shapes for vLLM's CPU matmuls, and oneDNN
    compiles a kernel per shape. With oneDNN's default cache (1024 kernels) the engine core grew ~200 MiB from
    round 40 to 120 of this load and ~450 MiB in all; cpu.yaml's decoder.onednn_primitive_cache_capacity (64)
    holds it (measured: +84 MiB by round 80, +1 MiB after)."""
    import random

    rng = random.Random(0)
    (core,) = _own_engine_cores()  # not the session graphs' engine cores, further down this process's tree

    async def one(index: int) -> None:
        case = cases[rng.randrange(len(cases))]
        sampling = SamplingOptions(max_tokens=rng.randint(4, 40), temperature=0.0)
        await engine.generate(DecodeRequest(case["prompt"], case["image"], sampling, f"shape-{index}"))

    async def batch(round_index: int) -> None:
        await asyncio.gather(*(one(round_index * 100 + i) for i in range(rng.randint(1, 32))))

    rss_mib = {}
    for round_index in range(121):
        loop.run_until_complete(batch(round_index))
        if round_index in (40, 120):
            rss_mib[round_index] = core.memory_info().rss / 2**20
    assert rss_mib[120] - rss_mib[40] < 40, rss_mib


def test_check_health_raises_once_the_engine_core_dies(engine, loop):
    """Runs last: kills the module's engine core process, as a crash (OOM kill, segfault) would."""
    from vllm.v1.engine.exceptions import EngineDeadError

    cores = _own_engine_cores()  # not the served graphs' engine cores: they must not be killed here
    assert len(cores) == 1, cores
    cores[0].kill()

    async def wait_for_death():
        for _ in range(100):
            try:
                await engine.check_health()
            except EngineDeadError:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("check_health still passes 10 s after the engine core was killed")

    loop.run_until_complete(wait_for_death())
