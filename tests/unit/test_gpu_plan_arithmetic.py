"""serve_app/gpu_plan.py: the GPU memory plan of the serve configs, checked against hand arithmetic."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve_app.config import OCRAppConfig
from serve_app.gpu_plan import GIB, ModelDims, check_gpu_plan, format_plan, gpu_plan

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIGS = [ROOT / "serve_config.yaml", ROOT / "configs" / "hunyuanocr-1.0.yaml"]


def app_args(path: Path) -> dict:
    return copy.deepcopy(yaml.safe_load(path.read_text())["applications"][0]["args"])


def config_with(path: Path, **sections) -> OCRAppConfig:
    args = app_args(path)
    for section, updates in sections.items():
        args[section] = {**args.get(section, {}), **updates}
    return OCRAppConfig.model_validate(args)


def test_kv_per_token_is_96_kib():
    # 2 (K and V) x 24 layers x 8 KV heads x 128 head_dim x 2 bytes (bf16)
    assert ModelDims().kv_bytes_per_token(2) == 2 * 24 * 8 * 128 * 2 == 96 * 1024
    plan = gpu_plan(OCRAppConfig.from_serve_config(ROOT / "serve_config.yaml"))
    assert plan.kv_bytes_per_token == 96 * 1024
    assert plan.kv_bytes_per_block == 16 * 96 * 1024
    assert plan.kv_tokens == plan.kv_cache_memory_bytes // plan.kv_bytes_per_token


def test_weights_match_hand_arithmetic():
    d = ModelDims()
    # Language model: tied embeddings once; per layer q (H x 16*128), k and v (H x 8*128), o (16*128 x H),
    # per-head q/k norms (2 x 128), gated MLP (3 x H x I), two norms (2 x H); then the final norm.
    layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3584 + 2 * 1024
    language_model = 120818 * 1024 + 24 * layer + 1024
    assert d.language_model_parameters() == language_model == 539_010_048
    # Vision tower: patch conv (+bias), a 129x129+1 position grid, 27 layers (2 LayerNorms, q/k/v/o and fc1/fc2
    # with biases), then the merger: 2x2 conv to 2V, 1x1 conv to 4V, linear to the text width, norms, 4 embeddings.
    v, i, t = 1152, 4304, 1024
    vision_layer = 4 * v + 4 * (v * v + v) + (v * i + i) + (i * v + v)
    merger = 2 * v * v * 4 + 2 * v + 8 * v * v + 4 * v + 4 * v * t + t + 4 * v + 3 * t + v + t
    vision = v * 3 * 16 * 16 + v + (128 * 128 + 1) * v + 27 * vision_layer + merger
    assert d.vision_parameters() == vision == 457_198_064
    plan = gpu_plan(OCRAppConfig.from_serve_config(ROOT / "serve_config.yaml"))
    assert plan.decoder_weights_bytes == 2 * language_model  # bf16, language model only
    assert plan.encoder_weights_bytes == 2 * vision  # bf16, tower + adapter


def test_parameter_counts_match_transformers_architecture():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from serve_app.model import tiny_checkpoint as tc

    ids = {token: 120818 - len(tc.SPECIAL_TOKENS) + index for index, token in enumerate(tc.SPECIAL_TOKENS)}
    config = tc.build_full_size_config(ids, 120818)
    with torch.device("meta"):
        model = transformers.HunYuanVLForConditionalGeneration(config)
    vision = sum(p.numel() for name, p in model.named_parameters() if ".vision_tower." in f".{name}")
    total = sum(p.numel() for p in model.parameters())
    assert (total - vision, vision) == (ModelDims().language_model_parameters(), ModelDims().vision_parameters())


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_fit_24_gib_and_carry_the_plans_kv_size(path):
    config = OCRAppConfig.from_serve_config(path)
    plan = check_gpu_plan(config, 24 * GIB)
    assert plan is not None and plan.problems() == []
    assert plan.total_bytes <= 24 * GIB
    assert plan.ray_fraction_total <= 1
    assert plan.vllm_process_bytes <= plan.decoder_share_bytes
    assert plan.encoder_replica_bytes <= plan.encoder_share_bytes
    # The YAML's kv_cache_memory_bytes is the plan's (vLLM then skips its profiling), in whole blocks.
    assert plan.kv_from_engine_args
    assert config.decoder.engine_args["kv_cache_memory_bytes"] == plan.derived_kv_cache_memory_bytes
    assert plan.kv_cache_memory_bytes % plan.kv_bytes_per_block == 0
    # One max_model_len sequence fits the KV cache (else vLLM refuses to start).
    assert plan.max_model_len * plan.kv_bytes_per_token <= plan.kv_cache_memory_bytes
    assert "fits" in format_plan(plan)


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_refused_on_16_gib_naming_the_stage(path):
    with pytest.raises(ValueError) as raised:
        check_gpu_plan(OCRAppConfig.from_serve_config(path), 16 * GIB)
    message = str(raised.value)
    assert "16.00 GiB card" in message
    assert "decoder: vLLM needs 15.38 GiB" in message and "0.7 x 16.00 GiB = 11.20 GiB" in message
    assert "encoder: a replica needs" in message


def test_fractions_over_one_refused():
    # Two 1.5 encoder replicas of 0.21 beside the decoder's 0.7: 1.12 of one GPU.
    config = config_with(ROOT / "serve_config.yaml", encoder={"autoscaling": {"min_replicas": 1, "max_replicas": 2}})
    with pytest.raises(ValueError, match=r"ray: GPU fractions at max replicas sum to 1.12 > 1 \(encoder 0.42 \+ decoder 0.7\)"):
        check_gpu_plan(config)


def test_encoder_batch_over_its_share_refused_and_max_batch_patches_respected():
    path = ROOT / "serve_config.yaml"
    with pytest.raises(ValueError, match=r"encoder: a replica needs 8\.55 GiB .* > its share num_gpus 0\.21"):
        check_gpu_plan(config_with(path, encoder={"max_batch_size": 4, "max_batch_patches": None}))
    # Capped at one full 4096x4096 page's patches a call, a batch of 4 needs one page's activations.
    plan = check_gpu_plan(config_with(path, encoder={"max_batch_size": 4, "max_batch_patches": 65536}))
    assert plan.encoder_batch_patches == 65536
    assert plan.activation_per_batch_bytes == plan.activation_per_page_bytes
    # A cap below one page: a page still runs alone.
    plan = gpu_plan(config_with(path, encoder={"max_batch_patches": 1000}))
    assert plan.encoder_batch_patches == plan.patches_per_page == 4096 * 4096 // 256


def test_vllm_over_the_decoder_share_refused():
    args = app_args(ROOT / "serve_config.yaml")
    args["decoder"]["engine_args"]["kv_cache_memory_bytes"] = 16 * GIB
    with pytest.raises(ValueError, match=r"decoder: vLLM needs 19\.00 GiB .* > its share num_gpus 0\.7 x 24\.00 GiB = 16\.80 GiB"):
        check_gpu_plan(OCRAppConfig.model_validate(args))


def test_kv_derived_from_gpu_memory_utilization_without_an_explicit_size():
    args = app_args(ROOT / "serve_config.yaml")
    del args["decoder"]["engine_args"]["kv_cache_memory_bytes"]
    plan = gpu_plan(OCRAppConfig.model_validate(args))
    budget = -(-24 * GIB * 62 // 100)  # vLLM: ceil(total x gpu_memory_utilization)
    room = budget - plan.decoder_weights_bytes - int(1.5 * GIB)
    assert not plan.kv_from_engine_args
    assert plan.kv_cache_memory_bytes == room // (16 * 96 * 1024) * (16 * 96 * 1024) == 13_287_555_072
    assert plan.kv_tokens == 135_168


def test_nothing_to_check_without_hunyuan_on_vllm():
    assert check_gpu_plan(OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml"), 1 * GIB) is None


def test_dims_from_config_json_in_both_layouts():
    nested = {
        "text_config": {"hidden_size": 2048, "num_hidden_layers": 4, "num_key_value_heads": 2, "tie_word_embeddings": False},
        "vision_config": {"hidden_size": 64, "patch_size": 14, "max_image_size": 1024},
    }
    dims = ModelDims.from_config_json(nested)
    assert (dims.text_hidden, dims.text_layers, dims.text_kv_heads, dims.tied_embeddings) == (2048, 4, 2, False)
    assert (dims.vision_hidden, dims.patch, dims.vision_max_image_size) == (64, 14, 1024)
    assert dims.head_dim == 128 and dims.vocab == 120818  # absent: HunyuanOCR's
    flat = {"hidden_size": 512, "num_hidden_layers": 6, "text_config": {"tie_word_embeddings": True}, "vision_config": {}}
    dims = ModelDims.from_config_json(flat)
    assert (dims.text_hidden, dims.text_layers, dims.tied_embeddings) == (512, 6, True)


def test_gpu_check_reads_vllms_log_lines(tmp_path):
    """bench/gpu_plan.py --check finds vLLM 0.32's start-up lines (as its format strings write them)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.gpu_plan import scan_logs

    (tmp_path / "worker-1.out").write_text(
        "INFO [gpu_worker.py:676] Initial free memory 70.12 GiB, reserved 12.38 GiB memory for KV Cache as specified by "
        "kv_cache_memory_bytes config and skipped memory profiling. This does not respect the gpu_memory_utilization\n"
        "INFO [kv_cache_utils.py:2328] GPU KV cache size: 135,152 tokens, Maximum concurrency for 65,536 tokens per "
        "request: 2.06x\n"
        "INFO [gpu_model_runner.py:6582] Graph capturing finished in 11 secs, took 0.31 GiB\n"
    )
    found = scan_logs(tmp_path)
    assert found["graphs_captured"] == ("11", "0.31")
    assert found["kv_reserved"] == ("12.38",)
    assert found["kv_tokens"] == ("135,152",)
    assert "capturing_bar" not in found


