"""vLLM decode speed with and without torch.compile: `enforce_eager: true` vs `false` on the same requests.

Compilation became possible with the static rope (serve_app/model/static_rope.py): with transformers' "dynamic"
rope vLLM never compiled this model, whatever enforce_eager said. Both engines are VLLMEngine (the production
decoder: the embeddings model class, AsyncLLM) with the serve config's engine args, `enforce_eager` alone
changed. The same page is preprocessed and encoded once; every request decodes its embeddings to exactly
`--max-tokens` tokens (EOS ignored). A round sends `--concurrency` requests at once; output tokens/s = the
round's tokens / its wall time; the report gives the median of `--rounds` rounds after one warm-up round.
Each engine gets a fresh VLLM_CACHE_ROOT: the compiled engine's start time is a cold compile, and the report
counts its torch.compile artifacts (0 means vLLM did not compile the decoder).

On CPU both engines run side by side and the rounds interleave (eager, compiled, then compiled, eager, ...):
throughput on 2 cores drifts 2-6x between runs, so only interleaved medians compare. On CUDA (one GPU, two
engines would not both fit) each engine runs its rounds alone, one after the other.

    python bench/compile_speed.py                          # tiny checkpoint, configs/cpu.yaml, 8 x 64 tokens
    python bench/compile_speed.py --rounds 7 --concurrency 16 --max-tokens 128
    python bench/compile_speed.py --source tencent/HunyuanOCR --serve-config serve_config.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib.config import cuda_available, default_serve_config, load_app_config  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES, load_pages  # noqa: E402
from bench.lib.pipeline import encode_pages, fixed_length_outputs  # noqa: E402
from bench.lib.processes import cpu_seconds  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402

MODES = {"eager": True, "compiled": False}  # mode -> enforce_eager


def prepare_request_inputs(config, model_path: str, images: Path | None):
    """(prompt, ImageEmbeddings) for one page: the Preprocessor's and the vision tower's code, run once."""
    from serve_app.stage_io import ImageEmbeddings

    (page,), origin = load_pages(images, 1)
    (prepared,), (embeddings,) = encode_pages(config, model_path, [page])
    return prepared.prompt, ImageEmbeddings(embeddings, prepared.image_grid_thw), origin


class Mode:
    def __init__(self, name: str, config, model_path: str):
        from serve_app.engines.vllm_engine import VLLMEngine

        args = {**config.decoder.engine_args, "enforce_eager": MODES[name]}
        decoder = config.decoder.model_copy(update={"engine_args": args})
        self.name = name
        self.engine = VLLMEngine(config.model, decoder, model_path)
        self.start_s = 0.0
        self.rounds: list[dict[str, float]] = []
        self.first_tokens: list[int] | None = None
        # A fresh vLLM cache per engine: the compiled start is a cold compile, and the compile artifacts
        # found there prove the decoder was compiled (vLLM skips it silently, e.g. for a "dynamic" rope).
        self.cache_root = Path(tempfile.mkdtemp(prefix=f"vllm-cache-{name}-"))

    async def start(self) -> None:
        import psutil

        before = {child.pid for child in psutil.Process().children(recursive=True)}
        previous = os.environ.get("VLLM_CACHE_ROOT")
        os.environ["VLLM_CACHE_ROOT"] = str(self.cache_root)  # read by the engine core process spawned now
        try:
            started = time.perf_counter()
            await self.engine.start()
            self.start_s = time.perf_counter() - started
        finally:
            if previous is None:
                os.environ.pop("VLLM_CACHE_ROOT", None)
            else:
                os.environ["VLLM_CACHE_ROOT"] = previous
        # This engine's processes (engine core, its worker if any): their CPU time per round.
        self.processes = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]

    def engine_cpu_s(self) -> float:
        return cpu_seconds(self.processes)  # an exited process (the guard, at shutdown) counts 0

    def compile_artifacts(self) -> int:
        return sum(1 for path in (self.cache_root / "torch_compile_cache").rglob("*") if path.is_file())

    async def round(self, requests: list) -> dict[str, float]:
        cpu_before = self.engine_cpu_s()
        started = time.perf_counter()
        results = await asyncio.gather(*(self.engine.generate(request) for request in requests))
        wall = time.perf_counter() - started
        cpu = self.engine_cpu_s() - cpu_before
        if self.first_tokens is None:
            self.first_tokens = list(results[0].token_ids)
        tokens = sum(result.completion_tokens for result in results)
        return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall, "engine_cpu_s": cpu,
                "tok_per_engine_cpu_s": tokens / cpu if cpu > 0 else None}

    def summary(self) -> dict[str, Any]:
        return {
            "enforce_eager": MODES[self.name],
            "torch_compile_artifacts": self.compile_artifacts(),
            "start_s": round(self.start_s, 2),
            "rounds": self.rounds,
            "median_tok_s": statistics.median(r["tok_s"] for r in self.rounds),
            "median_wall_s": statistics.median(r["wall_s"] for r in self.rounds),
            # Less sensitive to other load on the machine than wall time: tokens per CPU second of the engine.
            "median_tok_per_engine_cpu_s": statistics.median(
                r["tok_per_engine_cpu_s"] for r in self.rounds if r["tok_per_engine_cpu_s"]
            ),
        }


async def measure(args, config, model_path: str, prompt: str, image) -> dict[str, Any]:
    from serve_app.stage_io import DecodeRequest, SamplingOptions

    fixed_length_outputs()  # every request runs to max_tokens

    def requests(tag: str) -> list:
        return [
            DecodeRequest(prompt, image, SamplingOptions(max_tokens=args.max_tokens), f"{tag}-{i}")
            for i in range(args.concurrency)
        ]

    modes = [Mode(name, config, model_path) for name in args.modes]
    interleave = not args.no_interleave and not cuda_available()
    try:
        if interleave:
            for mode in modes:
                await mode.start()
                await mode.round(requests(f"{mode.name}-warmup"))
            for index in range(args.rounds):
                order = modes if index % 2 == 0 else modes[::-1]
                for mode in order:
                    mode.rounds.append(await mode.round(requests(f"{mode.name}-{index}")))
                print(f"round {index + 1}: " + ", ".join(f"{m.name} {m.rounds[-1]['tok_s']:.0f} tok/s" for m in modes))
                print(f"  load average {os.getloadavg()[0]:.1f}")
        else:
            for mode in modes:
                await mode.start()
                await mode.round(requests(f"{mode.name}-warmup"))
                for index in range(args.rounds):
                    mode.rounds.append(await mode.round(requests(f"{mode.name}-{index}")))
                    print(f"{mode.name} round {index + 1}: {mode.rounds[-1]['tok_s']:.0f} tok/s")
                await mode.engine.shutdown()
    finally:
        for mode in modes:
            await mode.engine.shutdown()  # idempotent
    report = {mode.name: mode.summary() for mode in modes}
    for mode in modes:
        shutil.rmtree(mode.cache_root, ignore_errors=True)
    if {"eager", "compiled"} <= report.keys():
        report["speedup_compiled_over_eager"] = report["compiled"]["median_tok_s"] / report["eager"]["median_tok_s"]
        report["cpu_efficiency_compiled_over_eager"] = (
            report["compiled"]["median_tok_per_engine_cpu_s"] / report["eager"]["median_tok_per_engine_cpu_s"]
        )
        report["same_greedy_tokens"] = modes[0].first_tokens == modes[1].first_tokens
    report["interleaved"] = interleave
    report["load_average_1m_at_end"] = os.getloadavg()[0]  # other work on the machine skews wall-time numbers
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", help="checkpoint directory or hub id (default: the serve config's model)")
    parser.add_argument(
        "--serve-config", type=Path, default=None, help="default: configs/cpu.yaml (serve_config.yaml on CUDA)"
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="a folder of pages (the first is used)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["eager", "compiled"])
    parser.add_argument("--no-interleave", action="store_true", help="one engine at a time (the default on CUDA)")
    parser.add_argument("--output", type=Path, default=RESULTS / "compile_speed.json")
    args = parser.parse_args(argv)

    serve_config = args.serve_config or default_serve_config()
    config = load_app_config(serve_config, args.source)
    from serve_app.model.model_files import resolve_model_path

    model_path = resolve_model_path(config.model)
    prompt, image, origin = prepare_request_inputs(config, model_path, args.images)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": "cuda" if cuda_available() else "cpu",
        "serve_config": str(serve_config),
        "checkpoint": model_path,
        "dtype": config.model.dtype,
        "page": origin,
        "image_tokens": int(image.embeddings.shape[0]),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
    }
    report.update(asyncio.run(measure(args, config, model_path, prompt, image)))
    for name in args.modes:
        row = report[name]
        print(
            f"{name:9s} start {row['start_s']:6.1f} s   median {row['median_tok_s']:8.1f} output tok/s "
            f"({args.concurrency} x {args.max_tokens} tokens, {args.rounds} rounds); "
            f"{row['median_tok_per_engine_cpu_s']:8.1f} tok per engine CPU s"
        )
    if "speedup_compiled_over_eager" in report:
        print(
            f"compiled / eager: {report['speedup_compiled_over_eager']:.2f}x wall tok/s, "
            f"{report['cpu_efficiency_compiled_over_eager']:.2f}x tok per CPU s; "
            f"same greedy tokens: {report['same_greedy_tokens']}"
        )
    print(f"saved {write_json(report, args.output)}")
    print(json.dumps({k: v for k, v in report.items() if k not in MODES}, indent=None)[:400])


if __name__ == "__main__":
    main()
