"""The config tree and the builder: what `serve run` would deploy, checked without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app as build_serve_app

from serve_app.app import ConfigError, build_app, load_config
from serve_app.config import OCRAppConfig

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"Preprocessor": "preprocessor", "VisionEncoder": "encoder", "Decoder": "decoder", "OCRIngress": "ingress"}


# The commit the tests' hub cache says `main` is (no hub here: the builder's offline path reads it).
CACHED_MAIN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline_hub_cache(tmp_path, monkeypatch):
    """No network, as on CI: asking the hub fails, and a hub cache records `main` of tencent/HunyuanOCR."""
    import huggingface_hub
    from huggingface_hub import constants

    refs = tmp_path / "hub" / "models--tencent--HunyuanOCR" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(CACHED_MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)


def serve_args(config_path: Path) -> dict:
    return yaml.safe_load(config_path.read_text())["applications"][0]["args"]


def deployments_of(config_path: Path) -> tuple[OCRAppConfig, dict]:
    """What `serve run config_path` deploys: Ray's own builder call on the file's args."""
    config = OCRAppConfig.from_serve_config(config_path)
    application = call_user_app_builder_with_args_if_necessary(build_app, serve_args(config_path))
    built = build_serve_app(application, name="ocr")
    return config, {deployment.name: deployment for deployment in built.deployments}


@pytest.mark.parametrize("config_path", [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))])
def test_every_config_file_builds_the_four_stage_graph(config_path):
    config, deployments = deployments_of(config_path)
    assert set(deployments) == set(STAGES)
    for name, field in STAGES.items():
        stage = getattr(config, field)
        deployment = deployments[name]
        assert deployment.ray_actor_options["num_cpus"] == stage.num_cpus
        assert deployment.ray_actor_options.get("num_gpus", 0) == stage.num_gpus
        assert deployment.max_ongoing_requests == stage.max_ongoing_requests
        # Overload: a bounded queue per stage, shed with 503 + Retry-After.
        assert deployment.max_queued_requests == stage.max_queued_requests > 0
        assert deployment.backpressure_config.status_code == 503
        assert deployment.backpressure_config.retry_after_s == stage.retry_after_s >= 1
        # A stopping replica drains for as long as a request may take.
        assert deployment._deployment_config.graceful_shutdown_timeout_s == config.limits.request_timeout_s
    # Ray's proxy backstop sits above the service's own deadline (whose 504 callers see).
    http_timeout = yaml.safe_load(config_path.read_text())["http_options"]["request_timeout_s"]
    assert http_timeout > config.limits.request_timeout_s


def test_production_plan_fits_one_gpu_with_fractions_and_autoscaling():
    config, deployments = deployments_of(ROOT / "serve_config.yaml")
    encoder, decoder = deployments["VisionEncoder"], deployments["Decoder"]
    assert 0 < encoder.ray_actor_options["num_gpus"] < 1
    assert 0 < decoder.ray_actor_options["num_gpus"] < 1
    assert deployments["Preprocessor"].ray_actor_options.get("num_gpus", 0) == 0
    # At max scale every GPU-using replica still fits on one GPU.
    gpu_at_max_scale = sum(
        deployments[name].ray_actor_options.get("num_gpus", 0)
        * deployments[name]._deployment_config.autoscaling_config.max_replicas
        for name in STAGES
    )
    assert gpu_at_max_scale <= 1.0
    # vLLM's memory share stays inside the decoder's GPU share.
    assert config.decoder.engine_args["gpu_memory_utilization"] <= decoder.ray_actor_options["num_gpus"]
    for name in STAGES:
        autoscaling = deployments[name]._deployment_config.autoscaling_config
        assert autoscaling is not None, name
        assert 1 <= autoscaling.min_replicas <= autoscaling.max_replicas
        assert autoscaling.target_ongoing_requests > 0
    # Official HunyuanOCR serving flags.
    assert config.decoder.engine_args["enable_prefix_caching"] is False
    assert config.decoder.engine_args["mm_processor_cache_gb"] == 0
    assert config.model.source == "tencent/HunyuanOCR" and config.model.version == "1.5"
    assert config.model.dtype == "bfloat16"
    # `main` was resolved once, in the builder: every stage gets the same commit.
    for name in STAGES:
        (stage_config, *_) = deployments[name].init_args
        assert stage_config.model.revision == CACHED_MAIN, name


def test_cpu_config_schedules_on_two_cores():
    _, deployments = deployments_of(ROOT / "configs" / "cpu.yaml")
    total_cpus = sum(
        deployment.ray_actor_options["num_cpus"] * (deployment._deployment_config.num_replicas or 1)
        for deployment in deployments.values()
    )
    assert total_cpus <= 2
    assert all(deployment.ray_actor_options.get("num_gpus", 0) == 0 for deployment in deployments.values())


def test_in_decoder_placement_deploys_no_encoder_and_starts_vllm_with_the_tower(tmp_path):
    """encoder.placement in_decoder, as `serve run` builds it: three deployments, the ingress bound without an
    encoder, and the decoder's vLLM allowed one image a prompt at the config's pixel budget."""
    from serve_app.engines.vllm_engine import build_engine_args

    path = tmp_path / "in_decoder.yaml"
    document = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    document["applications"][0]["args"]["encoder"]["placement"] = "in_decoder"
    path.write_text(yaml.safe_dump(document))
    config, deployments = deployments_of(path)
    assert set(deployments) == {"Preprocessor", "Decoder", "OCRIngress"}
    ingress_args = deployments["OCRIngress"].init_args
    assert ingress_args[2] is None  # (config, preprocessor, encoder, decoder)
    args = build_engine_args(config.model, config.decoder, "/ckpt", vision_tower=True)
    assert args["limit_mm_per_prompt"] == {"image": 1}
    assert args["mm_processor_kwargs"] == {"size": {"shortest_edge": 128 * 128, "longest_edge": 512 * 512}}
    assert build_engine_args(config.model, config.decoder, "/ckpt")["limit_mm_per_prompt"] == {"image": 0}


@pytest.mark.parametrize(
    "args,field",
    [
        ({"decoder": {"engine": "tensorrt"}}, "decoder.engine"),
        ({"decoder": {"num_gpus": 1.5}}, "decoder.num_gpus"),
        ({"encoder": {"max_batch_sise": 4}}, "encoder.max_batch_sise"),
        ({"model": {"dtype": "int3"}}, "model.dtype"),
        ({"limits": {"max_body_bytes": -1}}, "limits.max_body_bytes"),
        ({"preprocessor": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}, "preprocessor"),
        ({"decoder": {"engine_args": {"gpu_memory_utilisation": 0.5}}}, "gpu_memory_utilisation"),
        ({"encoder": {"placement": "fused"}}, "encoder.placement"),
        ({"encoder": {"placement": "in_decoder"}, "decoder": {"engine": "transformers"}}, "encoder.placement"),
        ({"encoder": {"placement": "in_decoder"}, "model": {"family": "pp_ocr"}}, "encoder.placement"),
    ],
)
def test_invalid_config_names_the_field(args, field):
    with pytest.raises(ConfigError) as raised:
        call_user_app_builder_with_args_if_necessary(build_app, args)
    assert field in str(raised.value)


def test_yaml_args_round_trip_through_the_tree():
    document = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = document["applications"][0]["args"]
    config = load_config(args)
    assert config.decoder.engine == "vllm"
    assert config.model_dump(exclude_unset=True, exclude_defaults=False)["decoder"]["engine_args"] == args["decoder"]["engine_args"]



CPU_NICE_PROBE = """
import json, os, subprocess, sys, threading
from serve_app.config import StageConfig
started, stop = threading.Event(), threading.Event()
def idle():
    started.set(); stop.wait()
