"""Smoke test of the bench scripts (bench/load.py, bench/batching.py): a tiny run against the vLLM
graph, asserting the report's shape and that its numbers are positive. Not a timed test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image, to_bytes
from tests.integration.conftest import BASE_URL, ROOT, ROUTES

pytestmark = pytest.mark.integration

LEVEL_KEYS = {
    "concurrency", "requests", "ok", "errors", "error_count", "seconds", "requests_per_s", "pages_per_s",
    "output_tokens_per_s", "output_tokens", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "streams",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "ttft_mean_ms", "stage_means", "by_kind", "client_cpu_s",
}
POSITIVE = ("seconds", "requests_per_s", "pages_per_s", "output_tokens_per_s", "output_tokens",
            "p50_ms", "p95_ms", "p99_ms", "ttft_p50_ms", "ttft_p95_ms")
MIX = "text=1,spotting=1,fields=1,stream=1"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench-images")
    for seed in range(3):
        (folder / f"{seed}.png").write_bytes(to_bytes(make_image(320, 240, seed=seed)))
    (folder / "3.jpg").write_bytes(to_bytes(make_image(256, 320, seed=3), "JPEG"))
    return folder


def _check_levels(report: dict, concurrency: list[int], requests: int, kinds: set[str]) -> None:
    assert [level["concurrency"] for level in report["levels"]] == concurrency
    for level in report["levels"]:
        assert LEVEL_KEYS <= set(level), LEVEL_KEYS - set(level)
        assert level["errors"] == {} and level["error_count"] == 0, level["errors"]
        assert level["requests"] == level["ok"] == requests
        for key in POSITIVE:
            assert level[key] > 0, (key, level[key])
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        # A stream's first token comes before its own last one (not before other requests' ends).
        assert level["streams"] >= 1 and level["ttft_p50_ms"] <= level["by_kind"]["stream"]["p99_ms"]
        assert set(level["by_kind"]) == kinds
        assert level["stage_means"]["decode_ms"] > 0 and level["stage_means"]["encoder_batch_size"] >= 1


def _check_files(report: dict, out: Path) -> dict:
    saved = json.loads(out.read_text())
    assert saved["levels"] == report["levels"]
    png = Path(saved["plot"])
    assert png == out.with_suffix(".png") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return saved


def test_load_sweep_smoke(served, images, tmp_path):
    out = tmp_path / "load.json"
    report = _module("load").main([
        "--url", f"{BASE_URL}{ROUTES['vllm']}", "--images", str(images), "--mix", MIX,
        "--concurrency", "1", "2", "--requests", "4", "--max-tokens", "8", "--warmup", "0", "--out", str(out),
    ])
    _check_levels(report, [1, 2], 4, {"text", "spotting", "fields", "stream"})
    saved = _check_files(report, out)
    assert saved["max_tokens"] == 8 and saved["model"] and saved["mix"] == {"text": 1, "spotting": 1, "fields": 1, "stream": 1}


def test_batching_smoke(served, images, tmp_path):
    out = tmp_path / "batching.json"
    report = _module("batching").main([
        "--url", f"{BASE_URL}{ROUTES['vllm']}", "--images", str(images), "--mix", "text=3,stream=1",
        "--concurrency", "1", "2", "--requests", "4", "--max-tokens", "8", "--warmup", "0", "--out", str(out),
    ])
    _check_levels(report, [1, 2], 4, {"text", "stream"})
    saved = _check_files(report, out)
    ratio = saved["ratio"]
    assert (ratio["low_concurrency"], ratio["high_concurrency"]) == (1, 2)
    assert all(ratio[key] > 0 for key in ("requests_per_s", "pages_per_s", "output_tokens_per_s"))
    assert saved["target"] == 8 and isinstance(saved["meets_target"], bool)


def test_overload_smoke(served, images, tmp_path):
    out = tmp_path / "overload.json"
    report = _module("overload").main([
        "--url", f"{BASE_URL}{ROUTES['vllm']}", "--app", "vllm", "--images", str(images), "--limit", "2",
        "--max-tokens", "4", "--multiplier", "2", "--duration", "2", "--cycles", "2", "--idle", "1",
        "--capacity-concurrency", "2", "--capacity-seconds", "3", "--memory-interval", "1", "--out", str(out),
    ])
    assert json.loads(out.read_text())["requests"] == report["requests"] > 0
    assert abs(report["requests"] - 2 * report["offered_rps"] * 2) <= 2  # two bursts of 2 s
    assert report["rss_mib_by_minute"][0]["minute"] == 0 and report["rss_mib_by_minute"][0]["Decoder"] > 0
    assert report["capacity_rps"] > 0 and report["offered_rps"] > 0
    assert set(report["statuses"]) <= {"200", "503"}, report["statuses"]  # served or shed, nothing else
    assert report["accepted_correct"] == report["accepted"] > 0
    assert set(report["memory_mib"]) == {"Preprocessor", "VisionEncoder", "Decoder", "OCRIngress"}
    assert all(stage["max_mib"] > 0 for stage in report["memory_mib"].values())
    assert Path(report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_smoke(served, images, tmp_path):
    out = tmp_path / "soak.json"
    report = _module("soak").main([
        "--url", f"{BASE_URL}{ROUTES['vllm']}", "--app", "vllm", "--images", str(images), "--minutes", "0.1",
        "--interval", "1", "--concurrency", "2", "--max-tokens", "4", "--out", str(out),
    ])
    assert report["requests"] > 0 and set(report["statuses"]) == {"200"}, report["statuses"]
    assert set(report["stages"]) == {"Preprocessor", "VisionEncoder", "Decoder", "OCRIngress"}
    assert all(stage["end_mib"] > 0 for stage in report["stages"].values())
    assert len(report["samples"]) >= 3 and json.loads(out.read_text())["requests"] == report["requests"]


def test_stage_cpu_smoke(served, images, tmp_path):
    out = tmp_path / "stage_cpu.json"
    report = _module("stage_cpu").main([
        "--url", f"{BASE_URL}{ROUTES['vllm']}", "--app", "vllm", "--images", str(images), "--concurrency", "2",
        "--duration", "3", "--max-tokens", "4", "--warmup", "1", "--out", str(out),
    ])
    assert json.loads(out.read_text()) == report
    assert report["requests_ok"] > 0 and report["errors"] == {}
    groups = report["by_group"]
    # Every stage's replica, vLLM's processes under the Decoder, and Ray's own processes are there.
    assert {"Preprocessor", "VisionEncoder", "Decoder", "Decoder children", "OCRIngress", "Ray proxy", "raylet"} <= set(groups)
    for stage in ("Preprocessor", "VisionEncoder", "Decoder children", "OCRIngress"):
        assert groups[stage]["ms_per_request"] > 0, stage  # each did work for every request
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vs_rapidocr_smoke(served, tmp_path):
    from tests.integration.conftest import LITE_ROUTE, SROIE_DIR

    out = tmp_path / "vs_rapidocr.json"
    report = _module("vs_rapidocr").main([
        "--url", f"{BASE_URL}{LITE_ROUTE}", "--images", str(SROIE_DIR), "--limit", "2", "--concurrency", "1", "2",
        "--requests-per-client", "1", "--rounds", "1", "--out", str(out),
    ])
    assert [row["concurrency"] for row in report["levels"]] == [1, 2]
    for row in report["levels"]:
        assert row["requests"] == 2
        for key in ("graph_p50_ms", "rapidocr_p50_ms", "graph_rps", "rapidocr_rps", "p50_ratio", "throughput_ratio"):
            assert row[key] > 0, key
        # Where the time goes: each stage did work, and the stages fit inside the request.
        for side, stages in (("graph", ("preprocess", "encode", "decode")), ("rapidocr", ("det", "cls", "rec"))):
            assert set(row[f"{side}_stages_ms"]) == {*stages, "rest"}
            assert all(row[f"{side}_stages_ms"][stage] > 0 for stage in stages), side
            assert sum(row[f"{side}_stages_ms"][stage] for stage in stages) <= row[f"{side}_p50_ms"] * 1.5, side
    assert json.loads(out.read_text())["levels"] == report["levels"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vs_vllm_smoke(served, checkpoints, tmp_path):
    """vLLM's own OpenAI server on the session checkpoint beside the session's vLLM graphs of both placements: same
    prompts (the script stops when the prompt token counts differ), numbers of the expected shape."""
    from tests.integration.conftest import IN_DECODER_ROUTE, SROIE_DIR

    out = tmp_path / "vs_vllm.json"
    report = _module("vs_vllm").main([
        "--serve-config", str(ROOT / "configs" / "cpu.yaml"), "--source", checkpoints["1.5"],
        "--graph-url", f"split={BASE_URL}{ROUTES['vllm']}", "--graph-url", f"in_decoder={BASE_URL}{IN_DECODER_ROUTE}",
        "--images", str(SROIE_DIR), "--limit", "2", "--concurrency", "1", "2", "--requests-per-client", "1",
        "--max-tokens", "8", "--rounds", "1", "--out", str(out),
    ])
    assert [row["concurrency"] for row in report["levels"]] == [1, 2]
    for row in report["levels"]:
        assert row["mean_prompt_tokens"] > 100  # an image's tokens and the instruction, the same on all three
        assert row["placements"] == ["split", "in_decoder"]
        for side in ("split", "in_decoder", "vllm"):
            assert row[f"{side}_output_tokens_per_s"] > 0 and row[f"{side}_p50_ms"] > 0, side
        for side in ("split", "in_decoder"):
            assert row[f"{side}_throughput_ratio"] > 0 and row[f"{side}_p50_ratio"] > 0, side
    assert json.loads(out.read_text())["levels"] == report["levels"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
