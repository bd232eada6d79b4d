"""Serving overhead on the CPU config: the graph over HTTP vs the same stages called in-process.

Starts both in one run — the Ray Serve graph (configs/cpu.yaml by default) and an in-process
pipeline of the same code (ImagePreparer -> vision tower -> VLLMEngine, no Ray, no HTTP) — then
measures rounds alternately (A B A B ...: throughput on 2 cores drifts from run to run) at each
concurrency, and prints and saves p50/p95 latency, requests/s and the HTTP/in-process ratios.

    python bench/overhead.py                      # concurrency 1 and 16, 3 rounds each
    python bench/overhead.py --concurrency 1 4 16 --requests 32 --rounds 5 --out bench/results/overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.http_load import run_load  # noqa: E402
from bench.lib.images import synthetic_page  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.service import deployed_graph, serve_instance  # noqa: E402
from bench.lib.stats import median_by_key  # noqa: E402
from serve_app.profiles import TEXT_ZH  # noqa: E402


class InProcessPipeline:
    """The graph's own stage code, called directly: what serving adds is everything else."""

    def __init__(self, config, model_path: str):
        from serve_app.engines.vllm_engine import VLLMEngine
        from serve_app.stages.preprocessor import ImagePreparer
        from serve_app.stages.vision_encoder import VisionTowerEncoder

        self.config = config
        self.preparer = ImagePreparer(config, model_path)
        self.encoder = VisionTowerEncoder(config)  # one image per call: no batching here
        # vLLM's own default executor here (a worker process with its OpenMP binding): alone in a process it is
        # faster than the one-process executor the served Decoder uses on CPU (decoder.cpu_worker_in_engine_core),
        # 25-33 vs 22-25 req/s at c=16 on 2 cores, so the baseline is the fastest in-process engine.
        decoder = config.decoder.model_copy(update={"cpu_worker_in_engine_core": False})
        self.engine = VLLMEngine(config.model, decoder, model_path)

    async def send(self, payload: bytes, max_tokens: int) -> int:
        from serve_app.stage_io import DecodeRequest, SamplingOptions

        prepared = await asyncio.to_thread(self.preparer.prepare, payload, TEXT_ZH)
        [embeddings] = await asyncio.to_thread(self.encoder.encode, [prepared])
        result = await self.engine.generate(
            DecodeRequest(prepared.prompt, embeddings, SamplingOptions(max_tokens=max_tokens))
        )
        return result.completion_tokens


async def main_async(args, config) -> dict:
    import httpx

    from serve_app.model.model_files import resolve_model_path

    payloads = [synthetic_page(480, 320, seed=index) for index in range(args.requests)]
    pipeline = InProcessPipeline(config, resolve_model_path(config.model))
    await pipeline.engine.start()

    limits = httpx.Limits(max_connections=max(args.concurrency) * 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=600, limits=limits) as client:

        async def send_http(payload: bytes) -> int:
            response = await client.post("/ocr", params={"max_tokens": args.max_tokens}, content=payload)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        async def send_local(payload: bytes) -> int:
            return await pipeline.send(payload, args.max_tokens)

        await run_load(send_http, payloads[:4], 2)  # warm-up both paths
        await run_load(send_local, payloads[:4], 2)
        report: dict = {"config": str(args.config), "max_tokens": args.max_tokens, "requests": args.requests, "by_concurrency": {}}
        for concurrency in args.concurrency:
            rounds = {"http": [], "in_process": []}
            for _ in range(args.rounds):
                rounds["http"].append(await run_load(send_http, payloads, concurrency))
                rounds["in_process"].append(await run_load(send_local, payloads, concurrency))
            summary = {path: median_by_key(results) for path, results in rounds.items()}
            summary["ratio_p50_latency_http_over_in_process"] = summary["http"]["p50_ms"] / summary["in_process"]["p50_ms"]
            summary["ratio_throughput_http_over_in_process"] = (
                summary["http"]["requests_per_s"] / summary["in_process"]["requests_per_s"]
            )
            report["by_concurrency"][str(concurrency)] = summary
    await pipeline.engine.shutdown()
    return report


def print_table(report: dict) -> None:
    print(f"{'conc':>4} {'path':>10} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>7} {'tok/s':>8}")
    for concurrency, summary in report["by_concurrency"].items():
        for path in ("http", "in_process"):
            row = summary[path]
            print(
                f"{concurrency:>4} {path:>10} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} "
                f"{row['requests_per_s']:7.2f} {row['output_tokens_per_s']:8.1f}"
            )
        print(
            f"{'':>4} {'ratio':>10} p50 latency x{summary['ratio_p50_latency_http_over_in_process']:.2f}, "
            f"throughput x{summary['ratio_throughput_http_over_in_process']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu.yaml")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()

    from serve_app.config import OCRAppConfig

    config = OCRAppConfig.from_serve_config(args.config)
    with serve_instance(args.port), deployed_graph(config):
        report = asyncio.run(main_async(args, config))
    print_table(report)
    print(f"saved {write_json(report, args.out)}")


if __name__ == "__main__":
    main()
