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

`--served` measures the same table through the whole Ray Serve graph over HTTP instead: per engine, the
graph of the same config with `decoder.engine` set to it, the same pages POSTed to /ocr. /ocr has no way to
ignore EOS, so tok/s counts the `usage.completion_tokens` the responses report. Peak memory is the RSS of
the Decoder replica's process tree (vLLM's engine core included), sampled from when the graph is up. The
largest batch is not observable from outside: the report gives the decoder's configured limits
(max_ongoing_requests, vLLM max_num_seqs) and the largest encoder batch the responses report.

    python bench/engines.py                                    # tiny checkpoint, configs/cpu.yaml
    python bench/engines.py --concurrency 1 4 16 --requests 16 --max-tokens 32
    python bench/engines.py --source tencent/HunyuanOCR        # GPU: serve_config.yaml engine args
    python bench/engines.py --served --concurrency 1 4 --requests 8   # through the served graph
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.config import cuda_available, default_serve_config, load_app_config  # noqa: E402
from bench.lib.http_load import run_load  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES, load_pages  # noqa: E402
from bench.lib.pipeline import encode_pages, fixed_length_outputs  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.processes import stage_processes, tree_rss  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.service import deployed_graph, free_port, serve_instance  # noqa: E402

ENGINES = ("transformers", "vllm")
GIB = 2**30


# --------------------------------------------------------------------------------------------- memory


class MemorySampler:
    """Peak memory per phase, sampled in a thread: RSS of this process and all its children; on CUDA also
    the device memory in use (NVML, every process) and torch's own peak allocation in this process.

    `roots`: other processes to watch instead (with their children), e.g. a Ray Serve replica; then no
    device memory, which on a GPU the graph's stages share cannot be told apart per stage."""

    def __init__(self, period_s: float = 0.05, roots: list | None = None):
        import psutil

        self.roots = roots or [psutil.Process()]
        self.period_s = period_s
        self.phase = "load"
        self.rss_peak: dict[str, int] = {}
        self.device_peak: dict[str, int] = {}
        self.torch_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._nvml = None
        self.device_baseline = 0
        if cuda_available() and roots is None:
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

    def sample(self) -> None:
        phase = self.phase
        self.rss_peak[phase] = max(self.rss_peak.get(phase, 0), tree_rss(self.roots))
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

    distinct = list(dict.fromkeys(pages))
    prepared, embeddings = encode_pages(config, model_path, distinct)
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


async def concurrency_rows(send, items: list, concurrencies: list[int], n_requests: int) -> dict:
    """run_load at each concurrency: `items` cycled to max(n_requests, concurrency) requests; `send` returns
    the output tokens of one."""
    rows = {}
    for concurrency in concurrencies:
        batch = [items[i % len(items)] for i in range(max(n_requests, concurrency))]
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
    from serve_app.model.model_files import resolve_model_path

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

    async def send(request) -> int:
        return (await engine.generate(request)).completion_tokens

    rows = await concurrency_rows(send, requests, args.concurrency, args.requests)
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


# --------------------------------------------------------------------------------------------- served

SERVED_NOTES = [
    "Each engine serves the whole graph of the same config (decoder.engine set; engine_args dropped for "
    "transformers), one after the other on one Ray Serve instance, the same pages POSTed to /ocr.",
    "/ocr cannot ignore EOS: tok/s counts the usage.completion_tokens of the responses (up to max_tokens; see "
    "completion_tokens_per_request and finish_reasons). A warm-up request precedes the load and is not counted.",
    "Peak memory: RSS of the Decoder replica process(es) found at start and their children (vLLM's engine "
    "core), sampled every 50 ms from when the graph is up (engine start-up not included); no device memory.",
    "Largest batch: not observable from outside. largest_batch gives the decoder's configured "
    "max_ongoing_requests, vLLM's configured max_num_seqs (null: not set, vLLM's default) and the largest "
    "timings_ms.encoder_batch_size seen (images per vision tower call, not a decoder batch).",
]


def with_decoder_engine(config, engine: str):
    """`config` with `decoder.engine` = `engine`; the transformers engine takes no engine_args (vLLM's), so
    they are dropped for it, as tests/integration builds that graph."""
    update: dict[str, Any] = {"engine": engine}
    if engine != "vllm":
        update["engine_args"] = {}
    return config.model_copy(update={"decoder": config.decoder.model_copy(update=update)})


