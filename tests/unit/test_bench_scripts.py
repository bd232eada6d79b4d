"""Smoke tests of the benchmark scripts: each runs at minimal size in a subprocess (vLLM's processes and
state stay out of the test process) and writes JSON of the expected shape with positive numbers, and a
plot. No timing assertions: numbers on shared 2-core machines vary several-fold from run to run.

engines.py and split_vs_fused.py start vLLM once each (~25-40 s) on the tiny checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = ROOT / "configs" / "cpu.yaml"


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert completed.returncode == 0, f"{script} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return completed


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_gpu_plan_plan_only(tmp_path):
    out = tmp_path / "plan.json"
    completed = run_script("gpu_plan.py", "--plan-only", "--out", str(out), timeout=300)
    assert "KV cache per token" in completed.stdout and "fits:" in completed.stdout
    report = json.loads(out.read_text())
    assert report["run"] is None
    plan = report["plan"]
    total_parameters = plan["language_model_parameters"] + plan["vision_parameters"]
    assert 0.9e9 < total_parameters < 1.1e9  # HunyuanOCR is ~1 B parameters
    assert plan["kv_bytes_per_token"] == 2 * 24 * 8 * 128 * 2  # 96 KiB in bf16
    for value in (
        plan["decoder_weights_bytes"],
        plan["encoder_weights_bytes"],
        plan["kv_tokens"],
        plan["activation_per_page_bytes"],
        plan["activation_per_batch_bytes"],
        plan["total_bytes"],
    ):
        assert positive(value)
    assert plan["total_bytes"] <= plan["card_bytes"]
    assert plan["image_tokens_per_page"] == 16514  # a 4096x4096 page at HunyuanOCR 1.5's budget
    assert all(positive(row["concurrency"]) for row in plan["in_flight"])
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_engines_script(tmp_path, tiny_checkpoint):
    out = tmp_path / "engines.json"
    run_script(
        "engines.py", "--source", str(tiny_checkpoint), "--serve-config", str(CPU_CONFIG),
        "--images", str(tmp_path / "no-images"), "--concurrency", "1", "2", "--requests", "2",
        "--max-tokens", "8", "--batch-cap", "4", "--out", str(out),
    )
    report = json.loads(out.read_text())
    assert [row["engine"] for row in report["engines"]] == ["transformers", "vllm"]
    for row in report["engines"]:
        assert set(row["by_concurrency"]) == {"1", "2"}
        for rates in row["by_concurrency"].values():
            assert positive(rates["output_tokens_per_s"]) and rates["requests"] >= 2
        assert positive(row["peak_mem_gib"])
        assert positive(row["largest_batch"]["largest_batch"])
    transformers, vllm = report["engines"]
    assert transformers["largest_batch"]["largest_batch"] == 4  # the cap: the tiny model never runs out
    assert positive(vllm["largest_batch"]["kv_cache_tokens"])
    assert positive(vllm["largest_batch"]["observed_peak_running"])
    assert transformers["prompt_tokens"] == vllm["prompt_tokens"] > 0  # the same requests
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_engines_script_served(tmp_path, tiny_checkpoint):
    """engines.py --served: each engine's whole graph on Ray Serve over HTTP, one request at concurrency 1."""
    from tests.conftest import free_port

    out = tmp_path / "engines-served.json"
    run_script(
        "engines.py", "--served", "--source", str(tiny_checkpoint), "--serve-config", str(CPU_CONFIG),
        "--images", str(tmp_path / "no-images"), "--concurrency", "1", "--requests", "1",
        "--max-tokens", "4", "--port", str(free_port()), "--out", str(out), timeout=900,
    )
    report = json.loads(out.read_text())
    assert report["mode"] == "served"
    assert [row["engine"] for row in report["engines"]] == ["transformers", "vllm"]
    for row in report["engines"]:
        assert set(row["by_concurrency"]) == {"1"}
        assert row["by_concurrency"]["1"]["requests"] == 1
        assert positive(row["by_concurrency"]["1"]["output_tokens_per_s"])
        assert positive(row["peak_mem_gib"])
        assert 1 <= row["completion_tokens_per_request"]["max"] <= 4
        limits = row["largest_batch"]
        assert limits["observable"] is False
        assert limits["decoder_max_ongoing_requests"] == 32  # configs/cpu.yaml
        assert limits["max_encoder_batch_size_seen"] == 1
    transformers, vllm = report["engines"]
    assert transformers["largest_batch"]["vllm_max_num_seqs"] is None
    assert vllm["largest_batch"]["vllm_max_num_seqs"] == 32
    assert transformers["prompt_tokens"] == vllm["prompt_tokens"] > 0  # the same page
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_split_vs_fused_script(tmp_path, tiny_checkpoint):
    out = tmp_path / "split_vs_fused.json"
    run_script(
        "split_vs_fused.py", "--source", str(tiny_checkpoint), "--serve-config", str(CPU_CONFIG),
        "--images", str(tmp_path / "no-images"), "--fused-engine", "shared", "--concurrency", "1", "2",
        "--requests", "2", "--rounds", "1", "--max-tokens", "8", "--out", str(out),
    )
    report = json.loads(out.read_text())
    assert report["fused_engine"] == "shared"
    assert report["same_prompt_tokens"] is True  # both paths saw the same image size
    assert set(report["by_concurrency"]) == {"1", "2"}
    for summary in report["by_concurrency"].values():
        for name in ("split", "fused"):
            assert positive(summary[name]["p50_ms"]) and positive(summary[name]["pages_per_s"])
            assert positive(summary[name]["output_tokens_per_s"])
        assert positive(summary["ratio_p50_latency_fused_over_split"])
        assert positive(summary["ratio_throughput_fused_over_split"])
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_handoff_smoke(tmp_path):
    """bench/handoff.py at minimal size: its own two Ray actors hand embeddings over both ways."""
    out = tmp_path / "handoff.json"
    run_script("handoff.py", "--tokens", "30", "--hidden-size", "64", "--requests", "3", "--rounds", "1", "--out", str(out))
    report = json.loads(out.read_text())
    entry = report["by_tokens"]["30"]
    for way in ("float32", "bfloat16"):
        assert all(positive(entry[way][key]) for key in ("p50_ms", "cpu_ms_per_request"))
    # The wire sizes are exact: 4 and 2 bytes a value.
    assert (entry["float32"]["wire_mb"], entry["bfloat16"]["wire_mb"]) == (30 * 64 * 4 / 1e6, 30 * 64 * 2 / 1e6)
    assert positive(entry["p50_ratio_bfloat16_over_float32"]) and positive(entry["cpu_ratio_bfloat16_over_float32"])
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.integration
def test_overhead_smoke(tmp_path):
    """bench/overhead.py at minimal size: its own Ray Serve graph (cpu.yaml) over HTTP vs the same stage
    code in-process, one round at concurrency 1 and 2."""
    from tests.conftest import free_port

    port = free_port()
    out = tmp_path / "overhead.json"
    run_script(
        "overhead.py", "--concurrency", "1", "2", "--requests", "4", "--rounds", "1", "--max-tokens", "4",
        "--port", str(port), "--out", str(out), timeout=900,
    )
    report = json.loads(out.read_text())
    assert set(report["by_concurrency"]) == {"1", "2"}
    for summary in report["by_concurrency"].values():
        for path in ("http", "in_process"):
            assert all(positive(summary[path][key]) for key in ("p50_ms", "p95_ms", "requests_per_s", "output_tokens_per_s"))
        assert positive(summary["ratio_p50_latency_http_over_in_process"])
        assert positive(summary["ratio_throughput_http_over_in_process"])


def test_load_generator_backs_off_as_refusals_say():
    """bench/load.py's generator (bench.lib.http_load): a worker refused with 503 + Retry-After waits that
    long before its next request, and the refusal is counted as an error of its status, not dropped."""
    import asyncio

    import httpx

    from bench.lib import http_load

    sent_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(time.perf_counter())
        if len(sent_at) == 1:
            return httpx.Response(503, headers={"retry-after": "0.5"}, json={"error": {"code": "overloaded"}})
        body = {"pages": [{}], "usage": {"completion_tokens": 3}, "timings_ms": {"decode": 1.0}}
        return httpx.Response(200, json=body)

    async def run() -> dict:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://ocr") as client:
            target = http_load.Target(client, 8, [], documents=[http_load.Document("a.png", b"x", "image/png")])
            return await http_load.run_level(target, ["text"], concurrency=1, requests=3)

    level = asyncio.run(run())
    assert (level["ok"], level["errors"]) == (2, {"503": 1})
    assert sent_at[1] - sent_at[0] >= 0.5  # waited out the Retry-After
    assert sent_at[2] - sent_at[1] < 0.5  # but not after a success
