"""Fail loudly, recover cleanly (no GPU needed): `device: cuda` without CUDA fails the start with the reason;
an encoder batch that runs out of GPU memory is retried image by image; encoder batches are capped by patches;
`make` stops before installing a vLLM whose CUDA the driver does not support."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from serve_app import cuda_driver_check
from serve_app.config import OCRAppConfig
from serve_app.errors import ServiceUnavailableError
from serve_app.model import hunyuan_vl
from serve_app.model.hunyuan_vl import resolve_device
from serve_app.stage_io import ImageEmbeddings, PreparedImage
from serve_app.stages import vision_encoder
from serve_app.stages.vision_encoder import VisionEncoder, encode_splitting_on_oom, is_out_of_memory

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------ resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_device_cuda_on_a_cpu_torch_build_fails_with_the_reason(no_cuda):
    no_cuda.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="device 'cuda' was configured.*CPU-only build"):
        resolve_device("cuda")


def test_device_cuda_with_every_gpu_hidden_names_cuda_visible_devices(no_cuda):
    no_cuda.setattr(torch.version, "cuda", "13.0")
    for hidden in ("", "-1"):
        no_cuda.setenv("CUDA_VISIBLE_DEVICES", hidden)
        with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES is"):
            resolve_device("cuda")


def test_device_cuda_without_a_visible_gpu_says_so(no_cuda):
    no_cuda.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(RuntimeError, match="no usable CUDA device.*nvidia-smi"):
        resolve_device("cuda")


def test_device_auto_falls_back_to_the_cpu_and_logs_why(no_cuda, caplog):
    no_cuda.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.INFO, logger=hunyuan_vl.__name__):
        assert resolve_device("auto") == "cpu"
    messages = [record.getMessage() for record in caplog.records]
    assert any("using the CPU" in message and "CPU-only build" in message for message in messages)


def test_a_visible_gpu_is_used_and_cpu_stays_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError):
        resolve_device("gpu")


# ------------------------------------------------------------------------------------------ encoder OOM


def image(marker: int, patches: int = 4) -> PreparedImage:
    """A 2x2-patch (one merged token) image whose pixels all hold `marker`."""
    side = int(patches**0.5)
    return PreparedImage(
        pixels=np.full((patches, 768), marker, np.uint8),
        image_grid_thw=np.array([1, side, side], np.int64),
        prompt="",
        original_size=(32, 32),
        oriented_size=(32, 32),
        model_size=(32, 32),
        exif_orientation=1,
    )


class FakeTower:
    """Stands in for encode_image_tensors: out of memory for more than one image at a time, or for an image
    whose marker is in `too_large`; otherwise one embedding row per image holding its marker."""

    def __init__(self, too_large: frozenset[int] = frozenset(), oom=torch.cuda.OutOfMemoryError):
        self.too_large, self.oom, self.calls = too_large, oom, []

    def __call__(self, tower, pixel_values, image_grid_thw, normalization=None):
        markers = [int(pixels[0, 0]) for pixels in pixel_values]
        self.calls.append(markers)
        if len(markers) > 1 or set(markers) & self.too_large:
            raise self.oom("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [torch.full((1, 4), float(marker)) for marker in markers]


@pytest.fixture
def encoder_stage(monkeypatch):
    """A VisionEncoder replica (the deployment's class) with a fake vision tower; `make(tower, **encoder)`."""
    monkeypatch.setattr(vision_encoder, "resolve_model_path", lambda model: "/no/checkpoint")
    monkeypatch.setattr(vision_encoder, "load_vision_tower", lambda path, dtype, device: object())
    monkeypatch.setattr(vision_encoder, "EncoderMetrics", mock.MagicMock)
    empty_cache = mock.Mock()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)

    def make(tower: FakeTower, **encoder) -> VisionEncoder:
        monkeypatch.setattr(vision_encoder, "encode_image_tensors", tower)
        config = OCRAppConfig.model_validate({"model": {"device": "cpu"}, "encoder": encoder})
        return VisionEncoder.func_or_class(config)

    make.empty_cache = empty_cache
    return make


def encode_all(stage: VisionEncoder, images: list[PreparedImage]) -> list:
    async def scenario():
        results = await asyncio.gather(*(stage.encode(item) for item in images), return_exceptions=True)
        await stage.batcher.close()
        return results

    return asyncio.run(scenario())


def marker_of(result: ImageEmbeddings) -> float:
    return float(result.to_tensor(torch.float32)[0, 0])


def test_an_out_of_memory_batch_is_retried_image_by_image(encoder_stage):
    tower = FakeTower()
    stage = encoder_stage(tower, max_batch_size=8)
    results = encode_all(stage, [image(marker) for marker in range(4)])
    assert [marker_of(result) for result in results] == [0.0, 1.0, 2.0, 3.0]  # each image its own result
    assert all(result.batch_size == 1 for result in results)
    assert tower.calls == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert encoder_stage.empty_cache.call_count >= 4  # the cache is freed before each retry
    assert stage.failure is None


def test_an_image_that_runs_out_of_memory_alone_gets_a_503_and_the_others_their_results(encoder_stage):
    stage = encoder_stage(FakeTower(too_large=frozenset({2})), max_batch_size=8)
    results = encode_all(stage, [image(marker) for marker in range(4)])
    assert [marker_of(results[index]) for index in (0, 1, 3)] == [0.0, 1.0, 3.0]
    assert isinstance(results[2], ServiceUnavailableError) and results[2].status_code == 503
    assert "out of GPU memory" in str(results[2])
    assert results[2].__cause__ is None  # not chained to the OOM, whose traceback holds the failed call's tensors
    assert stage.failure is None  # other images went through: the device works


