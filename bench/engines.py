"""Decoder engines side by side: transformers (debug) vs vLLM (production) on the same image embeddings.

The same pages go through the Preprocessor and vision tower code once; both engines then decode the same
requests (prompt + precomputed embeddings) to a fixed length (EOS ignored), each in its own subprocess so
memory peaks and vLLM's processes do not mix. Per engine:

- output tokens/s at a few concurrencies (the transformers engine serves one request at a time by design);
- peak memory: on CPU the RSS of the engine's process tree (psutil, children included, sampled every
  50 ms); on CUDA torch.cuda.max_memory_allocated for transformers and the device memory in use (NVML)
  above the pre-start baseline for vLLM, whose allocations live in its own processes;
- the largest batch that fits: vLLM — min(max_num_seqs, KV cache capacity / tokens per request), and the
  most requests it actually ran at once when given more; transformers — batched `generate` of the same
  request at 1, 2, 4, ... until out of memory (CUDA), the memory budget (CPU) or the cap.

    python bench/engines.py                                    # tiny checkpoint, configs/cpu.yaml
    python bench/engines.py --concurrency 1 4 16 --requests 16 --max-tokens 32
    python bench/engines.py --source /models/HunyuanOCR        # GPU: serve_config.yaml engine args
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import run_load  # noqa: E402
from bench.split_vs_fused import (  # noqa: E402
    DEFAULT_IMAGES,
    INSTRUCTION,
    RESULTS,
    cuda_available,
    default_serve_config,
    fixed_length_outputs,
    load_app_config,
    load_pages,
    pyplot,
    save_json,
)

ENGINES = ("transformers", "vllm")
GIB = 2**30


# --------------------------------------------------------------------------------------------- memory


class MemorySampler:
    """Peak memory per phase, sampled in a thread: RSS of this process and all its children; on CUDA also
    the device memory in use (NVML, every process) and torch's own peak allocation in this process."""

    def __init__(self, period_s: float = 0.05):
        import psutil

        self.process = psutil.Process()
        self.period_s = period_s
        self.phase = "load"
        self.rss_peak: dict[str, int] = {}
        self.device_peak: dict[str, int] = {}
        self.torch_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._nvml = None
        self.device_baseline = 0
        if cuda_available():
            try:
                import pynvml

                pynvml.nvmlInit()
                index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.device_baseline = self._device_used()
            except Exception as error:  # noqa: BLE001 - NVML is optional
                print(f"NVML unavailable ({error}); device memory of vLLM's processes not measured")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _device_used(self) -> int:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used)

    def _tree_rss(self) -> int:
        import psutil

        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def sample(self) -> None:
        phase = self.phase
        self.rss_peak[phase] = max(self.rss_peak.get(phase, 0), self._tree_rss())
        if self._nvml is not None:
            used = self._device_used() - self.device_baseline
            self.device_peak[phase] = max(self.device_peak.get(phase, 0), used)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def enter(self, phase: str) -> None:
        self.sample()
        self._close_torch_phase()
        self.phase = phase
        if self._torch_cuda():
            import torch

            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def _torch_cuda() -> bool:
        """CUDA in use by torch in this process (never initialised here just to ask: the vLLM worker's
        allocations live in vLLM's processes, and a context of our own would count as theirs)."""
        import torch

        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def _close_torch_phase(self) -> None:
        if self._torch_cuda():
            import torch

            self.torch_peak[self.phase] = int(torch.cuda.max_memory_allocated())

    def stop(self) -> dict[str, Any]:
        self.sample()
        self._close_torch_phase()
        self._stop.set()
        self._thread.join()
        gib = lambda values: {phase: round(value / GIB, 3) for phase, value in values.items()}  # noqa: E731
        return {
            "rss_gib": gib(self.rss_peak),
            "device_gib": gib(self.device_peak),
            "torch_allocated_gib": gib(self.torch_peak),
        }


# --------------------------------------------------------------------------------------------- inputs


