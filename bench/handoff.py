"""The encoder -> decoder handoff: image embeddings through Ray as float32 vs in the tower's dtype (bfloat16 bits).

Two Ray actors stand in for the VisionEncoder and the Decoder and run the stages' own handoff code: the
encoder holds a bfloat16 tower output and returns `ImageEmbeddings.from_tensor` of it, either converted to
float32 first (how the embeddings crossed before) or as they are (bfloat16 bits, what the encoder does now);
the decoder turns what arrives into the bfloat16 tensor vLLM gets (`to_tensor`). One request at a time, the
two ways alternating by round (the machine's speed drifts); reported per image size: bytes on the wire, p50
latency of the hop, and the two actors' CPU time per request. No model and no GPU: on a GPU the float32
conversion would run on the device, the host-side copies and Ray's transfer are the same.

    python bench/handoff.py                                   # a receipt and a 2048x2048 model input
    python bench/handoff.py --tokens 4162 --requests 60 --rounds 7
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402

DEFAULT_OUT = RESULTS / "handoff.json"
HIDDEN_SIZE = 1024  # HunyuanOCR's text hidden size
# Image tokens at HunyuanOCR's pixel budget: the median receipt of shared/data/sroie-sample, and a 2048x2048
# model input (128x128 patches: 64 * 65 + 2).
DEFAULT_TOKENS = (475, 4162)
WAYS = ("float32", "bfloat16")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS), help="image tokens per image")
    parser.add_argument("--hidden-size", type=int, default=HIDDEN_SIZE)
    parser.add_argument("--requests", type=int, default=40, help="requests per way per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way (after one warm-up round)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report; the plot goes next to it (.png)")
    args = parser.parse_args(argv)
    if min(args.tokens) < 1 or args.hidden_size < 1 or args.requests < 1 or args.rounds < 1:
        parser.error("--tokens, --hidden-size, --requests and --rounds must be positive")

    import ray
    import torch

    from serve_app.stage_io import ImageEmbeddings

    @ray.remote(num_cpus=0.5)
    class Encoder:
        def __init__(self, tokens: int, hidden_size: int):
            generator = torch.Generator().manual_seed(0)
            self.output = torch.randn(tokens, hidden_size, generator=generator).to(torch.bfloat16)
            self.grid = np.array([1, 2, 2], dtype=np.int64)

        def hand_over(self, way: str) -> ImageEmbeddings:
            features = self.output.to(torch.float32) if way == "float32" else self.output
            return ImageEmbeddings.from_tensor(features, self.grid)

        def cpu_s(self) -> float:
            return time.process_time()

    @ray.remote(num_cpus=0.5)
    class Decoder:
        def take(self, image: ImageEmbeddings) -> int:
            return image.to_tensor(torch.bfloat16).numel()

        def cpu_s(self) -> float:
            return time.process_time()

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    report = {
        "hidden_size": args.hidden_size,
        "requests": args.requests,
        "rounds": args.rounds,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "by_tokens": {},
    }
    try:
        for tokens in args.tokens:
            encoder, decoder = Encoder.remote(tokens, args.hidden_size), Decoder.remote()
            p50s: dict[str, list[float]] = {way: [] for way in WAYS}
            cpus: dict[str, list[float]] = {way: [] for way in WAYS}
            wire_bytes = {way: ray.get(encoder.hand_over.remote(way)).embeddings.nbytes for way in WAYS}
            for round_number in range(args.rounds + 1):  # round 0 warms up and is not counted
                for way in WAYS if round_number % 2 else WAYS[::-1]:
                    cpu_before = sum(ray.get([encoder.cpu_s.remote(), decoder.cpu_s.remote()]))
                    latencies = []
                    for _ in range(args.requests):
                        started = time.perf_counter()
                        ray.get(decoder.take.remote(encoder.hand_over.remote(way)))
                        latencies.append((time.perf_counter() - started) * 1000)
                    cpu_after = sum(ray.get([encoder.cpu_s.remote(), decoder.cpu_s.remote()]))
                    if round_number:
                        p50s[way].append(statistics.median(latencies))
                        cpus[way].append((cpu_after - cpu_before) * 1000 / args.requests)
            entry = {
                way: {
                    "wire_mb": wire_bytes[way] / 1e6,
                    "p50_ms": statistics.median(p50s[way]),
                    "cpu_ms_per_request": statistics.median(cpus[way]),
                    "rounds_p50_ms": p50s[way],
                    "rounds_cpu_ms_per_request": cpus[way],
                }
                for way in WAYS
            }
            entry["p50_ratio_bfloat16_over_float32"] = entry["bfloat16"]["p50_ms"] / entry["float32"]["p50_ms"]
            entry["cpu_ratio_bfloat16_over_float32"] = (
                entry["bfloat16"]["cpu_ms_per_request"] / entry["float32"]["cpu_ms_per_request"]
            )
            report["by_tokens"][str(tokens)] = entry
            ray.kill(encoder)
            ray.kill(decoder)
            print(
                f"{tokens} tokens x {args.hidden_size}: "
                + "; ".join(
                    f"{way} {entry[way]['wire_mb']:.2f} MB, p50 {entry[way]['p50_ms']:.1f} ms, "
                    f"CPU {entry[way]['cpu_ms_per_request']:.1f} ms/request"
                    for way in WAYS
                )
                + f" (bf16/f32: p50 {entry['p50_ratio_bfloat16_over_float32']:.2f}x, "
                f"CPU {entry['cpu_ratio_bfloat16_over_float32']:.2f}x)"
            )
    finally:
        ray.shutdown()
    write_json(report, args.out, allow_nan=False)
    png = plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return report


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    sizes = list(report["by_tokens"])
    positions = np.arange(len(sizes))
    figure, axes = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for axis, key, label in ((axes[0], "p50_ms", "p50 ms per hop"), (axes[1], "cpu_ms_per_request", "CPU ms per request")):
        for offset, way in ((-0.2, "float32"), (0.2, "bfloat16")):
            values = [report["by_tokens"][size][way][key] for size in sizes]
            axis.bar(positions + offset, values, 0.4, label=f"{way} embeddings")
        axis.set_xticks(positions, [f"{size} tokens" for size in sizes])
        axis.set_ylabel(label)
    axes[0].legend()
    figure.suptitle(f"encoder -> decoder handoff through Ray, hidden {report['hidden_size']} (medians of rounds)")
    return save_figure(figure, path, dpi=120)


if __name__ == "__main__":
    main()
