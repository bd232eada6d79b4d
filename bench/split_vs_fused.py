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
    python bench/split_vs_fused.py --source /models/HunyuanOCR         # GPU: serve_config.yaml, stock fused engine

Also the shared pieces of bench/engines.py and bench/gpu_plan.py: images, the batched in-process vision
encoder, the split pipeline and fixed-length sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import percentile, run_load  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "sroie-sample"  # the sample receipts beside the checkout
RESULTS = ROOT / "bench" / "results"
INSTRUCTION = "提取图中的文字。"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# --------------------------------------------------------------------------------------------- set-up


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_serve_config() -> Path:
    """serve_config.yaml (the 24 GB GPU plan) where CUDA is visible, configs/cpu.yaml otherwise."""
    return ROOT / "serve_config.yaml" if cuda_available() else ROOT / "configs" / "cpu.yaml"


def load_app_config(serve_config: Path, source: str | None = None):
    """The application's config from a serve config file, the model source optionally replaced."""
    from serve_app.config import OCRAppConfig

    config = OCRAppConfig.from_serve_config(serve_config)
    if config.model.family != "hunyuan_vl":
        raise SystemExit(f"{serve_config}: model family {config.model.family!r}; these benches need hunyuan_vl")
    if source:
        config = config.model_copy(update={"model": config.model.model_copy(update={"source": source})})
    return config


def with_engine_args(config, **updates):
    """A copy of `config` whose decoder engine_args carry `updates` (None values remove a key)."""
    args = {**config.decoder.engine_args, **updates}
    args = {key: value for key, value in args.items() if value is not None}
    return config.model_copy(update={"decoder": config.decoder.model_copy(update={"engine_args": args})})


def load_pages(images_dir: Path | None, count: int) -> tuple[list[bytes], str]:
    """`count` image payloads, cycling over the receipts in `images_dir` (sorted), or over synthetic
    receipt-sized pages (463x1000, like SROIE's) when the folder is missing or empty."""
    files = []
    if images_dir is not None and images_dir.is_dir():
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if files:
        distinct = [p.read_bytes() for p in files]
        origin = f"{images_dir} ({len(files)} images)"
    else:
        from tests.conftest import make_image, to_bytes

        distinct = [to_bytes(make_image(463, 1000, seed=i), "JPEG") for i in range(8)]
        origin = f"synthetic 463x1000 pages ({images_dir} has no images)"
    return [distinct[i % len(distinct)] for i in range(count)], origin


def fixed_length_outputs() -> None:
    """Make every vLLM request of this process run to max_tokens (`ignore_eos=True`).

    VLLMEngine builds its SamplingParams with `from vllm import SamplingParams` at call time, and
    SamplingOptions has no ignore_eos: replacing that module attribute with a factory that adds it
    keeps the engine's own request path while fixing the output length. Bench processes only.
    """
    import vllm

    real = getattr(vllm, "_real_sampling_params", None) or vllm.SamplingParams

    def sampling_params(*args, **kwargs):
        kwargs.setdefault("ignore_eos", True)
        return real(*args, **kwargs)

    vllm._real_sampling_params = real
    vllm.SamplingParams = sampling_params


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)} if values else {"p50": 0.0, "p95": 0.0}


def save_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------- the split path


class BatchingEncoder:
    """The VisionEncoder stage without Ray: its tower encoder (VisionTowerEncoder) behind the same batching
    (serve_app.stages.batching.BatchWhileBusy), recording each call's size and time."""

    def __init__(self, tower_encoder, max_batch: int, wait_s: float):
        from serve_app.stages.batching import BatchWhileBusy

        self.tower_encoder = tower_encoder
        self.batcher = BatchWhileBusy(self._encode, max_batch, wait_s)
        self.batch_sizes: list[int] = []
        self.batch_ms: list[float] = []

    async def encode(self, prepared):
        return await self.batcher.submit(prepared)

    def _encode(self, items: list) -> list:
        results = self.tower_encoder.encode(items)
        self.batch_sizes.append(len(items))
        self.batch_ms.append(results[0].encode_ms)
        return results

    async def close(self) -> None:
        await self.batcher.close()


class SplitPipeline:
    """Preprocessor -> VisionEncoder -> Decoder stage code in one process (no Ray, no HTTP)."""

    def __init__(self, config, model_path: str):
        from serve_app.engines.vllm_engine import VLLMEngine
        from serve_app.model.hunyuan_vl import resolve_device
        from serve_app.stages.preprocessor import ImagePreparer
        from serve_app.stages.vision_encoder import VisionTowerEncoder

        self.config = config
        self.preparer = ImagePreparer(config, model_path)
        self.device = resolve_device(config.model.device)
        tower_encoder = VisionTowerEncoder(config)  # the stage's own code: the checkpoint of config.model
        self.tower = tower_encoder.tower
        self.encoder = BatchingEncoder(tower_encoder, config.encoder.max_batch_size, config.encoder.batch_wait_timeout_s)
        self.engine = VLLMEngine(config.model, config.decoder, model_path)
        self.start_s = 0.0

    async def start(self) -> None:
        started = time.perf_counter()
        await self.engine.start()
        self.start_s = time.perf_counter() - started

    async def run(self, payload: bytes, max_tokens: int) -> dict[str, Any]:
        """One page end to end; token counts and per-stage times."""
        from serve_app.stage_io import DecodeRequest, SamplingOptions

        started = time.perf_counter()
        prepared = await asyncio.to_thread(self.preparer.prepare, payload, INSTRUCTION)
        prepared_at = time.perf_counter()
        embeddings = await self.encoder.encode(prepared)
        encoded_at = time.perf_counter()
        result = await self.engine.generate(
            DecodeRequest(prepared.prompt, embeddings, SamplingOptions(max_tokens=max_tokens))
        )
        done = time.perf_counter()
        return {
            "completion_tokens": result.completion_tokens,
            "prompt_tokens": result.prompt_tokens,
            "preprocess_s": prepared_at - started,
            "encode_s": encoded_at - prepared_at,
            "decode_s": done - encoded_at,
        }

    async def shutdown(self) -> None:
        await self.encoder.close()
        await self.engine.shutdown()


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
            "prompt": self.preparer.build_prompt(INSTRUCTION),
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
            summary[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
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


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
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
    save_json(report, args.out)
    plot(report, args.plot or args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