def prepare_inputs(config, model_path: str, pages: list[bytes], work: Path) -> dict[str, Any]:
    """Preprocess and encode the distinct pages once; both engines decode exactly these requests."""
    import numpy as np

    from serve_app.hunyuan_vl import encode_images, load_vision_tower, resolve_device
    from serve_app.preprocessor import ImagePreparer

    preparer = ImagePreparer(config, model_path)
    tower = load_vision_tower(model_path, config.model.dtype, resolve_device(config.model.device))
    distinct = list(dict.fromkeys(pages))
    prepared = [preparer.prepare(payload, INSTRUCTION) for payload in distinct]
    embeddings = encode_images(tower, [p.pixel_values for p in prepared], [p.image_grid_thw for p in prepared])
    arrays = {}
    for index, (item, emb) in enumerate(zip(prepared, embeddings)):
        arrays[f"embeddings_{index}"] = emb
        arrays[f"grid_{index}"] = item.image_grid_thw
    np.savez(work / "inputs.npz", **arrays)
    order = [distinct.index(payload) for payload in pages]
    meta = {"prompt": prepared[0].prompt, "order": order, "image_tokens": [int(e.shape[0]) for e in embeddings]}
    (work / "inputs.json").write_text(json.dumps(meta))
    return meta


def load_requests(work: Path, max_tokens: int) -> list:
    import numpy as np

    from serve_app.stage_io import DecodeRequest, ImageEmbeddings, SamplingOptions

    meta = json.loads((work / "inputs.json").read_text())
    arrays = np.load(work / "inputs.npz")
    requests = []
    for index in meta["order"]:
        image = ImageEmbeddings(arrays[f"embeddings_{index}"], arrays[f"grid_{index}"])
        requests.append(DecodeRequest(meta["prompt"], image, SamplingOptions(max_tokens=max_tokens)))
    return requests


# --------------------------------------------------------------------------------------------- engines


def transformers_engine(config, model_path: str):
    from serve_app.engines.transformers_engine import TransformersEngine

    class FixedLengthTransformersEngine(TransformersEngine):
        """EOS suppressed until max_tokens (min_new_tokens), like vLLM's ignore_eos."""

        def _generation_config(self, request):
            generation_config = super()._generation_config(request)
            generation_config.min_new_tokens = generation_config.max_new_tokens
            return generation_config

    return FixedLengthTransformersEngine(config.model, config.decoder, model_path)


async def concurrency_rows(engine, requests: list, concurrencies: list[int], n_requests: int) -> dict:
    rows = {}
    for concurrency in concurrencies:
        batch = [requests[i % len(requests)] for i in range(max(n_requests, concurrency))]

        async def send(request) -> int:
            return (await engine.generate(request)).completion_tokens

        rows[str(concurrency)] = await run_load(send, batch, concurrency)
    return rows


def transformers_largest_batch(engine, request, cap: int, cpu_budget_gib: float, sampler: MemorySampler) -> dict:
    """Batched generate of `request` repeated B = 1, 2, 4, ...: stops at out-of-memory (CUDA), when the
    process would pass the CPU memory budget, or at the cap. Tokens/s of every size that fit."""
    import torch

    inputs = engine._inputs(request)
    generation_config = engine._generation_config(request)
    model = engine._model
    tried: list[dict] = []
    largest, stopped_by = 0, "cap"
    batch = 1
    while batch <= cap:
        pooler = inputs["mm_encoder_outputs"]["image"].pooler_output
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        batched = {
            "input_ids": inputs["input_ids"].repeat(batch, 1),
            "attention_mask": inputs["attention_mask"].repeat(batch, 1),
            "mm_token_type_ids": inputs["mm_token_type_ids"].repeat(batch, 1),
            "image_grid_thw": inputs["image_grid_thw"].repeat(batch, 1),
            # Image rows in order of appearance: the same image once per sequence.
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooler.repeat(1, batch, 1))},
        }
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = model.generate(**batched, generation_config=generation_config)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            stopped_by = "out of memory"
            del batched
            torch.cuda.empty_cache()
            break
        elapsed = time.perf_counter() - started
        new_tokens = (output.shape[1] - batched["input_ids"].shape[1]) * batch
        del output, batched
        largest = batch
        sampler.sample()
        rss_gib = sampler.rss_peak.get(sampler.phase, 0) / GIB
        tried.append(
            {
                "batch": batch,
                "seconds": round(elapsed, 3),
                "output_tokens_per_s": new_tokens / elapsed,
                "rss_peak_gib": round(rss_gib, 3),
            }
        )
        print(f"transformers batch {batch}: {new_tokens / elapsed:.1f} tok/s, {elapsed:.2f} s", flush=True)
        if model.device.type == "cpu" and rss_gib * 2 > cpu_budget_gib:
            stopped_by = f"CPU memory budget {cpu_budget_gib} GiB (next size would likely pass it)"
            break
        batch *= 2
    return {"largest_batch": largest, "stopped_by": stopped_by, "cap": cap, "tried": tried}


