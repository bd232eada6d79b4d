"""The static rope (serve_app.model.static_rope) on the tiny checkpoint: exact, compilable, and what lets vLLM compile.

transformers maps HunyuanOCR's xdrope to rope_type "dynamic" (NTK alpha). Its `@dynamic_rope_update` compares a
tensor on the host every forward, so torch.compile(fullgraph=True) fails and vLLM disables compilation. The static
rope ("default" with the alpha-adjusted theta) has the same inv_freq:

- (a) logits bit-identical to transformers' own HunYuanVLForConditionalGeneration for prompts with an image (the
  4-axis XD-RoPE positions from get_rope_index), greedy tokens identical;
- (b) the language model traces with fullgraph=True; the dynamic one does not (a data-dependent branch);
- (c) vLLM's CPU build with enforce_eager=false (its torch.compile path) decodes the same tokens as
  transformers' generate — one vLLM start.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from serve_app.model.static_rope import (
    check_within_rope_range,
    make_rope_static,
    ntk_alpha_base,
    static_rope_config,
)
from tests.conftest import make_image
from tests.integration.conftest import start_engine

pytestmark = pytest.mark.integration

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu.yaml"
INSTRUCTION = "提取图中的文字。"
MAX_TOKENS = 24
MAX_MODEL_LEN = 2048  # configs/cpu.yaml's decoder
# Distinct grids: landscape, portrait, a long strip.
SIZES = [(320, 200), (120, 400), (600, 90)]


def _vllm_config(hf_config):
    """The part of a VllmConfig that vLLM's compile gate reads."""
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))


@pytest.fixture(scope="module")
def hf_config(tiny_checkpoint):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def models(tiny_checkpoint, hf_config):
    """transformers' own model (dynamic NTK-alpha rope) and the same weights with the static rope."""
    from transformers import HunYuanVLForConditionalGeneration

    stock = HunYuanVLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    static = HunYuanVLForConditionalGeneration.from_pretrained(
        tiny_checkpoint, config=static_rope_config(hf_config, MAX_MODEL_LEN), dtype=torch.float32
    ).eval()
    return stock, static


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def prompt(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def image_inputs(processor, prompt):
    return [
        processor(text=[prompt], images=[make_image(width, height, seed=seed)], return_tensors="pt")
        for seed, (width, height) in enumerate(SIZES)
    ]


def _xdrope_positions(model, inputs) -> torch.Tensor:
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], inputs["attention_mask"]
    )
    return positions


# --------------------------------------------------------------------------------------------- the config


def test_transformers_maps_xdrope_to_dynamic_and_vllm_will_not_compile_it(hf_config):
    """The premise, on the installed versions: if this fails, the static rope may be unnecessary or wrong."""
    from vllm.model_executor.models.transformers.utils import can_enable_torch_compile

    rope = hf_config.text_config.rope_parameters
    assert rope["rope_type"] == "dynamic" and rope["alpha"] == 1000.0 and len(rope["mrope_section"]) == 4
    assert can_enable_torch_compile(_vllm_config(hf_config)) is False


def test_static_rope_config(hf_config):
    config = copy.deepcopy(hf_config)
    text = config.text_config
    original = dict(text.rope_parameters)
    assert make_rope_static(config, MAX_MODEL_LEN) is True
    rope = text.rope_parameters
    assert rope["rope_type"] == "default" and "alpha" not in rope
    assert rope["rope_theta"] == ntk_alpha_base(original["rope_theta"], original["alpha"], text.head_dim)
    assert rope["mrope_section"] == original["mrope_section"]
    from vllm.model_executor.models.transformers.utils import can_enable_torch_compile

    assert can_enable_torch_compile(_vllm_config(config)) is True
    # Idempotent: already static, nothing to do.
    assert make_rope_static(config, MAX_MODEL_LEN) is False and text.rope_parameters == rope
    # The copy helper leaves its input alone.
    assert static_rope_config(hf_config).text_config.rope_parameters["rope_type"] == "default"
    assert hf_config.text_config.rope_parameters["rope_type"] == "dynamic"


def test_max_len_beyond_max_position_embeddings_is_refused(hf_config):
    """Beyond max_position_embeddings the dynamic rope would grow its base: the static one is exact only below."""
    limit = hf_config.text_config.max_position_embeddings
    check_within_rope_range(hf_config.text_config, limit)  # the last position is limit - 1: fine
    config = copy.deepcopy(hf_config)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        make_rope_static(config, limit + 1)
    assert config.text_config.rope_parameters["rope_type"] == "dynamic"  # refused: untouched


# --------------------------------------------------------------------------------------------- (a) exactness


def test_inv_freq_is_identical(models):
    stock, static = (model.model.language_model.rotary_emb for model in models)
    assert (stock.rope_type, static.rope_type) == ("dynamic", "default")
    assert torch.equal(stock.inv_freq, static.inv_freq)
    assert stock.attention_scaling == static.attention_scaling == 1.0


def test_logits_identical_for_prompts_with_an_image(models, image_inputs):
    stock, static = models
    for index, inputs in enumerate(image_inputs):
        positions = _xdrope_positions(stock, inputs)
        # The real XD-RoPE path: 4 axes, the width/height/image axes differ from the text axis on image tokens.
        assert positions.shape[0] == 4 and not torch.equal(positions[1], positions[0])
        with torch.inference_mode():
            expected = stock(**inputs).logits
            got = static(**inputs).logits
        assert got.dtype == torch.float32 and torch.equal(got, expected), (
            f"image {index}: max abs diff {(got - expected).abs().max().item()}"
        )


