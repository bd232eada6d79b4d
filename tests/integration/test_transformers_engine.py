"""Vision tower on its own + the transformers decoder engine from embeddings == the full model from pixels."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.config import DecoderConfig, ModelConfig
from serve_app.engines.transformers_engine import TransformersEngine
from serve_app.model.hunyuan_vl import encode_images, image_token_count, load_vision_tower, vision_key
from serve_app.stage_io import DecodeRequest, ImageEmbeddings, PixelNormalization, SamplingOptions
from tests.conftest import make_image

pytestmark = pytest.mark.integration

INSTRUCTION = "提取图中的文字。"
SIZES = [(300, 120), (90, 400), (640, 480), (33, 33), (256, 256)]


def _noisy(width: int, height: int, seed: int) -> Image.Image:
    base = np.asarray(make_image(width, height, seed=seed), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-40, 40, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images():
    return [_noisy(w, h, seed) for seed, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def full_model(tiny_checkpoint):
    from transformers import HunYuanVLForConditionalGeneration

    return HunYuanVLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tower(tiny_checkpoint):
    return load_vision_tower(str(tiny_checkpoint), torch.float32, "cpu")


@pytest.fixture(scope="module")
def prompt(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def pixels(processor, images):
    out = []
    for image in images:
        features = processor.image_processor(images=[image], return_tensors="np")
        out.append((features["pixel_values"], features["image_grid_thw"][0]))
    return out


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    engine = TransformersEngine(
        ModelConfig(source=str(tiny_checkpoint), dtype="float32", device="cpu"),
        DecoderConfig(engine="transformers"),
        str(tiny_checkpoint),
    )
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.shutdown())


def _request(prompt, embeddings, grid, **sampling) -> DecodeRequest:
    embeddings = embeddings.copy()
    embeddings.setflags(write=False)  # as they arrive through Ray
    return DecodeRequest(
        prompt=prompt,
        image=ImageEmbeddings(embeddings=embeddings, image_grid_thw=np.asarray(grid)),
        sampling=SamplingOptions(**sampling),
    )


# ------------------------------------------------------------------------------------------ vision tower


def test_vision_tower_holds_only_vision_weights(tower, full_model):
    names = [name for name, _ in tower.named_parameters()]
    assert not any(
        marker in name for name in names for marker in ("language_model", "embed_tokens", "lm_head", "mlp.gate_proj")
    )
    reference = dict(full_model.model.vision_tower.named_parameters())
    assert sorted(names) == sorted(reference)
    for name, parameter in tower.named_parameters():
        assert torch.equal(parameter, reference[name]), name


def test_legacy_and_transformers_key_layouts_map_to_the_same_names():
    assert vision_key("vit.layers.3.input_layernorm.weight") == "layers.3.layer_norm1.weight"
    assert vision_key("vit.layers.3.post_attention_layernorm.bias") == "layers.3.layer_norm2.bias"
    assert vision_key("vit.layers.0.mlp.dense_h_to_4h.weight") == "layers.0.mlp.fc1.weight"
    assert vision_key("vit.layers.0.mlp.dense_4h_to_h.bias") == "layers.0.mlp.fc2.bias"
    assert vision_key("vit.perceive.proj.0.weight") == "patch_merger.proj_conv.weight"
    assert vision_key("vit.perceive.proj.2.bias") == "patch_merger.proj_out.bias"
    assert vision_key("vit.perceive.image_newline") == "patch_merger.image_newline"
    assert vision_key("model.vision_tower.layers.1.layer_norm1.weight") == "layers.1.layer_norm1.weight"
    assert vision_key("model.vit.embeddings.patch_embedding.weight") == "embeddings.patch_embedding.weight"
    assert vision_key("model.layers.0.self_attn.q_proj.weight") is None
    assert vision_key("model.language_model.embed_tokens.weight") is None
    assert vision_key("lm_head.weight") is None


def test_batched_encoding_equals_one_at_a_time(tower, pixels):
    batched = encode_images(tower, [p for p, _ in pixels], [g for _, g in pixels])
    for (pixel_values, grid), together in zip(pixels, batched):
        (alone,) = encode_images(tower, [pixel_values], [grid])
        assert together.dtype == np.float32
        assert together.shape == (image_token_count(grid), tower.config.text_hidden_size)
        np.testing.assert_array_equal(together, alone)


def test_embeddings_equal_the_full_models_image_features(tower, full_model, pixels):
    embeddings = encode_images(tower, [p for p, _ in pixels], [g for _, g in pixels])
    with torch.inference_mode():
        for (pixel_values, grid), ours in zip(pixels, embeddings):
            features = full_model.get_image_features(
                torch.from_numpy(pixel_values), torch.from_numpy(np.asarray(grid)[None])
            ).pooler_output[0]
            np.testing.assert_array_equal(features.numpy(), ours)


def test_eight_bit_patches_encode_to_the_processors_embeddings(tower, processor, images):
    # What the served VisionEncoder gets from the Preprocessor: 8-bit patches of an image at the model input
    # size, normalised on the tower's device. Embeddings must equal those of the processor's float32 pixels.
    from serve_app.model.hunyuan_vl import image_to_patch_pixels
    from serve_app.inputs.images import fit_to_budget

    image_processor = processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    budget = image_processor.size["shortest_edge"], image_processor.size["longest_edge"]
    fitted = [fit_to_budget(image, factor, *budget) for image in images]
    patches = [image_to_patch_pixels(image, image_processor) for image in fitted]
    reference = [processor.image_processor(images=[image], return_tensors="np") for image in fitted]
    normalization = PixelNormalization.of(image_processor)
    ours = encode_images(tower, [p for p, _ in patches], [g for _, g in patches], normalization)
    theirs = encode_images(tower, [r["pixel_values"] for r in reference], [r["image_grid_thw"][0] for r in reference])
    for (_, grid), features, mine, expected in zip(patches, reference, ours, theirs):
        np.testing.assert_array_equal(grid, features["image_grid_thw"][0])
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-5)  # the processor rounds in 5 passes, we in 2
    with pytest.raises(ValueError, match="8-bit"):
        encode_images(tower, [reference[0]["pixel_values"]], [patches[0][1]], normalization)


def test_encode_rejects_mismatched_pixels(tower, pixels):
    pixel_values, grid = pixels[0]
    with pytest.raises(ValueError, match="does not match grid"):
        encode_images(tower, [pixel_values[:-4]], [grid])


# ------------------------------------------------------------------------------------------ engine


def test_engine_matches_full_model_generate_from_pixels(engine, tower, full_model, processor, prompt, images, pixels):
    embeddings = encode_images(tower, [p for p, _ in pixels], [g for _, g in pixels])
    for image, (_, grid), image_embeddings in zip(images, pixels, embeddings):
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        with torch.inference_mode():
            output = full_model.generate(**inputs, do_sample=False, max_new_tokens=16)
        expected = output[0, inputs["input_ids"].shape[1] :].tolist()

        result = asyncio.run(engine.generate(_request(prompt, image_embeddings, grid, max_tokens=16)))
        assert result.token_ids == expected, image.size
        assert result.prompt_tokens == inputs["input_ids"].shape[1]
        assert result.completion_tokens == len(expected) == 16
        assert result.finish_reason == "length"
        # Like vLLM, a trailing incomplete UTF-8 sequence (decoded as U+FFFD) is held back.
        assert result.text == processor.tokenizer.decode(expected, skip_special_tokens=True).rstrip("\ufffd")


def test_repetition_penalty_is_honoured(engine, tower, full_model, processor, prompt, images, pixels):
    (pixel_values, grid), image = pixels[0], images[0]
    (embeddings,) = encode_images(tower, [pixel_values], [grid])
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        output = full_model.generate(**inputs, do_sample=False, max_new_tokens=12, repetition_penalty=1.5)
    expected = output[0, inputs["input_ids"].shape[1] :].tolist()
    plain = asyncio.run(engine.generate(_request(prompt, embeddings, grid, max_tokens=12)))
    penalised = asyncio.run(engine.generate(_request(prompt, embeddings, grid, max_tokens=12, repetition_penalty=1.5)))
    assert penalised.token_ids == expected
    assert penalised.token_ids != plain.token_ids


def test_embeddings_change_the_output(engine, tower, prompt, pixels):
    (pixel_values, grid) = pixels[0]
    (embeddings,) = encode_images(tower, [pixel_values], [grid])
    real = asyncio.run(engine.generate(_request(prompt, embeddings, grid, max_tokens=8)))
    noise = np.random.default_rng(0).standard_normal(embeddings.shape).astype(np.float32)
    other = asyncio.run(engine.generate(_request(prompt, noise, grid, max_tokens=8)))
    assert real.token_ids != other.token_ids


def test_concurrent_requests_are_serialised_and_correct(engine, tower, prompt, pixels):
    embeddings = encode_images(tower, [p for p, _ in pixels[:3]], [g for _, g in pixels[:3]])
    requests = [_request(prompt, e, g, max_tokens=8) for e, (_, g) in zip(embeddings, pixels[:3])]
    sequential = [asyncio.run(engine.generate(r)).token_ids for r in requests]

    async def together():
        return await asyncio.gather(*(engine.generate(r) for r in requests))

    assert [r.token_ids for r in asyncio.run(together())] == sequential


def test_bad_requests_are_rejected(engine, tower, prompt, pixels):
    (pixel_values, grid) = pixels[0]
    (embeddings,) = encode_images(tower, [pixel_values], [grid])
    with pytest.raises(ValueError, match="shape"):
        asyncio.run(engine.generate(_request(prompt, embeddings[:-1], grid)))
    with pytest.raises(ValueError, match="exactly one image placeholder"):
        asyncio.run(engine.generate(_request(INSTRUCTION, embeddings, grid)))
    asyncio.run(engine.check_health())


def test_health_fails_once_the_model_is_gone(tiny_checkpoint):
    engine = TransformersEngine(
        ModelConfig(source=str(tiny_checkpoint), dtype="float32", device="cpu"),
        DecoderConfig(engine="transformers"),
        str(tiny_checkpoint),
    )
    with pytest.raises(RuntimeError):
        asyncio.run(engine.check_health())
    asyncio.run(engine.start())
    asyncio.run(engine.check_health())
    asyncio.run(engine.shutdown())
    with pytest.raises(RuntimeError):
        asyncio.run(engine.check_health())


def test_stops_at_end_of_turn_token(engine, tower, prompt, pixels, monkeypatch):
    (pixel_values, grid) = pixels[0]
    (embeddings,) = encode_images(tower, [pixel_values], [grid])
    free_run = asyncio.run(engine.generate(_request(prompt, embeddings, grid, max_tokens=8)))
    stop_id = free_run.token_ids[2]
    first = free_run.token_ids.index(stop_id)
    # Pretend that token ends the turn: generation stops right after it, and it counts as "stop".
    monkeypatch.setattr(engine, "_eos_token_ids", [*engine._eos_token_ids, stop_id])
    stopped = asyncio.run(engine.generate(_request(prompt, embeddings, grid, max_tokens=8)))
    assert stopped.token_ids == free_run.token_ids[: first + 1]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == first + 1
