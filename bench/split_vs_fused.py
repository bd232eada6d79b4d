"""Split vs fused: our three stages (vision tower in-process + vLLM from embeddings) vs vLLM doing vision itself.

Both paths start from the same JPEG bytes and produce the same fixed number of tokens (ignore_eos):

- split: ImagePreparer (the Preprocessor stage's code) -> the vision tower in this process, concurrent
  images batched like the VisionEncoder stage (max_batch_size / batch_wait_timeout_s from the config) ->
  VLLMEngine (the Decoder stage's code: AsyncLLM, the HunYuanVL embeddings subclass).
- fused: decode + resize to the same model size -> AsyncLLM with the image as `multi_modal_data`; vLLM's
  own HF processor and vision tower turn pixels into embeddings.

`--fused-engine stock` starts a second AsyncLLM with HunYuanVL exactly as vLLM ships it (the CUDA default).
On CPU stock vLLM crashes on the first image (a oneDNN GEMM given a non-contiguous input inside the patch
merger; see docs/notes), so the CPU default is `--fused-engine shared`: ONE engine, our subclass with an
image limit of 1, whose pixel path is stock vLLM's plus `.contiguous()` on that input; split requests send
embeddings to it, fused requests send pixels. Same scheduler, same KV budget, one vLLM start.

Rounds alternate (split, fused, split, fused, ...): throughput on 2 cores drifts 2-6x from run to run, so
only interleaved medians compare. Prints p50 latency and throughput per concurrency and fused/split ratios,
saves JSON and a PNG.

    python bench/split_vs_fused.py                                     # tiny checkpoint, configs/cpu.yaml
    python bench/split_vs_fused.py --concurrency 1 16 --requests 16 --rounds 3 --max-tokens 32
    python bench/split_vs_fused.py --source tencent/HunyuanOCR         # GPU: serve_config.yaml, stock fused engine
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib.config import cuda_available, default_serve_config, load_app_config, with_engine_args  # noqa: E402
from bench.lib.http_load import run_load  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES, load_pages  # noqa: E402
from bench.lib.pipeline import SplitPipeline, fixed_length_outputs  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.stats import median_by_key, percentile  # noqa: E402
from serve_app.profiles import TEXT_ZH  # noqa: E402


# --------------------------------------------------------------------------------------------- the fused path


class FusedPipeline:
    """vLLM from pixels: the image (resized to the split path's model size) as multi_modal_data."""

    def __init__(self, config, model_path: str, preparer, llm=None):
        self.config, self.model_path, self.preparer = config, model_path, preparer
        self.llm = llm  # a running AsyncLLM to share, or None to start a stock one
        self.owns_llm = llm is None
        self.start_s = 0.0
        budget = {"shortest_edge": config.model.min_pixels, "longest_edge": config.model.max_pixels}
        # The checkpoint's processor may have another pixel budget (the tiny one has 256x256 at most):
        # give vLLM's processor ours, so both paths see the same pixels and token counts.
        self.mm_processor_kwargs = {"size": budget}

    async def start(self) -> None:
        if self.llm is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = {
            key: value
            for key, value in self.config.decoder.engine_args.items()
            if key not in ("limit_mm_per_prompt", "structured_outputs_config")
        }
        args.update(
            model=self.model_path,
            dtype=self.config.model.dtype,
            limit_mm_per_prompt={"image": 1},
            enable_prefix_caching=False,
            mm_processor_cache_gb=0,
        )
        started = time.perf_counter()
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.start_s = time.perf_counter() - started

    def _image(self, payload: bytes):
        from serve_app.inputs.images import decode_image, fit_to_budget

        decoded = decode_image(payload, self.config.limits)
        model = self.config.model
        return fit_to_budget(decoded.image, self.preparer.resize_factor, model.min_pixels, model.max_pixels)

    async def run(self, payload: bytes, max_tokens: int) -> dict[str, Any]:
        import vllm
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind

        sampling_params = getattr(vllm, "_real_sampling_params", None) or vllm.SamplingParams
        started = time.perf_counter()
        image = await asyncio.to_thread(self._image, payload)
        prompt = {
            "prompt": self.preparer.build_prompt(TEXT_ZH),
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": self.mm_processor_kwargs,
        }
        (engine_input,) = await self.llm.renderer.render_cmpl_async([parse_model_prompt(self.llm.model_config, prompt)])
        params = sampling_params(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        try:
            async for output in self.llm.generate(engine_input, params, uuid.uuid4().hex):
                final = output
        except Exception as error:
            if self.owns_llm and type(error).__name__ == "EngineDeadError" and not cuda_available():
                raise RuntimeError(
                    "stock vLLM died on its first image on CPU (the known 'Expected a.stride(-1) == 1' crash in "
                    "the patch merger's oneDNN GEMM): use --fused-engine shared"
                ) from error
            raise
        return {
            "completion_tokens": len(final.outputs[0].token_ids),
            "prompt_tokens": len(final.prompt_token_ids or []),
            "total_s": time.perf_counter() - started,
        }

    async def shutdown(self) -> None:
        if self.owns_llm and self.llm is not None:
            self.llm.shutdown()
        self.llm = None


# --------------------------------------------------------------------------------------------- the bench


async def measure(args, config, model_path: str) -> dict:
    fixed_length_outputs()
    shared = args.fused_engine == "shared"
    if shared:
        # One engine for both: embeddings (split) and pixels (fused) in the same scheduler.
        config = with_engine_args(config, limit_mm_per_prompt={"image": 1})
    split = SplitPipeline(config, model_path)
    await split.start()
    fused = FusedPipeline(config, model_path, split.preparer, llm=split.engine._engine() if shared else None)
    try:
        await fused.start()
        return await _measure(args, config, model_path, split, fused)
    finally:
        await fused.shutdown()
        await split.shutdown()


async def _measure(args, config, model_path: str, split: SplitPipeline, fused: FusedPipeline) -> dict:
    payloads, origin = load_pages(args.images, args.requests)
    paths = {
        "split": lambda payload: split.run(payload, args.max_tokens),
        "fused": lambda payload: fused.run(payload, args.max_tokens),
    }
    prompt_tokens: dict[str, list[int]] = {"split": [], "fused": []}
    split_stages: list[dict] = []  # per-stage seconds of the split path, current concurrency

    def sender(name):
        async def send(payload: bytes) -> int:
            result = await paths[name](payload)
            prompt_tokens[name].append(result["prompt_tokens"])
            if name == "split":
                split_stages.append(result)
            return result["completion_tokens"]

        return send

    # Warm-up (first image requests compile/allocate), and the same pages' prompt sizes on both paths.
    warm = payloads[: min(len(payloads), 2)]
    for name in paths:
        await run_load(sender(name), warm, 1)
    report: dict[str, Any] = {
        "checkpoint": model_path,
        "serve_config": str(args.serve_config),
        "device": split.device,
        "dtype": config.model.dtype,
        "fused_engine": args.fused_engine,
        "images": origin,
        "max_tokens": args.max_tokens,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "engine_start_s": {"split": round(split.start_s, 1), "fused": round(fused.start_s, 1)},
        "by_concurrency": {},
    }
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict]] = {"split": [], "fused": []}
        split_stages.clear()
        for _ in range(args.rounds):
            for name in paths:
                rounds[name].append(await run_load(sender(name), payloads, concurrency))
        summary: dict[str, Any] = {}
        for name, results in rounds.items():
            summary[name] = median_by_key(results)
            summary[name]["pages_per_s"] = summary[name].pop("requests_per_s")
        summary["split"]["stage_p50_ms"] = {
            stage: percentile([r[f"{stage}_s"] for r in split_stages], 0.5) * 1000
            for stage in ("preprocess", "encode", "decode")
        }
        summary["ratio_p50_latency_fused_over_split"] = summary["fused"]["p50_ms"] / summary["split"]["p50_ms"]
        summary["ratio_throughput_fused_over_split"] = summary["fused"]["pages_per_s"] / summary["split"]["pages_per_s"]
        report["by_concurrency"][str(concurrency)] = summary
    report["prompt_tokens_median"] = {name: statistics.median(v) for name, v in prompt_tokens.items()}
    report["same_prompt_tokens"] = sorted(set(prompt_tokens["split"])) == sorted(set(prompt_tokens["fused"]))
    report["encoder_batch_size_mean"] = (
        sum(split.encoder.batch_sizes) / len(split.encoder.batch_sizes) if split.encoder.batch_sizes else 0.0
    )
    return report