def test_a_lone_image_out_of_memory_fails_only_that_request_and_marks_the_stage(encoder_stage):
    stage = encoder_stage(FakeTower(too_large=frozenset({7})), max_batch_size=8)
    (result,) = encode_all(stage, [image(7)])
    assert isinstance(result, ServiceUnavailableError)
    assert stage.failure is not None  # nothing went through: the next health check probes the tower


def test_an_out_of_memory_runtime_error_is_recognised_and_other_errors_are_not():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("device-side assert triggered"))
    assert not is_out_of_memory(ValueError("out of memory"))

    def broken(batch):
        raise RuntimeError("device-side assert triggered")

    with pytest.raises(RuntimeError, match="device-side assert"):  # not split: every image gets it, as before
        encode_splitting_on_oom(broken, [1, 2])


def test_a_runtime_error_saying_out_of_memory_splits_too_and_other_single_failures_stay_per_image():
    calls = []

    def encode(batch):
        calls.append(list(batch))
        if len(batch) > 1:
            raise RuntimeError("CUDA error: out of memory")
        if batch[0] == "bad":
            raise ValueError("cannot encode this one")
        return [batch[0].upper()]

    results = encode_splitting_on_oom(encode, ["a", "bad", "c"])
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_encoder_batches_are_capped_by_patches(encoder_stage):
    batches = []

    def tower(tower, pixel_values, image_grid_thw, normalization=None):
        batches.append([len(pixels) for pixels in pixel_values])
        return [torch.zeros((1, 4)) for _ in pixel_values]

    stage = encoder_stage(tower, max_batch_size=8, max_batch_patches=10)
    sizes = [4, 4, 4, 16, 4, 4]  # patches per image; the 16-patch image is larger than the cap
    results = encode_all(stage, [image(index, patches) for index, patches in enumerate(sizes)])
    assert all(isinstance(result, ImageEmbeddings) for result in results)
    assert batches == [[4, 4], [4], [16], [4, 4]]
    assert all(sum(batch) <= 10 or len(batch) == 1 for batch in batches)


def test_max_batch_patches_defaults_to_no_cap():
    assert OCRAppConfig().encoder.max_batch_patches is None
    with pytest.raises(ValueError):
        OCRAppConfig.model_validate({"encoder": {"max_batch_patches": 0}})


# ------------------------------------------------------------------------------------------ CUDA driver check

SMI_HEADER = """Tue Nov 25 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:00:05.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""


@pytest.mark.parametrize(
    ("driver", "cuda", "supported"),
    [("580.65.06", "13.0", True), ("590.10", "13.1", True), ("575.51.03", "12.9", False), ("550.54.15", "12.4", False)],
)
def test_the_driver_check_compares_nvidia_smi_s_cuda_version(driver, cuda, supported):
    output = SMI_HEADER.format(driver=driver, cuda=cuda)
    assert cuda_driver_check.driver_cuda_version(output) == tuple(int(part) for part in cuda.split("."))
    problem = cuda_driver_check.check("13.0", output)
    if supported:
        assert problem is None
    else:
        assert f"supports CUDA {cuda} at most" in problem
        assert "upgrade the NVIDIA driver" in problem and "CUDA_DRIVER_CHECK=0" in problem


def test_the_driver_check_compares_versions_as_numbers():
    assert cuda_driver_check.check("12.10", SMI_HEADER.format(driver="x", cuda="12.9")) is not None
    assert cuda_driver_check.check("12.9", SMI_HEADER.format(driver="x", cuda="12.10")) is None
    assert cuda_driver_check.driver_cuda_version("CUDA Version: N/A") is None
    assert cuda_driver_check.check("13.0", "no header") is None  # nothing to compare: not stopped


def run_check(tmp_path: Path, smi_output: str | None) -> subprocess.CompletedProcess:
    """The script as make runs it (system Python, standalone), with a fake nvidia-smi on PATH (or none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if smi_output is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!{sys.executable}\nprint({smi_output!r})\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    return subprocess.run(
        [sys.executable, str(ROOT / "serve_app" / "cuda_driver_check.py"), "13.0"],
        env={**os.environ, "PATH": str(bin_dir)}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


def test_the_script_stops_on_an_old_driver_and_passes_otherwise(tmp_path):
    old = run_check(tmp_path / "old", SMI_HEADER.format(driver="550.54.15", cuda="12.4"))
    assert old.returncode == 1 and "CUDA 12.4 at most" in old.stderr
    new = run_check(tmp_path / "new", SMI_HEADER.format(driver="580.65.06", cuda="13.0"))
    assert new.returncode == 0, new.stderr
    none = run_check(tmp_path / "none", None)  # no GPU: skipped
    assert none.returncode == 0 and none.stderr == ""


def test_make_runs_the_check_only_where_a_gpu_is(tmp_path):
    if subprocess.run(["which", "make"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")

    def dry_run(*variables: str) -> str:
        return subprocess.run(
            ["make", "-n", "install", f"VENV={tmp_path / 'venv'}", *variables],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        ).stdout

    assert "cuda_driver_check.py 13.0" not in dry_run("HAS_GPU=")
    assert "cuda_driver_check.py 13.0" in dry_run("HAS_GPU=1")
    assert "cuda_driver_check" not in dry_run("HAS_GPU=1", "CUDA_DRIVER_CHECK=0")