def test_greedy_tokens_identical(models, image_inputs):
    stock, static = models
    for index, inputs in enumerate(image_inputs):
        with torch.inference_mode():
            expected = stock.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
            got = static.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        assert got.shape[1] > inputs["input_ids"].shape[1]
        assert torch.equal(got, expected), f"image {index}"


# --------------------------------------------------------------------------------------------- (b) compilation


def _language_model_call(model, inputs):
    """The decoder's language model on an image prompt's embeddings and 4-axis positions (what vLLM compiles)."""
    language_model = model.model.language_model
    with torch.inference_mode():
        embeds = language_model.get_input_embeddings()(inputs["input_ids"])
        positions = _xdrope_positions(model, inputs)

    def forward(inputs_embeds, position_ids):
        return language_model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False).last_hidden_state

    return forward, (embeds, positions)


def test_static_language_model_compiles_with_fullgraph(models, image_inputs):
    _, static = models
    forward, args = _language_model_call(static, image_inputs[0])
    torch._dynamo.reset()
    try:
        assert torch._dynamo.explain(forward)(*args).graph_break_count == 0
        with torch.no_grad():
            compiled = torch.compile(forward, fullgraph=True, backend="eager")(*args)
            assert torch.equal(compiled, forward(*args))
    finally:
        torch._dynamo.reset()


def test_dynamic_language_model_breaks_the_graph(models, image_inputs):
    """The change matters: the stock rope's `seq_len > max_seq_len_cached` is a data-dependent branch."""
    stock, _ = models
    forward, args = _language_model_call(stock, image_inputs[0])
    torch._dynamo.reset()
    try:
        assert torch._dynamo.explain(forward)(*args).graph_break_count >= 1
        torch._dynamo.reset()
        with torch.no_grad(), pytest.raises(torch._dynamo.exc.Unsupported, match="(?i)data-dependent"):
            torch.compile(forward, fullgraph=True, backend="eager")(*args)
    finally:
        torch._dynamo.reset()


# --------------------------------------------------------------------------------------------- (c) vLLM compiled


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A fresh VLLM_CACHE_ROOT: compiled artifacts found there afterwards come from this engine."""
    root = tmp_path_factory.mktemp("vllm-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("VLLM_CACHE_ROOT", str(root))  # read by vLLM's engine core process, spawned at start
    yield root
    patch.undo()


@pytest.fixture(scope="module")
def compiled_engine(tiny_checkpoint, compile_cache, loop):
    from serve_app.config import OCRAppConfig
    from serve_app.engines.vllm_engine import VLLMEngine

    app = OCRAppConfig.from_serve_config(CPU_CONFIG)
    model = app.model.model_copy(update={"source": str(tiny_checkpoint)})
    engine_args = {**app.decoder.engine_args, "enforce_eager": False}
    assert model.dtype == "float32" and engine_args["max_model_len"] == MAX_MODEL_LEN
    decoder = app.decoder.model_copy(update={"engine_args": engine_args})
    engine = VLLMEngine(model, decoder, str(tiny_checkpoint))
    start_engine(engine, loop, decoder)
    yield engine
    loop.run_until_complete(engine.shutdown())


@pytest.fixture(scope="module")
def cases(tiny_checkpoint, models, image_inputs, prompt):
    """Per image: the pipeline's embeddings (vision tower) and transformers' own greedy output from pixels."""
    from serve_app.model.hunyuan_vl import encode_images, load_vision_tower
    from serve_app.stage_io import ImageEmbeddings

    stock, _ = models
    tower = load_vision_tower(str(tiny_checkpoint), torch.float32, "cpu")
    out = []
    for inputs in image_inputs:
        with torch.inference_mode():
            generated = stock.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        grid = inputs["image_grid_thw"][0].numpy()
        (embeddings,) = encode_images(tower, [inputs["pixel_values"].numpy()], [grid])
        out.append(
            {
                "image": ImageEmbeddings(embeddings=embeddings, image_grid_thw=grid),
                "hf_ids": generated[0, inputs["input_ids"].shape[1] :].tolist(),
            }
        )
    return out


def _request(prompt, case, request_id):
    from serve_app.stage_io import DecodeRequest, SamplingOptions

    return DecodeRequest(prompt, case["image"], SamplingOptions(max_tokens=MAX_TOKENS), request_id)


def test_vllm_compiled_matches_transformers_generate(compiled_engine, cases, prompt, loop, compile_cache):
    from vllm.config import CompilationMode

    config = compiled_engine._engine().vllm_config
    assert config.model_config.enforce_eager is False
    assert config.compilation_config.mode != CompilationMode.NONE
    for index, case in enumerate(cases):
        result = loop.run_until_complete(compiled_engine.generate(_request(prompt, case, f"compiled-{index}")))
        assert result.token_ids == case["hf_ids"], f"image {index}"

    async def all_at_once():  # a batch of mixed lengths through the compiled graph
        requests = [_request(prompt, case, f"batch-{i}") for i, case in enumerate(cases + cases)]
        return await asyncio.gather(*(compiled_engine.generate(request) for request in requests))

    assert [r.token_ids for r in loop.run_until_complete(all_at_once())] == [c["hf_ids"] for c in cases + cases]
    # The decoder really went through torch.compile: with the dynamic rope vLLM skips it and writes nothing here.
    artifacts = [path for path in (compile_cache / "torch_compile_cache").rglob("*") if path.is_file()]
    assert artifacts, f"no torch.compile artifacts under {compile_cache}"