async def vllm_largest_batch(engine, requests: list, cap: int) -> dict:
    """Give vLLM `cap` requests at once; count how many it runs together (a request is running from its
    first streamed token until its last), next to max_num_seqs and the KV cache's capacity."""
    llm = engine._engine()
    cache = llm.vllm_config.cache_config
    scheduler = llm.vllm_config.scheduler_config
    kv_tokens = int(cache.num_gpu_blocks or 0) * int(cache.block_size)
    running = peak = produced_total = 0
    tokens_per_request: list[int] = []

    async def one(request) -> None:
        nonlocal running, peak, produced_total
        started = False
        produced = prompt = 0
        try:
            async for chunk in engine.stream(request):
                if not started and chunk.token_ids:
                    started = True
                    running += 1
                    peak = max(peak, running)
                produced += len(chunk.token_ids)
                prompt = prompt or chunk.prompt_tokens
        finally:
            if started:
                running -= 1
        tokens_per_request.append(prompt + produced)
        produced_total += produced

    started = time.perf_counter()
    batch = [requests[i % len(requests)] for i in range(cap)]
    await asyncio.gather(*(one(request) for request in batch))
    elapsed = time.perf_counter() - started
    per_request = max(tokens_per_request)
    blocks_per_request = -(-per_request // int(cache.block_size))
    kv_limited = int(cache.num_gpu_blocks or 0) // blocks_per_request if blocks_per_request else 0
    max_num_seqs = int(scheduler.max_num_seqs)
    return {
        "largest_batch": min(max_num_seqs, kv_limited),
        "observed_peak_running": peak,
        "max_num_seqs": max_num_seqs,
        "kv_cache_tokens": kv_tokens,
        "tokens_per_request": per_request,
        "kv_limited_batch": kv_limited,
        "requests_given": cap,
        "seconds": round(elapsed, 3),
        "output_tokens_per_s": produced_total / elapsed,
    }


async def worker(args) -> dict:
    """One engine, in this (sub)process: start, concurrency rows, largest batch; memory per phase."""
    sampler = MemorySampler()
    config = load_app_config(args.serve_config, args.source)
    from serve_app.model_files import resolve_model_path

    model_path = resolve_model_path(config.model)
    requests = load_requests(args.work, args.max_tokens)
    device = "cuda" if cuda_available() else "cpu"
    cap = args.batch_cap or (512 if device == "cuda" else 64)
    started = time.perf_counter()
    if args.worker == "vllm":
        from serve_app.engines.vllm_engine import VLLMEngine

        fixed_length_outputs()
        engine = VLLMEngine(config.model, config.decoder, model_path)
    else:
        engine = transformers_engine(config, model_path)
    await engine.start()
    start_s = time.perf_counter() - started
    warm = await engine.generate(requests[0])  # warm-up
    sampler.enter("concurrency")
    rows = await concurrency_rows(engine, requests, args.concurrency, args.requests)
    sampler.enter("largest_batch")
    if args.worker == "vllm":
        max_num_seqs = int(engine._engine().vllm_config.scheduler_config.max_num_seqs)
        largest = await vllm_largest_batch(engine, requests, args.batch_cap or 2 * max_num_seqs)
    else:
        largest = await asyncio.to_thread(
            transformers_largest_batch, engine, requests[0], cap, args.cpu_budget_gib, sampler
        )
    memory = sampler.stop()
    await engine.shutdown()
    peaks = memory["rss_gib"]
    if device == "cuda":
        peaks = memory["torch_allocated_gib"] if args.worker == "transformers" else memory["device_gib"]
    return {
        "engine": args.worker,
        "device": device,
        "start_s": round(start_s, 1),
        "prompt_tokens": warm.prompt_tokens,
        "by_concurrency": rows,
        "largest_batch": largest,
        "memory": memory,
        "peak_mem_gib": max(peaks.values()) if peaks else 0.0,
        "peak_mem_kind": (
            "process tree RSS (psutil)" if device == "cpu"
            else "torch.cuda.max_memory_allocated" if args.worker == "transformers"
            else "device memory in use above baseline (NVML)"
        ),
    }


# --------------------------------------------------------------------------------------------- parent


def run_worker(engine: str, args, work: Path) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--work", str(work),
        "--serve-config", str(args.serve_config), "--max-tokens", str(args.max_tokens),
        "--requests", str(args.requests), "--cpu-budget-gib", str(args.cpu_budget_gib),
        "--concurrency", *map(str, args.concurrency),
    ]
    if args.source:
        command += ["--source", args.source]
    if args.batch_cap:
        command += ["--batch-cap", str(args.batch_cap)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"--- {engine} engine (subprocess)", flush=True)
    completed = subprocess.run(command, env=env, cwd=ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"the {engine} worker failed with exit code {completed.returncode}")
    return json.loads((work / f"{engine}.json").read_text())