def decoder_replicas() -> list:
    """The served app's Decoder replica processes (Ray names them `ray::ServeReplica:ocr:Decoder`)."""
    found = stage_processes("ocr").get("Decoder", [])
    if not found:
        raise SystemExit("no Decoder replica process of app 'ocr' on this machine: cannot measure its memory")
    return found


async def served_load(args, port: int, pages: list[bytes]) -> dict:
    """POST the pages to /ocr: one warm-up request, then each concurrency. Tokens are the responses' own
    usage.completion_tokens (EOS can end a request early)."""
    import httpx

    completion_tokens: list[int] = []
    encoder_batches: list[int] = []
    finish_reasons: dict[str, int] = {}
    limits = httpx.Limits(max_connections=max(args.concurrency) * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as client:

        async def send(page: bytes) -> int:
            response = await client.post("/ocr", params={"max_tokens": args.max_tokens}, content=page)
            response.raise_for_status()
            body = response.json()
            completion_tokens.append(body["usage"]["completion_tokens"])
            encoder_batches.append(body["timings_ms"]["encoder_batch_size"])
            finish_reasons[body["finish_reason"]] = finish_reasons.get(body["finish_reason"], 0) + 1
            return body["usage"]["completion_tokens"]

        warm = await client.post("/ocr", params={"max_tokens": args.max_tokens}, content=pages[0])
        warm.raise_for_status()
        rows = await concurrency_rows(send, pages, args.concurrency, args.requests)
    return {
        "prompt_tokens": warm.json()["usage"]["prompt_tokens"],
        "by_concurrency": rows,
        "completion_tokens_per_request": {
            "min": min(completion_tokens),
            "mean": round(sum(completion_tokens) / len(completion_tokens), 2),
            "max": max(completion_tokens),
        },
        "finish_reasons": finish_reasons,
        "max_encoder_batch_size_seen": max(encoder_batches),
    }


def served_engine(engine: str, config, args, port: int, pages: list[bytes]) -> dict:
    """The graph with this decoder engine, deployed as "ocr" at /, loaded, then deleted."""
    config = with_decoder_engine(config, engine)
    print(f"--- {engine} engine (served graph)", flush=True)
    with deployed_graph(config) as start_s:
        sampler = MemorySampler(roots=decoder_replicas())
        sampler.enter("requests")  # "load": once, as the graph is up; "requests": warm-up and load
        result = asyncio.run(served_load(args, port, pages))
        memory = sampler.stop()
    peaks = memory["rss_gib"]
    encoder_batch_seen = result.pop("max_encoder_batch_size_seen")
    return {
        "engine": engine,
        "device": "cuda" if cuda_available() else "cpu",
        "start_s": round(start_s, 1),
        **result,
        "largest_batch": {
            "observable": False,
            "decoder_max_ongoing_requests": config.decoder.max_ongoing_requests,
            "vllm_max_num_seqs": config.decoder.engine_args.get("max_num_seqs") if engine == "vllm" else None,
            "max_encoder_batch_size_seen": encoder_batch_seen,
        },
        "memory": memory,
        "peak_mem_gib": max(peaks.values()) if peaks else 0.0,
        "peak_mem_kind": "Decoder replica process tree RSS (psutil), from graph up",
    }


def run_served(args, config, pages: list[bytes]) -> list[dict]:
    """Each engine in turn on one Ray Serve instance (HTTP on 127.0.0.1:`args.port`)."""
    port = args.port or free_port()
    with serve_instance(port):
        return [served_engine(engine, config, args, port, pages) for engine in args.engines]


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
    served = report["mode"] == "served"
    concurrencies = list(report["engines"][0]["by_concurrency"])
    head = " | ".join(f"tok/s @{c}" for c in concurrencies)
    print(
        f"\nengines {'served (POST /ocr) ' if served else ''}on {report['device']} ({report['dtype']}), "
        f"{'at most ' if served else ''}{report['max_tokens']} tokens/request "
        f"({'EOS not ignored: tok/s from usage.completion_tokens' if served else 'EOS ignored'}), "
        f"prompt tokens {report['prompt_tokens_first_request']}, "
        f"peak mem = {report['engines'][0]['peak_mem_kind']}"
        + (" / " + report["engines"][-1]["peak_mem_kind"] if report["device"] == "cuda" and not served else "")
    )
    last = "batch limits (largest batch not observable)" if served else "largest batch"
    print(f"{'engine':<13}| {head} | peak mem GiB | {last}")
    for row in report["engines"]:
        rates = " | ".join(
            f"{row['by_concurrency'][c]['output_tokens_per_s']:>{len(f'tok/s @{c}')}.1f}" for c in concurrencies
        )
        largest = row["largest_batch"]
        if served:
            detail = f"decoder max_ongoing_requests {largest['decoder_max_ongoing_requests']}"
            if row["engine"] == "vllm":
                detail += f", vLLM max_num_seqs {largest['vllm_max_num_seqs'] or 'vLLM default'}"
            tokens = row["completion_tokens_per_request"]
            detail += (
                f"; encoder batch seen <= {largest['max_encoder_batch_size_seen']}; "
                f"tokens/request {tokens['min']}-{tokens['max']} (mean {tokens['mean']})"
            )
        elif row["engine"] == "vllm":
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


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
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
    if report["mode"] == "served":
        limits = {
            "decoder max_ongoing_requests": "decoder_max_ongoing_requests",
            "vLLM max_num_seqs": "vllm_max_num_seqs",
            "encoder batch seen (max)": "max_encoder_batch_size_seen",
        }
        for offset, (label, key) in enumerate(limits.items()):
            values = [row["largest_batch"][key] or 0 for row in report["engines"]]
            axes[2].bar([i + (offset - 1) * 0.27 for i in range(len(names))], values, width=0.27, label=label)
        axes[2].set_xticks(range(len(names)), names)
        axes[2].legend(fontsize=7)
        axes[2].set_title("batch limits (largest batch not observable)")
    else:
        axes[2].bar(names, [row["largest_batch"]["largest_batch"] for row in report["engines"]], color=colors)
        axes[2].set_title("largest batch that fits")
    fig.suptitle(
        f"decoder engines{' served (POST /ocr)' if report['mode'] == 'served' else ''}, {report['device']} "
        f"{report['dtype']}, {report['max_tokens']} tokens/request", fontsize=9
    )
    return save_figure(fig, path)


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
    parser.add_argument(
        "--served", action="store_true", help="through the whole served graph over HTTP instead of in-process"
    )
    parser.add_argument("--port", type=int, default=None, help="--served: HTTP port (default: a free one)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/engines[-served].json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.serve_config = args.serve_config or default_serve_config()
    args.out = args.out or RESULTS / ("engines-served.json" if args.served else "engines.json")

    if args.worker:
        result = asyncio.run(worker(args))
        gc.collect()  # finalize vLLM's objects while the interpreter is whole
        (args.work / f"{args.worker}.json").write_text(json.dumps(result, indent=2))
        return

    from serve_app.model.model_files import resolve_model_path

    config = load_app_config(args.serve_config, args.source)
    model_path = resolve_model_path(config.model)
    pages, origin = load_pages(args.images, max(args.requests, max(args.concurrency)))
    meta = None
    if args.served:
        rows = run_served(args, config, pages)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
            work = Path(scratch)
            meta = prepare_inputs(config, model_path, pages, work)
            rows = [run_worker(engine, args, work) for engine in args.engines]
    report = {
        "mode": "served" if args.served else "in_process",
        "checkpoint": model_path,
        "serve_config": str(args.serve_config),
        "device": rows[0]["device"],
        "dtype": config.model.dtype,
        "images": origin,
        "image_tokens": sorted(set(meta["image_tokens"])) if meta else None,  # served: not reported by /ocr
        "prompt_tokens_first_request": {row["engine"]: row["prompt_tokens"] for row in rows},
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "engines": rows,
    }
    if args.served:
        report["notes"] = SERVED_NOTES
    print_table(report)
    print(f"saved {write_json(report, args.out)}")
    png = plot(report, args.plot or args.out.with_suffix(".png"))
    if png:
        print(f"saved {png}")


if __name__ == "__main__":
    main()
