"""bench/gpu_plan.py --run on a CUDA machine: the full-size random checkpoint through the real stage code
(vision tower + vLLM from embeddings) at a small count. Excluded by default (`-m gpu` runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 64


def test_gpu_plan_run(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")
    out = tmp_path / "gpu_plan.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "gpu_plan.py"), "--run", "--count", "48", "--concurrency", "16",
            "--max-tokens", str(MAX_TOKENS), "--out", str(out),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    run = json.loads(out.read_text())["run"]
    assert run["device"] == "cuda"
    assert run["pages_per_s"] > 0 and run["output_tokens_per_s"] > 0
    assert run["completion_tokens_min"] == MAX_TOKENS  # fixed length: EOS ignored
    assert run["kv_cache_tokens"] > 0
    by_batch = run["vision_activation"]["by_batch"]
    assert all(row["peak_gib"] > 0 for row in by_batch.values())
    assert out.with_suffix(".png").stat().st_size > 0