def print_table(report: dict) -> None:
    concurrencies = list(report["engines"][0]["by_concurrency"])
    head = " | ".join(f"tok/s @{c}" for c in concurrencies)
    print(
        f"\nengines on {report['device']} ({report['dtype']}), {report['max_tokens']} tokens/request "
        f"(EOS ignored), prompt tokens {report['prompt_tokens_first_request']}, "
        f"peak mem = {report['engines'][0]['peak_mem_kind']}"
        + (" / " + report["engines"][-1]["peak_mem_kind"] if report["device"] == "cuda" else "")
    )
    print(f"{'engine':<13}| {head} | peak mem GiB | largest batch")
    for row in report["engines"]:
        rates = " | ".join(
            f"{row['by_concurrency'][c]['output_tokens_per_s']:>{len(f'tok/s @{c}')}.1f}" for c in concurrencies
        )
        largest = row["largest_batch"]
        if row["engine"] == "vllm":
            detail = (
                f"{largest['largest_batch']} (max_num_seqs {largest['max_num_seqs']}, KV room for "
                f"{largest['kv_limited_batch']}; ran {largest['observed_peak_running']} at once, "
                f"{largest['output_tokens_per_s']:.0f} tok/s with {largest['requests_given']} given)"
            )
        else:
            best = max(largest["tried"], key=lambda t: t["output_tokens_per_s"], default=None)
            detail = f"{largest['largest_batch']} (stopped by {largest['stopped_by']}"
            detail += f"; batched generate {best['output_tokens_per_s']:.0f} tok/s at {best['batch']})" if best else ")"
        print(f"{row['engine']:<13}| {rates} | {row['peak_mem_gib']:>12.2f} | {detail}")


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for row in report["engines"]:
        concurrencies = [int(c) for c in row["by_concurrency"]]
        rates = [r["output_tokens_per_s"] for r in row["by_concurrency"].values()]
        axes[0].plot(concurrencies, rates, "o-", label=row["engine"])
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("concurrency")
    axes[0].set_title("output tokens/s")
    axes[0].legend()
    names = [row["engine"] for row in report["engines"]]
    colors = ["tab:blue", "tab:orange"][: len(names)]
    axes[1].bar(names, [row["peak_mem_gib"] for row in report["engines"]], color=colors)
    axes[1].set_title("peak memory (GiB)")
    axes[2].bar(names, [row["largest_batch"]["largest_batch"] for row in report["engines"]], color=colors)
    axes[2].set_title("largest batch that fits")
    fig.suptitle(
        f"decoder engines, {report['device']} {report['dtype']}, {report['max_tokens']} tokens/request", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve-config", type=Path, default=None, help="default: serve_config.yaml on CUDA, else configs/cpu.yaml"
    )
    parser.add_argument("--source", help="checkpoint (directory or hub id) instead of the config's model.source")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--batch-cap", type=int, default=None,
        help="largest batch tried (default: transformers 64 on CPU / 512 on CUDA; vLLM 2 x max_num_seqs)",
    )
    parser.add_argument(
        "--cpu-budget-gib", type=float, default=8.0, help="CPU: stop growing the transformers batch near this RSS"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "engines.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.serve_config = args.serve_config or default_serve_config()

    if args.worker:
        result = asyncio.run(worker(args))
        gc.collect()  # finalize vLLM's objects while the interpreter is whole
        (args.work / f"{args.worker}.json").write_text(json.dumps(result, indent=2))
        return

    from serve_app.model_files import resolve_model_path

    config = load_app_config(args.serve_config, args.source)
    model_path = resolve_model_path(config.model)
    pages, origin = load_pages(args.images, max(args.requests, max(args.concurrency)))
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
        work = Path(scratch)
        meta = prepare_inputs(config, model_path, pages, work)
        rows = [run_worker(engine, args, work) for engine in args.engines]
    report = {
        "checkpoint": model_path,
        "serve_config": str(args.serve_config),
        "device": rows[0]["device"],
        "dtype": config.model.dtype,
        "images": origin,
        "image_tokens": sorted(set(meta["image_tokens"])),
        "prompt_tokens_first_request": {row["engine"]: row["prompt_tokens"] for row in rows},
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "engines": rows,
    }
    print_table(report)
    save_json(report, args.out)
    plot(report, args.plot or args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
