"""A concurrency sweep of the HTTP load generator (bench.lib.http_load) as load.py and batching.py run it:
their common arguments, the sweep, its table rows, and its JSON + PNG."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from bench.lib.http_load import (
    CHAT_KINDS,
    DEFAULT_FIELDS,
    Document,
    Target,
    kind_schedule,
    load_documents,
    parse_mix,
    run_level,
    send,
    served_model,
)
from bench.lib.images import DEFAULT_IMAGES
from bench.lib.plotting import plot_sweep
from bench.lib.results import write_json

HEADER = (f"{'conc':>4} {'ok':>5} {'err':>4} {'req/s':>7} {'pages/s':>7} {'tok/s':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'ttft95':>7}")


async def sweep(
    url: str,
    documents: list[Document],
    mix: dict[str, float],
    concurrency: list[int],
    *,
    max_tokens: int = 64,
    fields_max_tokens: int | None = 256,
    requests: int | None = None,
    duration: float | None = None,
    warmup: int = 2,
    fields: list[str] | None = None,
    timeout: float = 600.0,
    log=print,
) -> dict:
    """Every concurrency level in turn over one client; returns the report (levels in order)."""
    if any(kind in CHAT_KINDS for kind in mix) and not any(document.is_image for document in documents):
        raise SystemExit("chat/stream kinds need images (data: URLs), the folder has only PDFs")
    if requests is None and duration is None:
        requests = 32
    limits = httpx.Limits(max_connections=max(concurrency) + 8, max_keepalive_connections=max(concurrency) + 8)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, limits=limits) as client:
        target = Target(client, max_tokens, fields or DEFAULT_FIELDS.split(","), fields_max_tokens, documents=documents)
        if any(kind in CHAT_KINDS for kind in mix):
            target.model = await served_model(client)
        # Warm-up (not counted): each kind once, then `warmup` more, at concurrency 1.
        for index, kind in enumerate(list(mix) + kind_schedule(mix, warmup)):
            outcome = await send(target, kind, index)
            if not outcome.ok:
                log(f"warm-up {kind}: {outcome.error}")
        longest = max(requests or 0, max(concurrency) * 64)
        kinds = kind_schedule(mix, longest)
        levels = []
        for level in concurrency:
            result = await run_level(target, kinds, level, requests=requests, duration=duration)
            log(format_row(result))
            levels.append(result)
    return {
        "url": url,
        "images": len(documents),
        "mix": mix,
        "max_tokens": max_tokens,
        "fields_max_tokens": fields_max_tokens if "fields" in mix else None,
        "requests_per_level": requests,
        "duration_s": duration,
        "model": target.model,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "levels": levels,
    }


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_row(level: dict) -> str:
    return (
        f"{level['concurrency']:>4} {level['ok']:>5} {level['error_count']:>4} {level['requests_per_s']:7.2f} "
        f"{level['pages_per_s']:7.2f} {level['output_tokens_per_s']:8.1f} {_ms(level['p50_ms']):>8} "
        f"{_ms(level['p95_ms']):>8} {_ms(level['p99_ms']):>8} {_ms(level['ttft_p50_ms']):>7} {_ms(level['ttft_p95_ms']):>7}"
    )


def print_errors(report: dict, log=print) -> None:
    errors: dict[str, int] = {}
    for level in report["levels"]:
        for name, count in level["errors"].items():
            errors[name] = errors.get(name, 0) + count
    if errors:
        log("errors: " + ", ".join(f"{name}: {count}" for name, count in sorted(errors.items())))


def save(report: dict, out: Path, plot_path: Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """The report as JSON at `out` (its `plot` key naming the PNG) and the sweep's plot (default: `out` as .png)."""
    plot_path = Path(plot_path) if plot_path else Path(out).with_suffix(".png")
    report["plot"] = str(plot_path)
    out = write_json(report, out)
    plot_sweep(report, plot_path, title)
    return out, plot_path


def add_common_arguments(parser: argparse.ArgumentParser, concurrency: list[int], mix: str) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the service (its route prefix included)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images (and PDFs for /ocr kinds)")
    parser.add_argument("--limit-images", type=int, default=None, help="use only the first N files")
    parser.add_argument("--mix", default=mix, help="kinds and weights: a task name (/ocr), stream or chat (default %(default)s)")
    parser.add_argument("--fields", default=DEFAULT_FIELDS, help="keys of the fields task (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default %(default)s)")
    parser.add_argument("--fields-max-tokens", type=int, default=256,
                        help="max_tokens of fields requests: their JSON is bounded by the schema and a smaller cap "
                        "cuts it (422 model_output_error); 0: same as --max-tokens (default %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, default=None, help="requests per level (default 32 when no --duration)")
    amount.add_argument("--duration", type=float, default=None, help="seconds per level (new requests stop then)")
    parser.add_argument("--warmup", type=int, default=2, help="requests at concurrency 1 before measuring, each kind once plus N")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/<name>-<time>.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG plot (default: --out with .png)")


def run_from_args(args: argparse.Namespace, log=print) -> dict:
    if any(level < 1 for level in args.concurrency):
        raise SystemExit("--concurrency: levels must be >= 1")
    documents = load_documents(args.images, args.limit_images)
    mix = parse_mix(args.mix)
    log(f"{args.url}: {len(documents)} files, mix {mix}, max_tokens {args.max_tokens}, "
        + (f"{args.duration:g} s per level" if args.duration else f"{args.requests or 32} requests per level"))
    log(HEADER)
    return asyncio.run(
        sweep(
            args.url, documents, mix, args.concurrency,
            max_tokens=args.max_tokens, fields_max_tokens=args.fields_max_tokens or None, requests=args.requests, duration=args.duration, warmup=args.warmup,
            fields=[name.strip() for name in args.fields.split(",") if name.strip()], timeout=args.timeout, log=log,
        )
    )
