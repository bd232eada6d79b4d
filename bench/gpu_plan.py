"""GPU memory plan and GPU check of HunyuanOCR on one 24 GB card.

The plan is serve_app/gpu_plan.py's (the same arithmetic the builder checks): weights per stage, vision
activations per encoder batch at max_pixels, KV bytes per token and per page, vLLM's and each encoder
replica's CUDA context, display headroom, pages in flight, and whether the Ray GPU fractions hold it all.

    python bench/gpu_plan.py --plan-only          # the plan of serve_config.yaml (default without CUDA)
    python bench/gpu_plan.py --plan-only --serve-config configs/hunyuanocr-1.0.yaml --card-gib 16
    python bench/gpu_plan.py --build              # also write the full-size random checkpoint (~2 GB, ~1 min)
    python bench/gpu_plan.py --run                # CUDA + vLLM: the stage code in this process, throughput
    python bench/gpu_plan.py --check              # CUDA + vLLM: the served graph on this card (make gpu-check)

--run measures throughput through the stage code in this process (ImagePreparer, the vision tower with the
VisionEncoder's batching, VLLMEngine) at a fixed 300 output tokens a page (ignore_eos).

--check starts the serve config's own graph through Ray Serve (`serve.run(build_app(config))`) with the
full-size random checkpoint (or --source real weights) and the config's own GPU fractions and
kv_cache_memory_bytes, then: confirms vLLM captured its CUDA graphs and took the planned KV cache without
profiling (the Decoder's log lines under Ray's session logs), sends full-size pages (the encoder's
largest batch) and receipt images at concurrency 64 to /ocr, prints pages/s, output tok/s and each
process's peak GPU memory (nvidia-smi --query-compute-apps) beside the plan, and exits non-zero on any
failure or a measured figure more than --tolerance (10 %) off the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.config import cuda_available, load_app_config, with_placement  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES, image_files, load_pages, synthetic_page  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.stats import p50_p95  # noqa: E402
from serve_app.gpu_plan import (  # noqa: E402
    GIB,
    PlanAssumptions,
    GpuPlan,
    ModelDims,
    format_plan,
    gpu_plan,
)

FULL_VOCAB = 120818
DEFAULT_CHECKPOINT_DIR = Path("~/.cache/hunyuan-ocr-serve/full-size-random-v1").expanduser()
MARKER = "full_size_random.json"
GOALS = {"pages_per_s": 25.0, "output_tokens_per_s": 4000.0}
MIB = 2**20


def model_dims(source: str | None) -> ModelDims:
    """The checkpoint's dimensions where its config.json is on disk; HunyuanOCR's otherwise."""
    if source and (Path(source).expanduser() / "config.json").is_file():
        return ModelDims.from_config_json(Path(source).expanduser())
    return ModelDims()


# --------------------------------------------------------------------------------------------- checkpoint


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def full_size_tokenizer(seed: int = 0, vocab_size: int = FULL_VOCAB):
    """The tiny checkpoint's tokenizer with its vocabulary padded to the real size: filler entries (byte-level
    spellings of 2-3 character Chinese strings, never produced by merges) fill the ids up to
    vocab_size - 11, then the 11 special tokens follow. Every id a random model can sample decodes."""
    import itertools

    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from serve_app.model import tiny_checkpoint as tc

    base = tc._build_tokenizer(seed)
    model = json.loads(base.backend_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    target = vocab_size - len(tc.SPECIAL_TOKENS)
    byte_chars = _bytes_to_unicode()
    chars = list(dict.fromkeys(tc.COMMON_CHINESE))
    combos = itertools.chain(itertools.product(chars, repeat=2), itertools.product(chars, repeat=3))
    for combo in combos:
        if len(vocab) >= target:
            break
        token = "".join(byte_chars[b] for b in "".join(combo).encode("utf-8"))
        vocab.setdefault(token, len(vocab))
    skip = {"backend", "vocab", "merges", "vocab_file", "merges_file", "tokenizer_file", "name_or_path"}
    kwargs = {key: value for key, value in base.init_kwargs.items() if key not in skip}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in tc.SPECIAL_TOKENS])
    tokenizer.chat_template = tc.CHAT_TEMPLATE
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"padded tokenizer has {len(tokenizer)} entries, expected {vocab_size}")
    return tokenizer


def placeholder_ids(vocab_size: int = FULL_VOCAB) -> dict[str, int]:
    """Special-token ids as full_size_tokenizer assigns them (the last 11 ids): the config without a tokenizer."""
    from serve_app.model import tiny_checkpoint as tc

    first = vocab_size - len(tc.SPECIAL_TOKENS)
    return {token: first + index for index, token in enumerate(tc.SPECIAL_TOKENS)}


def full_size_config():
    from serve_app.model.tiny_checkpoint import build_full_size_config

    return build_full_size_config(placeholder_ids(), FULL_VOCAB)


def build_full_size_checkpoint(output_dir: Path, seed: int = 0, device: str | None = None) -> Path:
    """Write the full-size random checkpoint (bf16 weights, padded tokenizer, real pixel budget) into
    `output_dir`; a no-op when it is already there."""
    import torch
    from transformers import GenerationConfig, HunYuanVLForConditionalGeneration, HunYuanVLProcessor
    from transformers.models.hunyuan_vl.image_processing_hunyuan_vl import HunYuanVLImageProcessor

    from serve_app.model import tiny_checkpoint as tc
    from serve_app.model.tiny_checkpoint import build_full_size_config

    output_dir = Path(output_dir).expanduser()
    if (output_dir / MARKER).is_file():
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = full_size_tokenizer(seed)
    ids = tc._token_ids(tokenizer)
    config = build_full_size_config(ids, len(tokenizer))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = torch.get_default_dtype()
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            model = HunYuanVLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
        torch.random.set_rng_state(rng)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[tc.BOS_TOKEN], eos_token_id=ids[tc.EOS_TOKEN], pad_token_id=ids[tc.PAD_TOKEN]
    )
    model.save_pretrained(output_dir, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # vLLM, started next, sizes itself from the free memory
    image_processor = HunYuanVLImageProcessor(min_pixels=512 * 512, max_pixels=2048 * 2048)
    HunYuanVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=tc.CHAT_TEMPLATE).save_pretrained(
        output_dir
    )
    elapsed = time.perf_counter() - started
    (output_dir / MARKER).write_text(json.dumps({"seed": seed, "build_s": round(elapsed, 1), "device": device}))
    print(f"built the full-size random checkpoint in {output_dir} in {elapsed:.0f} s")
    return output_dir




# --------------------------------------------------------------------------------------------- plan


def image_tokens(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = 32) -> tuple[int, int, int]:
    """(tokens, patches, pixels) of an image at the pixel budget: (H/32)*(W/32+1)+2 tokens, (H/16)*(W/16) patches."""
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import smart_resize

    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (h // factor) * (w // factor + 1) + 2, (h // 16) * (w // 16), h * w


def receipt_image_tokens(images_dir: Path | None, app) -> tuple[int | None, str]:
    """The median image tokens of the receipts in `images_dir` at the config's pixel budget (None: no images)."""
    from PIL import Image

    files = image_files(images_dir)
    if not files:
        return None, f"assumed {PlanAssumptions().receipt_image_tokens} image tokens a receipt (463x1000, SROIE-like)"
    tokens = []
    for path in files:
        with Image.open(path) as image:
            tokens.append(image_tokens(*image.size, app.model.min_pixels, app.model.max_pixels)[0])
    return int(statistics.median(tokens)), f"{images_dir}: {len(files)} receipts, {min(tokens)}-{max(tokens)} image tokens"


