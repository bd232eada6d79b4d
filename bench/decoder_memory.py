"""Decoder memory with and without the vision tower (vLLM engine, CPU).

The Decoder stage serves from precomputed embeddings with `limit_mm_per_prompt={"image": 0}`, so
vLLM never builds or loads the vision tower. This measures what that saves: the vLLM engine's
process tree (PSS and RSS, psutil) after one request, with the image limit at 0 (our decoder)
and at 1 (the tower loaded), on the tiny checkpoint and on a variant with the REAL vision tower
dimensions (1152 hidden, 27 layers, 16 heads; ~0.43 B parameters) so the difference is visible.

    python bench/decoder_memory.py                 # prints a table, saves bench/results/decoder_memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib.results import RESULTS, write_json  # noqa: E402
from serve_app.profiles import TEXT_ZH  # noqa: E402

REAL_VISION = {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16, "intermediate_size": 4304}


def build_real_vision_variant(tiny: Path, output: Path) -> Path:
    """The tiny checkpoint with a real-size vision tower (random weights)."""
    import shutil

    import torch
    from transformers import HunYuanVLConfig, HunYuanVLForConditionalGeneration

    shutil.copytree(tiny, output, dirs_exist_ok=True)
    config = HunYuanVLConfig.from_pretrained(tiny)
    for key, value in REAL_VISION.items():
        setattr(config.vision_config, key, value)
    config.vision_config.num_key_value_heads = REAL_VISION["num_attention_heads"]
    torch.manual_seed(0)
    HunYuanVLForConditionalGeneration(config).to(torch.float32).save_pretrained(output)
    return output


def engine_tree_memory_mib() -> tuple[float, float]:
    pss = rss = 0
    for process in psutil.Process().children(recursive=True):
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        pss, rss = pss + info.pss, rss + info.rss
    return pss / 2**20, rss / 2**20


async def measure(checkpoint: Path, image_limit: int) -> dict:
    from serve_app.config import DecoderConfig, ModelConfig
    from serve_app.engines.vllm_engine import VLLMEngine
    from serve_app.stages.preprocessor import ImagePreparer
    from serve_app.config import OCRAppConfig
    from serve_app.stage_io import DecodeRequest, ImageEmbeddings, SamplingOptions

    engine_args = {
        "enforce_eager": True,
        "kv_cache_memory_bytes": 64 * 2**20,
        "max_model_len": 2048,
        "max_num_seqs": 8,
        "limit_mm_per_prompt": {"image": image_limit},
    }
    engine = VLLMEngine(
        ModelConfig(source=str(checkpoint), dtype="float32"), DecoderConfig(engine_args=engine_args), str(checkpoint)
    )
    started = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - started
    prompt = ImagePreparer(OCRAppConfig(), str(checkpoint)).build_prompt(TEXT_ZH)
    grid = np.array([1, 8, 12])  # 4 * (6 + 1) + 2 = 30 image tokens
    embeddings = np.random.default_rng(0).standard_normal((30, 128)).astype(np.float32)
    await engine.generate(DecodeRequest(prompt, ImageEmbeddings(embeddings, grid), SamplingOptions(max_tokens=16)))
    await asyncio.sleep(1)
    pss, rss = engine_tree_memory_mib()
    await engine.shutdown()
    return {"checkpoint": checkpoint.name, "vision_tower": image_limit > 0, "start_s": round(start_s, 1),
            "pss_mib": round(pss), "rss_mib": round(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "decoder_memory.json")
    args = parser.parse_args()
    from serve_app.model.tiny_checkpoint import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        tiny = build_tiny_checkpoint(Path(scratch) / "tiny")
        real_vision = build_real_vision_variant(tiny, Path(scratch) / "tiny-text-real-vision")
        rows = [asyncio.run(measure(path, limit)) for path in (tiny, real_vision) for limit in (0, 1)]
    print(f"{'checkpoint':<24} {'vision tower':>12} {'PSS MiB':>8} {'RSS MiB':>8} {'start s':>8}")
    for row in rows:
        print(f"{row['checkpoint']:<24} {str(row['vision_tower']):>12} {row['pss_mib']:>8} {row['rss_mib']:>8} {row['start_s']:>8}")
    print(f"saved {write_json(rows, args.out)}")


if __name__ == "__main__":
    main()
