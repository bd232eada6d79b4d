"""encoder.placement in_decoder at the engine: VLLMEngine with the vision tower, fed the Preprocessor's 8-bit patches.

The same pages through the split path's handoff (the VisionEncoder stage's embeddings) and through the patches must
give the same tokens, and both transformers' own generate from the image. One engine for the module (~30 s).
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from serve_app.config import OCRAppConfig
from serve_app.engines.vllm_engine import VLLMEngine
from serve_app.errors import InvalidRequestError
from serve_app.stage_io import DecodeRequest, PreparedImage, SamplingOptions
from tests.conftest import make_image, to_bytes
from tests.integration.conftest import graph_config, start_engine
from tests.reference import reference_generate

pytestmark = pytest.mark.integration

INSTRUCTION = "提取图中的文字。"
MAX_TOKENS = 24
# Landscape, portrait, a long strip, one over the pixel budget (downscaled to the largest grid), and one below it.
SIZES = [(320, 200), (120, 400), (600, 90), (900, 700), (24, 18)]


@pytest.fixture(scope="module")
def app(tiny_checkpoint) -> OCRAppConfig:
    config = graph_config(str(tiny_checkpoint), "vllm").model_dump()
    config["encoder"]["placement"] = "in_decoder"
    return OCRAppConfig.model_validate(config)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, app, loop):
    engine = VLLMEngine(app.model, app.decoder, str(tiny_checkpoint), vision_tower=True)
    start_engine(engine, loop, app.decoder)
    yield engine
    loop.run_until_complete(engine.shutdown())


@pytest.fixture(scope="module")
def pages(tiny_checkpoint, app) -> list[dict]:
    """Per page: the Preprocessor's output, the VisionEncoder stage's embeddings of it, transformers' tokens."""
    from serve_app.stages.preprocessor import ImagePreparer
    from serve_app.stages.vision_encoder import VisionTowerEncoder

    preparer = ImagePreparer(app, str(tiny_checkpoint))
    images = [make_image(width, height, seed=seed) for seed, (width, height) in enumerate(SIZES)]
    prepared = [preparer.prepare(to_bytes(image), INSTRUCTION) for image in images]
    embeddings = VisionTowerEncoder(app).encode(prepared)  # one tower call, as the stage batches them
    out = []
    for image, page, embedded in zip(images, prepared, embeddings):
        _, expected = reference_generate(
            str(tiny_checkpoint), image, INSTRUCTION, MAX_TOKENS, app.model.min_pixels, app.model.max_pixels,
            app.decoding.repetition_penalty,
        )
        page.pixels.setflags(write=False)  # as they arrive through Ray's object store
        out.append({"prepared": page, "embeddings": embedded, "expected": expected})
    return out


def _generate(engine, loop, prompt: str, image, request_id: str, app: OCRAppConfig):
    sampling = SamplingOptions(max_tokens=MAX_TOKENS, repetition_penalty=app.decoding.repetition_penalty)
    return loop.run_until_complete(engine.generate(DecodeRequest(prompt, image, sampling, request_id)))


def test_patches_give_the_split_paths_tokens_and_transformers_generates(engine, pages, loop, app):
    for index, page in enumerate(pages):
        prepared = page["prepared"]
        fused = _generate(engine, loop, prepared.prompt, prepared, f"patches-{index}", app)
        split = _generate(engine, loop, prepared.prompt, page["embeddings"], f"embeds-{index}", app)
        grid = prepared.image_grid_thw.tolist()
        assert fused.token_ids == split.token_ids == page["expected"], f"page {index} grid {grid}"
        assert fused.prompt_tokens == split.prompt_tokens


def test_patches_and_embeddings_batch_together_concurrently(engine, pages, loop, app):
    """Pages from patches and from embeddings in one continuous batch: each still gets its own tokens."""
    sampling = SamplingOptions(max_tokens=MAX_TOKENS, repetition_penalty=app.decoding.repetition_penalty)

    async def all_at_once():
        requests = [
            engine.generate(DecodeRequest(page["prepared"].prompt, image, sampling, f"mixed-{index}-{kind}"))
            for index, page in enumerate(pages)
            for kind, image in (("patches", page["prepared"]), ("embeds", page["embeddings"]))
        ]
        return await asyncio.gather(*requests)

    results = loop.run_until_complete(all_at_once())
    expected = [page["expected"] for page in pages for _ in range(2)]
    assert [result.token_ids for result in results] == expected


@pytest.mark.parametrize("change", ["one_patch_short", "float_pixels", "grid_mismatch"])
def test_malformed_patches_are_rejected_and_the_engine_keeps_serving(engine, pages, loop, app, change):
    prepared: PreparedImage = pages[0]["prepared"]
    bad = {
        "one_patch_short": dataclasses.replace(prepared, pixels=prepared.pixels[:-1]),
        "float_pixels": dataclasses.replace(prepared, pixels=prepared.pixels.astype(np.float32)),
        "grid_mismatch": dataclasses.replace(prepared, image_grid_thw=np.array([1, 2, 2], dtype=np.int64)),
    }[change]
    with pytest.raises(InvalidRequestError, match="pixel_values"):
        _generate(engine, loop, prepared.prompt, bad, f"bad-{change}", app)
    loop.run_until_complete(engine.check_health())
    assert _generate(engine, loop, prepared.prompt, prepared, f"after-{change}", app).token_ids == pages[0]["expected"]