def test_replicas_spread_over_several_cards_are_planned_per_card():
    """A cluster of GPUs: with gpu.count 2, a decoder and an encoder scaling to 2 replicas each hold one of each
    per card (what a single card refuses)."""
    path = ROOT / "serve_config.yaml"
    scaled = {"autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8}}
    with pytest.raises(ValueError, match=r"ray: GPU fractions at max replicas sum to 1\.82 > 1"):
        check_gpu_plan(config_with(path, encoder=scaled, decoder=scaled))
    plan = check_gpu_plan(config_with(path, encoder=scaled, decoder=scaled, gpu={"count": 2}))
    assert (plan.cards, plan.decoder_replicas, plan.encoder_replicas) == (2, 1, 1)
    assert plan.ray_fraction_total == pytest.approx(0.91)
    assert plan.total_bytes == gpu_plan(OCRAppConfig.from_serve_config(path)).total_bytes
    bigger = gpu_plan(config_with(path, gpu={"memory_gib": 48}))
    assert bigger.card_bytes == 48 * GIB


def test_in_decoder_placement_moves_the_tower_into_vllms_process():
    """encoder.placement in_decoder: no encoder replicas or GPU fraction; vLLM holds the tower's weights and the
    activations of its largest encoder step (one 4096x4096 page: 16,514 tokens, over the 8,192-token step)."""
    path = ROOT / "serve_config.yaml"
    split = gpu_plan(OCRAppConfig.from_serve_config(path))
    # The serve config's decoder share cannot also hold the tower: refused, naming it.
    with pytest.raises(ValueError, match=r"decoder: vLLM needs .* \+ vision tower 2\.65 GiB\) > its share num_gpus 0\.7"):
        check_gpu_plan(config_with(path, encoder={"placement": "in_decoder"}))
    plan = check_gpu_plan(config_with(path, encoder={"placement": "in_decoder"}, decoder={"num_gpus": 0.9}))
    d = ModelDims()
    activations = 65536 * (max(7 * 1152, 2 * 1152 + 2 * 4304) * 2 + 3 * 256 * 4 + 1152 * 4)
    assert plan.vllm_vision_pages == 1 and plan.image_tokens_per_page == 16514
    assert plan.vllm_vision_bytes == 2 * d.vision_parameters() + activations
    assert plan.vllm_process_bytes == split.vllm_process_bytes + plan.vllm_vision_bytes
    assert plan.encoder_replicas == 0 and "encoder" not in plan.ray_gpu_fractions
    assert plan.total_bytes == split.total_bytes - split.encoder_replica_bytes + plan.vllm_vision_bytes
    assert "encoder.placement in_decoder" in format_plan(plan) and plan.problems() == []
    # Without an explicit KV size, the KV derived from gpu_memory_utilization makes room for the tower.
    args = app_args(path)
    del args["decoder"]["engine_args"]["kv_cache_memory_bytes"]
    args["encoder"]["placement"] = "in_decoder"
    derived = gpu_plan(OCRAppConfig.model_validate(args))
    del args["encoder"]["placement"]
    freed = gpu_plan(OCRAppConfig.model_validate(args)).kv_cache_memory_bytes - derived.kv_cache_memory_bytes
    assert abs(freed - derived.vllm_vision_bytes) < derived.kv_bytes_per_block  # whole blocks
