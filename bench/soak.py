"""Soak: steady load on a running service for a long time (10 minutes by default), sampling the
resident memory of every stage, to show whether any of them grows.

    serve run configs/cpu.yaml &
    python bench/soak.py --url http://127.0.0.1:8000 --app ocr --minutes 10

Closed loop: `--concurrency` clients send the folder's images round-robin (`/ocr`, a mix of tasks
and streamed chat completions); every `--interval` seconds each stage's RSS (replicas plus their child
processes, e.g. vLLM's engine core) is recorded. Prints a table per minute; saves JSON + PNG.
Growth is reported from the end of the first minute (warm-up: caches, allocator pools) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.lib.http_load import load_documents  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES  # noqa: E402
from bench.lib.plotting import plot_memory  # noqa: E402
from bench.lib.processes import rss_mib_by_stage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("text", "spotting", "stream")


async def client_loop(client, url, documents, max_tokens, offset, stop, statuses: Counter, model: str):
    sent = offset
    while not stop.is_set():
        document = documents[sent % len(documents)]
        task = TASKS[sent % len(TASKS)]
        sent += 1
        try:
            if task == "stream":
                body = {
                    "model": model,
                    "stream": True,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": document.data_url}}]}],
                }
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_lines():
                        pass
                    statuses[str(response.status_code)] += 1
            else:
                response = await client.post(
                    f"{url}/ocr", params={"task": task, "max_tokens": max_tokens}, content=document.data
                )
                statuses[str(response.status_code)] += 1
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1
            await asyncio.sleep(1)


async def run(args) -> dict:
    documents = [doc for doc in load_documents(Path(args.images), args.limit) if doc.is_image]
    statuses: Counter = Counter()
    samples = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=args.client_timeout) as client:
        model = (await client.get(f"{args.url}/v1/models")).json()["data"][0]["id"]
        clients = [
            asyncio.create_task(client_loop(client, args.url, documents, args.max_tokens, offset, stop, statuses, model))
            for offset in range(args.concurrency)
        ]
        started = time.perf_counter()
        next_report = 60.0
        while (elapsed := time.perf_counter() - started) < args.minutes * 60:
            samples.append({"t": round(elapsed, 1), "requests": sum(statuses.values()), "rss_mib": rss_mib_by_stage(args.app)})
            if elapsed >= next_report:
                next_report += 60
                stages = "  ".join(f"{name} {mib:7.1f}" for name, mib in sorted(samples[-1]["rss_mib"].items()))
                print(f"{elapsed / 60:4.1f} min  {samples[-1]['requests']:6d} requests  RSS MiB: {stages}", flush=True)
            await asyncio.sleep(args.interval)
        stop.set()
        await asyncio.gather(*clients)
    samples.append({"t": round(time.perf_counter() - started, 1), "requests": sum(statuses.values()), "rss_mib": rss_mib_by_stage(args.app)})

    warm = next((sample for sample in samples if sample["t"] >= 60), samples[0])
    stages = {}
    for name in sorted({name for sample in samples for name in sample["rss_mib"]}):
        series = [sample["rss_mib"].get(name, 0.0) for sample in samples]
        stages[name] = {
            "start_mib": series[0],
            "after_1_min_mib": warm["rss_mib"].get(name, 0.0),
            "end_mib": series[-1],
            "max_mib": max(series),
            "growth_after_1_min_mib": round(series[-1] - warm["rss_mib"].get(name, 0.0), 1),
        }
    return {
        "url": args.url,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "stages": stages,
        "samples": samples,
    }


def plot(report: dict, path: Path) -> Path | None:
    title = f"soak: {report['requests']} requests at concurrency {report['concurrency']}"
    return plot_memory(report["samples"], report["stages"], path, title, seconds_per_unit=60, unit="minutes")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default=None, help="Ray Serve app whose stages are sampled (default: all)")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--client-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot(report, out.with_suffix(".png")))
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({key: value for key, value in report.items() if key != "samples"}, indent=2))
    return report


if __name__ == "__main__":
    main()