threading.Thread(target=idle).start(); started.wait()
before = os.getpriority(os.PRIO_PROCESS, 0)
StageConfig(cpu_nice=3).apply_cpu_nice()
threads = [os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")]
child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
stop.set()
print(json.dumps({"before": before, "threads": threads, "child": int(child.stdout)}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_cpu_nice_lowers_every_thread_and_the_processes_started_after():
    """A compute stage's cpu_nice reaches the threads Ray started before it and a child such as vLLM's engine core."""
    import json
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", CPU_NICE_PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    seen = json.loads(probe.stdout)
    expected = min(19, seen["before"] + 3)
    assert len(seen["threads"]) >= 2 and set(seen["threads"]) == {expected}  # every thread, not only the caller
    assert seen["child"] == expected


def test_the_cpu_configs_run_compute_below_the_front_door():
    for name in ("cpu.yaml", "lite.yaml"):
        config = OCRAppConfig.from_serve_config(ROOT / "configs" / name)
        assert config.ingress.cpu_nice == 0
        assert min(config.preprocessor.cpu_nice, config.encoder.cpu_nice, config.decoder.cpu_nice) > 0


@pytest.mark.parametrize("config_path", [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))])
def test_only_the_ingress_writes_an_access_line_per_request(config_path):
    """The inner stages' access lines repeat the ingress's; switched off in every shipped config."""
    _, deployments = deployments_of(config_path)
    assert deployments["OCRIngress"]._deployment_config.logging_config is None  # Serve's default: on
    for name in ("Preprocessor", "VisionEncoder", "Decoder"):
        assert deployments[name]._deployment_config.logging_config["enable_access_log"] is False