def print_table(report: dict) -> None:
    print(
        f"split vs fused ({report['fused_engine']} fused engine), {report['device']} {report['dtype']}, "
        f"{report['max_tokens']} tokens/page, medians of {report['rounds']} interleaved rounds of "
        f"{report['requests_per_round']} pages; prompt tokens split {report['prompt_tokens_median']['split']:.0f} "
        f"/ fused {report['prompt_tokens_median']['fused']:.0f}"
    )
    print(f"{'conc':>4} {'path':>6} {'p50 ms':>9} {'p95 ms':>9} {'pages/s':>8} {'tok/s':>8}")
    for concurrency, summary in report["by_concurrency"].items():
        for name in ("split", "fused"):
            row = summary[name]
            print(
                f"{concurrency:>4} {name:>6} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} "
                f"{row['pages_per_s']:8.2f} {row['output_tokens_per_s']:8.1f}"
            )
        stages = summary["split"]["stage_p50_ms"]
        print(
            f"{'':>4} {'':>6} split p50 per stage: preprocess {stages['preprocess']:.1f} ms, "
            f"encode {stages['encode']:.1f} ms (queue + tower), decode {stages['decode']:.1f} ms"
        )
        print(
            f"{'':>4} {'ratio':>6} fused/split: p50 latency x{summary['ratio_p50_latency_fused_over_split']:.2f}, "
            f"throughput x{summary['ratio_throughput_fused_over_split']:.2f}"
        )


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    concurrencies = list(report["by_concurrency"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    xs = range(len(concurrencies))
    for offset, name in ((-width / 2, "split"), (width / 2, "fused")):
        summaries = [report["by_concurrency"][c][name] for c in concurrencies]
        axes[0].bar([x + offset for x in xs], [s["p50_ms"] for s in summaries], width, label=name)
        axes[1].bar([x + offset for x in xs], [s["pages_per_s"] for s in summaries], width, label=name)
    for axis, title in zip(axes, ("p50 latency (ms)", "throughput (pages/s)")):
        axis.set_xticks(list(xs), [f"concurrency {c}" for c in concurrencies])
        axis.set_title(title)
        axis.legend()
    fig.suptitle(
        f"split (tower in-process + vLLM from embeddings) vs fused (vLLM from pixels, {report['fused_engine']}), "
        f"{report['device']}, {report['max_tokens']} tokens/page",
        fontsize=9,
    )
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve-config", type=Path, default=None, help="default: serve_config.yaml on CUDA, else configs/cpu.yaml"
    )
    parser.add_argument("--source", help="checkpoint (directory or hub id) instead of the config's model.source")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=16, help="pages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--fused-engine", choices=("auto", "stock", "shared"), default="auto",
        help="stock: a second, stock vLLM engine; shared: the split path's engine takes pixels too "
        "(auto: stock on CUDA, shared on CPU where stock vLLM crashes on images)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "split_vs_fused.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = parser.parse_args(argv)
    args.serve_config = args.serve_config or default_serve_config()
    if args.fused_engine == "auto":
        args.fused_engine = "stock" if cuda_available() else "shared"

    from serve_app.model.model_files import resolve_model_path

    config = load_app_config(args.serve_config, args.source)
    if args.fused_engine == "stock" and "gpu_memory_utilization" in config.decoder.engine_args:
        # Two engines on one GPU: each gets half of the decoder's share.
        share = config.decoder.engine_args["gpu_memory_utilization"] / 2
        config = with_engine_args(config, gpu_memory_utilization=share)
    model_path = resolve_model_path(config.model)
    report = asyncio.run(measure(args, config, model_path))
    gc.collect()  # finalize vLLM's objects while the interpreter is whole
    print_table(report)
    print(f"saved {write_json(report, args.out)}")
    png = plot(report, args.plot or args.out.with_suffix(".png"))
    if png:
        print(f"saved {png}")


if __name__ == "__main__":
    main()