def placed(app, placement: str | None):
    """The config with `placement` (None: as it is)."""
    return with_placement(app, placement) if placement else app


def make_plan(app, card_gib: float, dims: ModelDims, receipt_tokens: int | None, reserve_gib: float | None = None) -> GpuPlan:
    updates: dict[str, Any] = {}
    if receipt_tokens is not None:
        updates["receipt_image_tokens"] = receipt_tokens
    if reserve_gib is not None:
        updates["vllm_reserve_bytes"] = int(reserve_gib * GIB)
    return gpu_plan(app, dims, int(card_gib * GIB) if card_gib else None, PlanAssumptions(**updates))


# --------------------------------------------------------------------------------------------- run (in-process)


async def measure_run(args, app, model_path: str, plan: GpuPlan) -> dict:
    """Throughput through the stage code in this process; vLLM gets the config's own KV cache size."""
    import torch

    from bench.lib.config import with_engine_args
    from bench.lib.http_load import run_load
    from bench.lib.pipeline import SplitPipeline, fixed_length_outputs

    fixed_length_outputs()
    on_cuda = torch.cuda.is_available()
    max_num_seqs = max(int(app.decoder.engine_args.get("max_num_seqs", 0) or 0), args.concurrency)
    app = with_engine_args(app, max_num_seqs=max_num_seqs)
    pipeline = SplitPipeline(app, model_path)
    await pipeline.start()
    try:
        llm = pipeline.engine._engine()
        cache = llm.vllm_config.cache_config
        kv_tokens = int(cache.num_gpu_blocks or 0) * int(cache.block_size)
        activation = measure_vision_activation(pipeline, app) if on_cuda else None
        pages, origin = load_pages(args.images, args.count)
        results: list[dict] = []

        async def send(payload: bytes) -> int:
            result = await pipeline.run(payload, args.max_tokens)
            results.append(result)
            return result["completion_tokens"]

        warm = pages[: min(len(pages), max(4, args.concurrency // 4))]
        await run_load(send, warm, min(len(warm), args.concurrency))
        results.clear()
        pipeline.encoder.batch_sizes.clear()
        load = await run_load(send, pages, args.concurrency)
    finally:
        await pipeline.shutdown()
    stages = {stage: p50_p95([r[f"{stage}_s"] * 1000 for r in results]) for stage in ("preprocess", "encode", "decode")}
    return {
        "device": pipeline.device,
        "gpu": torch.cuda.get_device_name(0) if on_cuda else None,
        "checkpoint": model_path,
        "images": origin,
        "pages": args.count,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "engine_start_s": round(pipeline.start_s, 1),
        "kv_cache_memory_bytes": plan.kv_cache_memory_bytes,
        "kv_cache_tokens": kv_tokens,
        "kv_cache_tokens_planned": plan.kv_tokens,
        "pages_per_s": load["requests_per_s"],
        "output_tokens_per_s": load["output_tokens_per_s"],
        "latency_ms": {"p50": load["p50_ms"], "p95": load["p95_ms"]},
        "stage_ms": stages,
        "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in results),
        "completion_tokens_min": min(r["completion_tokens"] for r in results),
        "encoder_batch_size_mean": statistics.mean(pipeline.encoder.batch_sizes) if pipeline.encoder.batch_sizes else 0.0,
        "vision_activation": activation,
        "vision_activation_planned_gib": {
            "1": plan.activation_per_page_bytes / GIB,
            str(app.encoder.max_batch_size): plan.activation_per_batch_bytes / GIB,
        },
        "goals": GOALS,
        "meets_goals": {key: load[key if key != "pages_per_s" else "requests_per_s"] >= goal for key, goal in GOALS.items()},
    }


def measure_vision_activation(pipeline, app) -> dict:
    """Peak allocation of the tower on synthetic max_pixels pages, one page and a full encoder batch."""
    import numpy as np
    import torch

    from serve_app.model.hunyuan_vl import encode_image_tensors

    side = int(math.isqrt(app.model.max_pixels)) // 32 * 32
    grid = np.array([1, side // 16, side // 16], dtype=np.int64)
    # 8-bit patches, normalised on the device: what the VisionEncoder gets from the Preprocessor.
    pixels = np.random.default_rng(0).integers(0, 256, (int(np.prod(grid)), 3 * 16 * 16), dtype=np.uint8)
    normalization = pipeline.preparer.normalization
    measured = {}
    for batch in sorted({1, app.encoder.max_batch_size}):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        encode_image_tensors(pipeline.tower, [pixels] * batch, [grid] * batch, normalization)
        torch.cuda.synchronize()
        measured[str(batch)] = {
            "peak_gib": (torch.cuda.max_memory_allocated() - before) / GIB,
            "seconds": round(time.perf_counter() - started, 3),
        }
    torch.cuda.empty_cache()
    return {"side": side, "by_batch": measured}




def print_run(run: dict) -> None:
    print(
        f"Run on {run['gpu'] or run['device']}: {run['pages']} pages ({run['images']}) at concurrency {run['concurrency']}, "
        f"{run['max_tokens']} output tokens each (ignore_eos); vLLM started in {run['engine_start_s']} s"
    )
    print(
        f"  KV cache: {run['kv_cache_tokens']:,} tokens (planned {run['kv_cache_tokens_planned']:,}, "
        f"kv_cache_memory_bytes {run['kv_cache_memory_bytes']:,})"
    )
    goals = run["goals"]
    met = {key: "MET" if value else "NOT MET" for key, value in run["meets_goals"].items()}
    print(f"  pages/s      {run['pages_per_s']:9.2f}   goal >= {goals['pages_per_s']:g}: {met['pages_per_s']}")
    print(
        f"  output tok/s {run['output_tokens_per_s']:9.1f}   goal >= {goals['output_tokens_per_s']:g}: "
        f"{met['output_tokens_per_s']}"
    )
    stages = run["stage_ms"]
    print(
        f"  latency p50 {run['latency_ms']['p50']:.0f} ms, p95 {run['latency_ms']['p95']:.0f} ms; stage p50: preprocess "
        f"{stages['preprocess']['p50']:.1f} ms, encode (queue + tower) {stages['encode']['p50']:.1f} ms, "
        f"decode {stages['decode']['p50']:.0f} ms; "
        f"encoder batch {run['encoder_batch_size_mean']:.1f} on average; prompt {run['prompt_tokens_median']:.0f} tokens"
    )
    if run["vision_activation"]:
        planned = run["vision_activation_planned_gib"]
        for batch, row in run["vision_activation"]["by_batch"].items():
            side = run["vision_activation"]["side"]
            plan_text = f" (plan {planned[batch]:.2f} GiB)" if batch in planned else ""
            print(f"  vision tower at {side}x{side}: batch {batch}: peak +{row['peak_gib']:.2f} GiB{plan_text}, {row['seconds']} s")


# --------------------------------------------------------------------------------------------- check (served graph)

# vLLM 0.32's own log lines (vllm/v1/worker/gpu_model_runner.py capture_model, gpu_worker.py
# determine_available_memory, v1/core/kv_cache_utils.py update_kv_cache_capacity); "Capturing CUDA graphs" is a
# tqdm bar's description, present only where vLLM's progress bars are on, so it is reported, not required.
LOG_PATTERNS = {
    "graphs_captured": re.compile(r"Graph capturing finished in (\d+) secs?, took ([\d.]+) GiB"),
    "capturing_bar": re.compile(r"Capturing CUDA graphs"),
    "kv_reserved": re.compile(r"reserved ([\d.]+) GiB memory for KV Cache as specified by kv_cache_memory_bytes"),
    "kv_tokens": re.compile(r"GPU KV cache size: ([\d,]+) tokens"),
}


def nvidia_smi(query: str, apps: bool = False) -> list[list[str]]:
    flag = "--query-compute-apps" if apps else "--query-gpu"
    completed = subprocess.run(
        ["nvidia-smi", f"{flag}={query}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return [[cell.strip() for cell in line.split(",")] for line in completed.stdout.splitlines() if line.strip()]


def pick_gpu() -> dict[str, Any]:
    """The GPU this check runs on (the first visible one); CUDA_VISIBLE_DEVICES pinned to it, so Ray sees one."""
    rows = nvidia_smi("index,uuid,name,memory.total,memory.used")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    chosen = next((row for row in rows if visible and visible in (row[0], row[1])), rows[0])
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen[0]
    return {"index": chosen[0], "uuid": chosen[1], "name": chosen[2], "total_bytes": int(chosen[3]) * MIB,
            "used_bytes": int(chosen[4]) * MIB}


class GpuMemorySampler:
    """Peak GPU memory per process (nvidia-smi --query-compute-apps) and of the whole card, sampled in a thread."""

    def __init__(self, gpu_uuid: str, interval_s: float = 0.5):
        self.uuid, self.interval_s = gpu_uuid, interval_s
        self.peak_by_pid: dict[int, int] = {}
        self.peak_used = 0
        self.samples = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-memory-sampler", daemon=True)

    def sample(self) -> None:
        try:
            for pid, uuid, used in nvidia_smi("pid,gpu_uuid,used_memory", apps=True):
                if uuid == self.uuid and pid.isdigit() and used.isdigit():
                    self.peak_by_pid[int(pid)] = max(self.peak_by_pid.get(int(pid), 0), int(used) * MIB)
            for uuid, used in nvidia_smi("uuid,memory.used"):
                if uuid == self.uuid:
                    self.peak_used = max(self.peak_used, int(used) * MIB)
            self.samples += 1
        except (subprocess.SubprocessError, OSError, ValueError) as error:
            self.errors.append(f"{type(error).__name__}: {error}"[:200])

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


def process_tree() -> dict[int, int]:
    """pid -> parent pid of every process this machine shows."""
    import psutil

    return {process.pid: process.info["ppid"] for process in psutil.process_iter(["ppid"]) if process.info["ppid"] is not None}


def with_descendants(pid: int, parents: dict[int, int]) -> set[int]:
    family, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    return family


def serve_replica_pids() -> dict[str, list[int]]:
    """Stage name (VisionEncoder, Decoder, ...) -> the pids of its live replicas (Ray's actor table)."""
    from ray._private import state

    stages: dict[str, list[int]] = {}
    for info in state.actors(actor_state_name="ALIVE").values():
        name = info.get("ActorClassName") or ""
        if name.startswith("ServeReplica:") and info.get("Pid"):
            stages.setdefault(name.rsplit(":", 1)[-1], []).append(int(info["Pid"]))
    return stages


def scan_logs(logs_dir: Path) -> dict[str, Any]:
    """vLLM's start-up lines in Ray's session logs (the Decoder replica's and its engine core's output)."""
    found: dict[str, Any] = {"logs_dir": str(logs_dir), "files": []}
    for path in sorted(p for p in logs_dir.rglob("*") if p.is_file()):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for key, pattern in LOG_PATTERNS.items():
            match = None
            for match in pattern.finditer(text):
                pass  # the last one: a restarted replica's
            if match is not None:
                found[key] = match.groups() or True
                found["files"].append(f"{key}: {path.name}")
    return found


def content_type(payload: bytes) -> str:
    if payload[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


async def post_pages(base_url: str, payloads: list[bytes], concurrency: int, max_tokens: int, timeout_s: float) -> dict:
    """POST each payload to /ocr (task text) with `concurrency` in flight; throughput and errors."""
    import httpx

    results: list[dict] = []
    errors: list[str] = []
    queue = list(payloads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while queue:
                payload = queue.pop()
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/ocr", params={"task": "text", "max_tokens": max_tokens}, content=payload,
                        headers={"content-type": content_type(payload)},
                    )
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}"[:300])
                    continue
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:300]}")
                    continue
                body = response.json()
                results.append({
                    "latency_s": time.perf_counter() - started,
                    "completion_tokens": int(body["usage"]["completion_tokens"]),
                    "pages": len(body.get("pages") or []) or 1,
                })

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(payloads))))))
        elapsed = time.perf_counter() - started
    pages = sum(r["pages"] for r in results)
    tokens = sum(r["completion_tokens"] for r in results)
    return {
        "requests": len(payloads), "ok": len(results), "errors": errors[:20], "error_count": len(errors),
        "concurrency": concurrency, "max_tokens": max_tokens, "elapsed_s": round(elapsed, 2),
        "pages_per_s": pages / elapsed if elapsed else 0.0, "output_tokens_per_s": tokens / elapsed if elapsed else 0.0,
        "completion_tokens": tokens,
        "latency_ms": p50_p95([1000 * r["latency_s"] for r in results]),
    }


