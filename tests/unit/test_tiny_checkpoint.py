"""The tiny random HunyuanOCR-architecture checkpoint: deterministic, loadable, and shaped like the real one."""

from __future__ import annotations

import json

import pytest
import torch

from serve_app.model.tiny_checkpoint import (
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    build_tiny_checkpoint,
    ensure_tiny_checkpoint,
)
from tests.conftest import make_image

INSTRUCTION = "提取图中的文字。"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


def test_two_builds_are_byte_identical(tiny_checkpoint, tmp_path):
    again = build_tiny_checkpoint(tmp_path / "again")
    first = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert first == sorted(p.name for p in again.iterdir())
    assert "model.safetensors" in first and "config.json" in first and "tokenizer.json" in first
    for name in first:
        assert (tiny_checkpoint / name).read_bytes() == (again / name).read_bytes(), name


def test_other_seed_changes_weights_only(tiny_checkpoint, tmp_path):
    other = build_tiny_checkpoint(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_checkpoint / "model.safetensors").read_bytes()
    assert (other / "config.json").read_bytes() == (tiny_checkpoint / "config.json").read_bytes()


def test_config_matches_the_architecture(tiny_checkpoint, processor):
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    assert raw["model_type"] == "hunyuan_vl"
    assert raw["architectures"] == ["HunYuanVLForConditionalGeneration"]
    assert raw["dtype"] == "float32" and raw["tie_word_embeddings"] is False

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_checkpoint)
    text, vision = config.text_config, config.vision_config
    assert text.head_dim in (32, 64, 80, 96, 112, 128)  # vLLM CPU attention sizes
    section = text.rope_parameters["mrope_section"]
    assert len(section) == 4 and sum(section) == text.head_dim // 2
    assert text.rope_parameters["rope_type"] == "dynamic" and text.rope_parameters["alpha"] > 0
    assert vision.patch_size == 16 and vision.spatial_merge_size == 2
    assert vision.text_hidden_size == text.hidden_size

    tokenizer = processor.tokenizer
    assert config.image_token_id == tokenizer.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert config.im_start_id == tokenizer.image_start_token_id
    assert config.im_end_id == tokenizer.image_end_token_id
    assert config.im_newline_id == tokenizer.convert_tokens_to_ids(tokenizer.image_newline_token)
    assert text.bos_token_id == tokenizer.bos_token_id
    assert text.eos_token_id == tokenizer.eos_token_id
    assert text.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) == text.vocab_size
    assert sum(p.stat().st_size for p in tiny_checkpoint.iterdir()) < 8 * 2**20


def test_tokenizer_handles_instructions_and_digits(processor):
    tokenizer = processor.tokenizer
    for text in [INSTRUCTION, "Extract the text in the image.", "TOTAL RM 12.50 2024-01-02 （含税）"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
        assert len(ids) < len(text.encode("utf-8"))  # merged, not byte by byte
    assert len(tokenizer(INSTRUCTION, add_special_tokens=False).input_ids) <= 4


def test_chat_template_renders_image_span_then_instruction(processor):
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    span = IMAGE_START_TOKEN + IMAGE_TOKEN + IMAGE_END_TOKEN
    assert prompt.count(IMAGE_TOKEN) == 1
    assert prompt.index(span) < prompt.index(INSTRUCTION)
    assert prompt.startswith(processor.tokenizer.bos_token)
    assert prompt.endswith(processor.tokenizer.assistant_token)
    # The template loops over message['content'] directly (what vLLM needs) and still takes plain strings.
    assert "in message['content']" in processor.chat_template
    with_system = processor.apply_chat_template(
        [{"role": "system", "content": "sys"}, *MESSAGES], add_generation_prompt=True, tokenize=False
    )
    assert with_system.index("sys") < with_system.index(span)


def test_processor_and_model_generate_visible_text(tiny_checkpoint, processor):
    from transformers import HunYuanVLForConditionalGeneration

    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[make_image(300, 120)], text=[prompt], return_tensors="pt")
    grid = inputs["image_grid_thw"][0].tolist()
    n_image_tokens = (grid[1] // 2) * (grid[2] // 2 + 1) + 2
    assert int((inputs["input_ids"] == processor.tokenizer.image_token_id).sum()) == n_image_tokens

    model = HunYuanVLForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(set(new_tokens)) > 2
    assert processor.decode(new_tokens, skip_special_tokens=True).strip()


def test_ensure_builds_once_into_the_cache(tmp_path):
    target = tmp_path / "cache" / "tiny"
    path = ensure_tiny_checkpoint(target)
    assert path == target and (target / "config.json").is_file()
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(target) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]  # no staging leftovers


def test_ensure_uses_a_checkpoint_that_won_the_race(tmp_path, monkeypatch):
    import serve_app.model.tiny_checkpoint as module

    target = tmp_path / "tiny"
    real_build = module.build_tiny_checkpoint

    def build_then_lose(output_dir, seed=0, layout="1.5"):
        real_build(output_dir, seed, layout)
        real_build(target, seed, layout)  # another process finishes first
        (target / "winner").write_text("theirs")
        return output_dir

    monkeypatch.setattr(module, "build_tiny_checkpoint", build_then_lose)
    assert ensure_tiny_checkpoint(target) == target
    assert (target / "winner").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
