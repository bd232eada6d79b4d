"""Batching through the whole graph: throughput at concurrency 32 vs concurrency 1, over the public API.

The target: requests/s at concurrency 32 >= 8x requests/s at concurrency 1 (the encoder batches
images, the decoder batches sequences; without batching the ratio stays near 1). Runs the two
levels with bench/load.py's generator (same task mix, same fixed max_tokens, same request
sequence), prints the ratio, and saves JSON + a PNG plot.

    python bench/batching.py --url http://127.0.0.1:8000                  # 20 s per level, /ocr text
    python bench/batching.py --duration 30 --max-tokens 128 --require      # exit 1 below the target
    python bench/batching.py --concurrency 1 16 --target 6 --mix text=0.8,stream=0.2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import sweep  # noqa: E402
from bench.lib.results import timestamped  # noqa: E402

TARGET = 8.0


def ratios(report: dict) -> dict:
    """The last level over the first, for each throughput measure."""
    low, high = report["levels"][0], report["levels"][-1]

    def ratio(key: str) -> float:
        return round(high[key] / low[key], 3) if low[key] else 0.0

    return {
        "low_concurrency": low["concurrency"],
        "high_concurrency": high["concurrency"],
        "requests_per_s": ratio("requests_per_s"),
        "pages_per_s": ratio("pages_per_s"),
        "output_tokens_per_s": ratio("output_tokens_per_s"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sweep.add_common_arguments(parser, [1, 32], "text")
    parser.add_argument("--target", type=float, default=TARGET, help="ratio to reach (default %(default)s)")
    parser.add_argument("--require", action="store_true", help="exit with status 1 when the ratio is below --target")
    args = parser.parse_args(argv)
    if len(args.concurrency) != 2 or args.concurrency[0] >= args.concurrency[1]:
        parser.error("--concurrency takes two levels, low then high (default 1 32)")
    if args.requests is None and args.duration is None:
        args.duration = 20.0
    report = sweep.run_from_args(args)
    sweep.print_errors(report)
    report["ratio"] = ratios(report)
    report["target"] = args.target
    report["meets_target"] = report["ratio"]["requests_per_s"] >= args.target
    ratio = report["ratio"]
    print(
        f"throughput c={ratio['high_concurrency']} / c={ratio['low_concurrency']}: "
        f"{ratio['requests_per_s']:.2f}x requests/s, {ratio['pages_per_s']:.2f}x pages/s, "
        f"{ratio['output_tokens_per_s']:.2f}x output tokens/s (target {args.target:g}x: "
        f"{'met' if report['meets_target'] else 'NOT met'})"
    )
    for level in report["levels"]:
        stages = level.get("stage_means")
        if stages:
            print(
                f"  c={level['concurrency']}: mean preprocess {stages['preprocess_ms']:.0f} ms, encode "
                f"{stages['encode_ms']:.0f} ms (batch {stages['encoder_batch_size']:.1f}), decode "
                f"{stages['decode_ms']:.0f} ms, ingress total {stages['total_ms']:.0f} ms, client p50 {level['p50_ms']:.0f} ms"
            )
    title = (f"batching: c={ratio['high_concurrency']} / c={ratio['low_concurrency']} = {ratio['requests_per_s']:.2f}x "
             f"requests/s (target {args.target:g}x)   max_tokens {report['max_tokens']}")
    out, png = sweep.save(report, args.out or timestamped("batching"), args.plot, title)
    print(f"saved {out} and {png}")
    if args.require and not report["meets_target"]:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