def compare(figure: str, measured: float, planned: float, tolerance: float, unit: str = "bytes") -> dict:
    diff = (measured - planned) / planned if planned else float("inf")
    return {"figure": figure, "measured": measured, "planned": planned, "unit": unit, "diff": diff,
            "ok": abs(diff) <= tolerance}


def run_check(args, plan: GpuPlan, source: str) -> dict:
    """The serve config's graph on this card through Ray Serve; every figure against the plan."""
    failures: list[str] = []
    warnings: list[str] = []
    report: dict[str, Any] = {
        "serve_config": str(args.serve_config), "placement": plan.encoder_placement, "checkpoint": source,
        "tolerance": args.tolerance,
    }
    gpu = pick_gpu()
    report["gpu"] = {key: gpu[key] for key in ("name", "total_bytes", "used_bytes")}
    if gpu["total_bytes"] < plan.card_bytes * 0.97:
        failures.append(f"this card ({gpu['total_bytes'] / GIB:.1f} GiB) is smaller than the plan's {plan.card_bytes / GIB:g} GiB")
    problems = plan.problems()
    if problems:
        failures += [f"plan: {problem}" for problem in problems]
    if failures:
        report.update(failures=failures, warnings=warnings, ok=False)
        return report

    import ray
    from ray import serve

    from serve_app.app import build_app

    app = placed(load_app_config(args.serve_config, source), args.placement)
    sampler = GpuMemorySampler(gpu["uuid"], args.sample_interval_s)
    sampler.sample()
    baseline_pids = set(sampler.peak_by_pid)
    baseline_used = gpu["used_bytes"]
    base_url = f"http://127.0.0.1:{args.port}"
    stage_pids: dict[str, list[int]] = {}
    parents: dict[int, int] = {}
    logs: dict[str, Any] = {}
    ray.init(num_gpus=1, include_dashboard=False, log_to_driver=args.verbose, configure_logging=False)
    try:
        logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        sampler.start()
        started = time.perf_counter()
        try:
            serve.run(build_app(app), name="ocr", route_prefix="/")
        except Exception as error:  # noqa: BLE001 - a failed start is the check's answer
            failures.append(f"the graph did not start: {type(error).__name__}: {error}"[:2000])
        report["start_s"] = round(time.perf_counter() - started, 1)
        if not failures:
            side = plan.page_side
            # Enough full pages to fill the encoder's batches (split) or vLLM's largest encoder step (in_decoder).
            pages_per_step = plan.encoder_max_batch_size * plan.encoder_replicas or plan.vllm_vision_pages
            full_count = args.full_pages if args.full_pages is not None else 4 * pages_per_step
            full_concurrency = 2 * pages_per_step + 2
            receipts, origin = load_pages(args.images, args.count)
            report["images"] = origin
            warm = asyncio.run(post_pages(base_url, receipts[: max(8, args.concurrency // 4)], args.concurrency // 4 or 1,
                                          args.max_tokens, args.request_timeout_s))
            report["warmup"] = warm
            report["receipts"] = asyncio.run(post_pages(base_url, receipts, args.concurrency, args.max_tokens, args.request_timeout_s))
            if full_count:
                pages = [synthetic_page(side, side, seed) for seed in range(full_count)]
                report["full_pages"] = {"side": side, **asyncio.run(
                    post_pages(base_url, pages, full_concurrency, args.full_page_max_tokens, args.request_timeout_s))}
            stage_pids = serve_replica_pids()
            parents = process_tree()
        logs = scan_logs(logs_dir)
    finally:
        sampler.stop()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    report["logs"] = logs

    # Requests.
    for phase in ("warmup", "receipts", "full_pages"):
        result = report.get(phase)
        if result and result["error_count"]:
            failures.append(f"{phase}: {result['error_count']} of {result['requests']} requests failed: {result['errors'][:3]}")
    if "receipts" in report and report["receipts"]["completion_tokens"] <= 0:
        failures.append("receipts: no output tokens")
    # vLLM's start: CUDA graphs captured, the configured KV cache taken without profiling.
    if "receipts" in report:
        if "graphs_captured" not in logs:
            failures.append(f"no 'Graph capturing finished' line from vLLM in {logs.get('logs_dir')}: CUDA graphs not captured")
        if "kv_reserved" not in logs:
            failures.append("no 'reserved ... GiB memory for KV Cache as specified by kv_cache_memory_bytes' line: vLLM "
                            "profiled instead of taking the plan's kv_cache_memory_bytes")
    comparisons: list[dict] = []
    if "kv_tokens" in logs:
        comparisons.append(compare("KV cache tokens (vLLM's log)", int(logs["kv_tokens"][0].replace(",", "")),
                                   plan.kv_tokens, args.tolerance, "tokens"))
    if "kv_reserved" in logs:
        comparisons.append(compare("KV cache bytes (vLLM's log)", float(logs["kv_reserved"][0]) * GIB,
                                   plan.kv_cache_memory_bytes, args.tolerance))

    # Memory per process: each replica's process with its children (vLLM's engine core is the Decoder's child).
    peaks = sampler.peak_by_pid
    report["gpu_processes"] = {str(pid): used for pid, used in sorted(peaks.items())}
    owned: set[int] = set()
    per_stage: dict[str, list[dict]] = {}
    for stage, pids in stage_pids.items():
        for pid in pids:
            family = with_descendants(pid, parents) if parents else {pid}
            owned |= family
            used = sum(peaks.get(member, 0) for member in family)
            if used:
                per_stage.setdefault(stage, []).append({"pid": pid, "gpu_pids": sorted(family & set(peaks)), "peak_bytes": used})
    report["per_stage"] = per_stage
    others = {pid: used for pid, used in peaks.items() if pid not in owned}
    report["other_gpu_processes"] = {str(pid): used for pid, used in others.items()}
    if stage_pids and not per_stage:
        warnings.append(
            "nvidia-smi's process ids match none of the replicas' (a container's PID namespace?): per-process figures "
            "unavailable; the card's total stands in"
        )
    if per_stage.get("Decoder"):
        decoder = max(per_stage["Decoder"], key=lambda row: row["peak_bytes"])
        comparisons.append(compare("vLLM process (Decoder replica + engine core)", decoder["peak_bytes"],
                                   plan.vllm_process_bytes, args.tolerance))
    elif per_stage:
        failures.append("no GPU memory seen for the Decoder's processes")
    if per_stage.get("VisionEncoder") and report.get("full_pages"):
        encoder = max(per_stage["VisionEncoder"], key=lambda row: row["peak_bytes"])
        comparisons.append(compare(
            f"encoder replica (largest of {len(per_stage['VisionEncoder'])}, after full {plan.page_side}x{plan.page_side} pages)",
            encoder["peak_bytes"], plan.encoder_replica_bytes, args.tolerance,
        ))
    elif per_stage and report.get("full_pages"):
        failures.append("no GPU memory seen for the VisionEncoder's processes")
    for stage in ("Preprocessor", "OCRIngress"):
        for row in per_stage.get(stage, []):
            failures.append(f"{stage} replica pid {row['pid']} holds {row['peak_bytes'] / MIB:.0f} MiB of GPU memory; the plan gives it none")
    if report.get("full_pages"):
        ours = sampler.peak_used - baseline_used
        comparisons.append(compare("card: peak used - used before the start", ours,
                                   plan.total_bytes - plan.assumptions.display_bytes, args.tolerance))
    new_others = {pid: used for pid, used in others.items() if pid not in baseline_pids}
    if per_stage and new_others:
        warnings.append(f"GPU processes outside the graph appeared during the check: {new_others}")
    if sampler.errors:
        warnings.append(f"nvidia-smi failed {len(sampler.errors)} time(s): {sampler.errors[0]}")
    failures += [
        f"{row['figure']}: measured {_fmt(row['measured'], row['unit'])}, plan {_fmt(row['planned'], row['unit'])} "
        f"({100 * row['diff']:+.1f} %, beyond {100 * args.tolerance:g} %)"
        for row in comparisons if not row["ok"]
    ]
    report.update(comparisons=comparisons, failures=failures, warnings=warnings, ok=not failures)
    return report


def _fmt(value: float, unit: str) -> str:
    return f"{value / GIB:.2f} GiB" if unit == "bytes" else f"{value:,.0f} {unit}"


def print_check(check: dict) -> None:
    gpu = check.get("gpu") or {}
    print(f"GPU check on {gpu.get('name')} ({gpu.get('total_bytes', 0) / GIB:.1f} GiB): {check['serve_config']}, "
          f"checkpoint {check['checkpoint']}; graph started in {check.get('start_s', '-')} s")
    logs = check.get("logs") or {}
    if "graphs_captured" in logs:
        secs, took = logs["graphs_captured"]
        bar = "; 'Capturing CUDA graphs' seen" if "capturing_bar" in logs else ""
        print(f"  vLLM CUDA graphs: captured in {secs} s, {took} GiB{bar}")
    if "kv_reserved" in logs:
        tokens = logs.get("kv_tokens", ("?",))[0]
        print(f"  vLLM KV cache: {logs['kv_reserved'][0]} GiB from kv_cache_memory_bytes (no profiling), {tokens} tokens")
    for phase, label in (("receipts", "receipts"), ("full_pages", "full pages")):
        result = check.get(phase)
        if not result:
            continue
        side = f" {result['side']}x{result['side']}" if "side" in result else ""
        print(
            f"  {label}{side}: {result['ok']}/{result['requests']} ok at concurrency {result['concurrency']}, "
            f"max_tokens {result['max_tokens']}: {result['pages_per_s']:.2f} pages/s, {result['output_tokens_per_s']:.0f} "
            f"output tok/s, p50 {result['latency_ms']['p50']:.0f} ms, p95 {result['latency_ms']['p95']:.0f} ms"
        )
    if check.get("receipts"):
        for key, goal in GOALS.items():
            value = check["receipts"][key]
            print(f"    {key:<20} {value:9.1f}   goal >= {goal:g} on the 24 GB card: {'MET' if value >= goal else 'NOT MET'} here")
    for stage, rows in (check.get("per_stage") or {}).items():
        for row in rows:
            print(f"  peak GPU memory {stage:<14} pid {row['pid']:>7} (GPU pids {row['gpu_pids']}): {row['peak_bytes'] / GIB:6.2f} GiB")
    for pid, used in (check.get("other_gpu_processes") or {}).items():
        print(f"  peak GPU memory other          pid {pid:>7}: {used / GIB:6.2f} GiB")
    if check.get("comparisons"):
        print(f"  {'figure':<72} {'measured':>12} {'plan':>12} {'diff':>8}")
        for row in check["comparisons"]:
            print(
                f"  {row['figure']:<72} {_fmt(row['measured'], row['unit']):>12} {_fmt(row['planned'], row['unit']):>12} "
                f"{100 * row['diff']:+7.1f}% {'ok' if row['ok'] else 'OFF'}"
            )
    for warning in check.get("warnings", []):
        print(f"  WARNING: {warning}")
    for failure in check.get("failures", []):
        print(f"  FAILED: {failure}")
    print("GPU check: PASS" if check.get("ok") else "GPU check: FAIL")


# --------------------------------------------------------------------------------------------- plot, main


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    plan, run = report["plan"], report.get("run")
    fig, axes = plt.subplots(1, 3 if run else 2, figsize=(14 if run else 10, 4.5))
    a = plan["assumptions"]
    parts = [("display headroom", a["display_bytes"])]
    for index in range(plan["decoder_replicas"]):
        parts += [
            (f"vLLM {index + 1} context", a["vllm_context_bytes"]),
            (f"vLLM {index + 1} weights", plan["decoder_weights_bytes"]),
            (f"vLLM {index + 1} reserve", a["vllm_reserve_bytes"]),
            (f"vLLM {index + 1} KV cache", plan["kv_cache_memory_bytes"]),
        ]
    for index in range(plan["encoder_replicas"]):
        parts += [
            (f"encoder {index + 1} context", a["encoder_context_bytes"]),
            (f"encoder {index + 1} weights", plan["encoder_weights_bytes"]),
            (f"encoder {index + 1} activations", plan["activation_per_batch_bytes"]),
        ]
    bottom = 0.0
    for label, value in parts:
        axes[0].bar(["plan"], [value / GIB], bottom=bottom, label=f"{label} {value / GIB:.2f}")
        bottom += value / GIB
    axes[0].axhline(plan["card_bytes"] / GIB, color="black", linestyle="--", label=f"card {plan['card_bytes'] / GIB:g} GiB")
    axes[0].set_ylabel("GiB")
    axes[0].set_title("memory plan")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    rows = [row for row in plan["in_flight"] if row["label"] == "receipt"]
    axes[1].plot([r["output_tokens"] for r in rows], [r["pages_by_kv"] for r in rows], "o-", label="KV room")
    axes[1].plot([r["output_tokens"] for r in rows], [r["concurrency"] for r in rows], "s--", label="concurrency (max_num_seqs cap)")
    axes[1].set_xlabel("output tokens per receipt")
    axes[1].set_ylabel("receipts in flight")
    axes[1].set_title(f"receipts of ~{a['receipt_image_tokens']} image tokens")
    axes[1].legend(fontsize=8)
    if run:
        names = ["pages/s", "output tok/s / 100"]
        measured = [run["pages_per_s"], run["output_tokens_per_s"] / 100]
        goals = [run["goals"]["pages_per_s"], run["goals"]["output_tokens_per_s"] / 100]
        xs = range(len(names))
        axes[2].bar([x - 0.2 for x in xs], measured, 0.4, label="measured")
        axes[2].bar([x + 0.2 for x in xs], goals, 0.4, label="goal")
        axes[2].set_xticks(list(xs), names)
        axes[2].set_title(f"{run['gpu'] or run['device']}, concurrency {run['concurrency']}", fontsize=9)
        axes[2].legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan-only", action="store_true", help="print the plan from the config (default without CUDA)")
    mode.add_argument("--run", action="store_true", help="also measure throughput in this process (default with CUDA)")
    mode.add_argument("--check", action="store_true", help="serve the config's graph on this GPU and check it against the plan")
    parser.add_argument("--serve-config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--placement", choices=["split", "in_decoder"], default=None,
                        help="encoder.placement to plan and check (default: the config's); in_decoder gives the decoder "
                        "the encoder's GPU share")
    parser.add_argument("--card-gib", type=float, default=None, help="the card the plan is for (default: the config's gpu.memory_gib)")
    parser.add_argument("--reserve-gib", type=float, default=None, help="vLLM's memory besides weights and KV (default 1.5)")
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR)
    parser.add_argument("--build", action="store_true", help="write the full-size random checkpoint (implied by --run/--check)")
    parser.add_argument("--source", help="--run/--check with this checkpoint (directory or hub id) instead of the random one")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="receipt images (generated ones if missing)")
    parser.add_argument("--count", type=int, default=512, help="receipts in the timed run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--full-pages", type=int, default=None,
                        help="--check: max_pixels pages sent to fill the encoder's batches (default 4 batches per replica; 0: none)")
    parser.add_argument("--full-page-max-tokens", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=0.10, help="--check: largest relative difference from the plan")
    parser.add_argument("--port", type=int, default=8000, help="--check: Ray Serve's HTTP port")
    parser.add_argument("--request-timeout-s", type=float, default=900.0)
    parser.add_argument("--sample-interval-s", type=float, default=0.5, help="--check: nvidia-smi sampling period")
    parser.add_argument("--verbose", action="store_true", help="--check: stream the replicas' logs here")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_plan.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = parser.parse_args(argv)
    if args.check:
        run = False
    elif args.run:
        run = True
    else:
        run = not args.plan_only and cuda_available()

    app = placed(load_app_config(args.serve_config), args.placement)
    if run and app.encoder.placement != "split":
        print("--run measures the split stages in this process; use --check for encoder.placement in_decoder")
        return 2
    report: dict[str, Any] = {"checkpoint_dir": None, "run": None, "check": None}
    if args.check and shutil.which("nvidia-smi") is None:
        print("GPU check: FAIL: no nvidia-smi: --check needs an NVIDIA GPU")
        return 2
    if args.build or ((run or args.check) and not args.source):
        # --check builds on the CPU: this process holds no CUDA context while it measures the graph's.
        device = "cpu" if args.check else None
        report["checkpoint_dir"] = str(build_full_size_checkpoint(args.checkpoint_dir, device=device))
    source = args.source or report["checkpoint_dir"]
    receipt_tokens, images = receipt_image_tokens(args.images, app)
    plan = make_plan(app, args.card_gib, model_dims(source), receipt_tokens, args.reserve_gib)
    shown = args.serve_config.resolve()
    text = format_plan(plan, str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown))
    print(text)
    print(f"  receipts: {images}")
    report.update(plan=plan.model_dump(), plan_text=text, serve_config=str(args.serve_config), images=images)
    status = 0
    if run:
        if not cuda_available():
            print("WARNING: no CUDA device: this run measures the plumbing, not the GPU plan")
        from serve_app.model.model_files import resolve_model_path

        run_app = load_app_config(args.serve_config, source)
        model_path = resolve_model_path(run_app.model)
        report["run"] = asyncio.run(measure_run(args, run_app, model_path, plan))
        gc.collect()  # finalize vLLM's objects while the interpreter is whole
        print_run(report["run"])
    if args.check:
        report["check"] = run_check(args, plan, source)
        print_check(report["check"])
        status = 0 if report["check"]["ok"] else 1
    print(f"saved {write_json(report, args.out)}")
    png = plot(report, args.plot or args.out.with_suffix(".png"))
    if png:
        print(f"saved {png}")
    return status


if __name__ == "__main__":
    sys.exit(main())
