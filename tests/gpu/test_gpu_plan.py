"""bench/gpu_plan.py on a CUDA machine with the full-size random checkpoint, at a small size. Excluded by default
(`-m gpu` runs them).

- --run: the stage code in this process (vision tower + vLLM from embeddings).
- --check (`make gpu-check`): serve_config.yaml's own graph through Ray Serve with its GPU fractions and
  kv_cache_memory_bytes; CUDA graphs captured, the plan's KV cache taken without profiling, every measured
  figure within 10 % of the plan.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 64


def _needs_cuda_and_vllm() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")


def _bench(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_plan.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gpu_plan_run(tmp_path):
    _needs_cuda_and_vllm()
    out = tmp_path / "gpu_plan.json"
    completed = _bench("--run", "--count", "48", "--concurrency", "16", "--max-tokens", str(MAX_TOKENS), "--out", str(out))
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    report = json.loads(out.read_text())
    run, plan = report["run"], report["plan"]
    assert run["device"] == "cuda"
    assert run["pages_per_s"] > 0 and run["output_tokens_per_s"] > 0
    assert run["completion_tokens_min"] == MAX_TOKENS  # fixed length: EOS ignored
    # The config's kv_cache_memory_bytes, whatever this card's size.
    assert run["kv_cache_memory_bytes"] == plan["kv_cache_memory_bytes"]
    assert abs(run["kv_cache_tokens"] - plan["kv_tokens"]) <= 0.10 * plan["kv_tokens"]
    by_batch = run["vision_activation"]["by_batch"]
    assert all(row["peak_gib"] > 0 for row in by_batch.values())
    assert out.with_suffix(".png").stat().st_size > 0


def test_gpu_check_serves_the_config_within_the_plan(tmp_path):
    _needs_cuda_and_vllm()
    out = tmp_path / "gpu_check.json"
    completed = _bench(
        "--check", "--count", "64", "--concurrency", "16", "--max-tokens", "32", "--full-pages", "6",
        "--port", str(_free_port()), "--out", str(out),
    )
    output = f"{completed.stdout[-6000:]}\n{completed.stderr[-4000:]}"
    assert out.is_file(), output
    check = json.loads(out.read_text())["check"]
    assert completed.returncode == 0 and check["ok"], output
    assert check["failures"] == []
    # vLLM captured its CUDA graphs and took the plan's KV cache instead of profiling the shared card.
    assert "graphs_captured" in check["logs"] and "kv_reserved" in check["logs"]
    # Requests through Ray Serve's HTTP proxy: all answered, with throughput.
    for phase in ("receipts", "full_pages"):
        assert check[phase]["ok"] == check[phase]["requests"] > 0, phase
    assert check["receipts"]["pages_per_s"] > 0 and check["receipts"]["output_tokens_per_s"] > 0
    # Every measured figure within 10 % of the plan, the KV cache's at least.
    figures = {row["figure"].split(" (")[0]: row for row in check["comparisons"]}
    assert "KV cache tokens" in figures and "KV cache bytes" in figures
    assert all(abs(row["diff"]) <= 0.10 for row in check["comparisons"])
    if check["per_stage"]:  # nvidia-smi's pids are this machine's (not another PID namespace's)
        assert any(name.startswith("vLLM process") for name in figures)
        assert any(name.startswith("encoder replica") for name in figures)
