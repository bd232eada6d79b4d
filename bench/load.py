"""Load generator: a running deployment over its public HTTP API, at several concurrencies.

Sends the images of a folder (round-robin) to `POST {url}/ocr` with at most N requests in flight,
for each N, and reports requests/s, pages/s, output tokens/s, p50/p95/p99 latency and errors.

    python bench/load.py --url http://127.0.0.1:8000 --images ../shared/data/sroie-sample --concurrency 1 4 16
    python bench/load.py --task spotting --requests 40 --out bench/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))] if ordered else 0.0


async def run_level(client: httpx.AsyncClient, payloads: list[bytes], params: dict, concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tokens = 0
    next_index = 0

    async def worker():
        nonlocal tokens, next_index
        while next_index < requests:
            payload = payloads[next_index % len(payloads)]
            next_index += 1
            started = time.perf_counter()
            try:
                response = await client.post("/ocr", params=params, content=payload)
            except httpx.HTTPError as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            if response.status_code != 200:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                continue
            latencies.append(time.perf_counter() - started)
            tokens += response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_s": len(latencies) / elapsed,
        "pages_per_s": len(latencies) / elapsed,  # one page per request
        "output_tokens_per_s": tokens / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def main_async(args) -> dict:
    files = sorted(path for path in args.images.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {args.images}")
    payloads = [path.read_bytes() for path in files]
    params = {"task": args.task, **({"max_tokens": args.max_tokens} if args.max_tokens else {})}
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        await run_level(client, payloads, params, 1, min(2, len(payloads)))  # warm-up
        levels = []
        for concurrency in args.concurrency:
            requests = args.requests or max(len(payloads), 2 * concurrency)
            levels.append(await run_level(client, payloads, params, concurrency, requests))
    return {"url": args.url, "images": str(args.images), "task": args.task, "levels": levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "sroie-sample")
    parser.add_argument("--task", default="text")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: max(images, 2*N))")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(f"{'conc':>4} {'ok':>4} {'err':>4} {'req/s':>7} {'tok/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for level in report["levels"]:
        print(
            f"{level['concurrency']:>4} {level['ok']:>4} {sum(level['errors'].values()):>4} {level['requests_per_s']:7.2f} "
            f"{level['output_tokens_per_s']:8.1f} {level['p50_ms']:8.0f} {level['p95_ms']:8.0f} {level['p99_ms']:8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
