"""Overload: drive a running service at a multiple of its measured capacity and check that it sheds
load fast instead of queueing without bound.

1. References: each image once, alone: its answer (greedy decoding: the same answer every time).
2. Capacity: closed loop at `--capacity-concurrency` for `--capacity-seconds`: requests/s it sustains.
3. Overload: open loop, requests arriving at `--multiplier` x capacity for `--duration` s, each one
   on its own (a caller that does not wait for the previous answer), while each stage's RSS is sampled.
   With `--cycles N --idle S`: N such bursts, each followed by S s without requests (does memory
   come back when the load goes?).

Reports: accepted requests (200) and whether each answer equals its image's reference; rejections
(503 + Retry-After) and how fast they came; timeouts (504), anything else; memory per stage over time.
JSON + PNG under bench/results/.

    serve run configs/cpu.yaml &
    python bench/overload.py --url http://127.0.0.1:8000 --app ocr
    python bench/overload.py --app ocr --duration 600                         # 10 minutes at 4x
    python bench/overload.py --app ocr --duration 120 --idle 60 --cycles 4    # overload and idle, alternating

RSS per stage is reported at the end of every minute, and its growth from the end of minute 1 (warm-up:
allocator pools, caches) to the end.
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
from bench.lib.stats import percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


async def post(url: str, image: bytes, max_tokens: int, timeout_s: float) -> tuple[int, float, dict, dict]:
    """POST /ocr over a fresh HTTP/1.1 connection with asyncio streams: (status, seconds, JSON body, headers).

    A client of its own rather than httpx: at thousands of requests in flight, httpx's connection pool
    costs the load generator more CPU than the 2-core machine it shares with the service can spare,
    and its own lag would be measured as the service's."""
    started = time.perf_counter()
    target = httpx.URL(url)
    try:
        status, headers, data = await asyncio.wait_for(
            _raw_post(target.host, target.port or 80, f"{target.path.rstrip('/')}/ocr?max_tokens={max_tokens}", image),
            timeout_s,
        )
    except (asyncio.TimeoutError, TimeoutError):
        return -1, time.perf_counter() - started, {}, {}
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        return -2, time.perf_counter() - started, {"error": repr(error)}, {}
    elapsed = time.perf_counter() - started
    try:
        body = json.loads(data)
    except ValueError:
        body = {"non_json": data[:200].decode("utf-8", "replace")}
    return status, elapsed, body if isinstance(body, dict) else {"non_json": str(body)[:200]}, headers


async def _raw_post(host: str, port: int, path: str, body: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        else:
            data = await reader.read()
            if headers.get("transfer-encoding") == "chunked":
                data = _dechunk(data)
        return status, headers, data
    finally:
        writer.close()


def _dechunk(data: bytes) -> bytes:
    out, position = [], 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        position = end + 2 + size + 2


async def capacity(url, images, max_tokens, concurrency, seconds, timeout_s) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int):
        nonlocal done
        sent = offset
        while time.perf_counter() < deadline:
            status, _, _, _ = await post(url, images[sent % len(images)], max_tokens, timeout_s)
            sent += concurrency
            done += status == 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    return done / (time.perf_counter() - started)


async def sample_memory(app: str | None, interval_s: float, samples: list, stop: asyncio.Event) -> None:
    started = time.perf_counter()
    while not stop.is_set():
        samples.append({
            "t": round(time.perf_counter() - started, 1),
            "rss_mib": rss_mib_by_stage(app),
            "children_rss_mib": rss_mib_by_stage(app, children_only=True),  # e.g. vLLM's engine core
        })
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass


async def run(args) -> dict:
    documents = [doc for doc in load_documents(Path(args.images), args.limit) if doc.is_image]
    images = [doc.data for doc in documents]
    references = []
    for image in images:
        status, _, body, _ = await post(args.url, image, args.max_tokens, args.client_timeout)
        if status != 200:
            raise SystemExit(f"reference request failed: {status} {body}")
        references.append(body["text"])
    measured = await capacity(
        args.url, images, args.max_tokens, args.capacity_concurrency, args.capacity_seconds, args.client_timeout
    )
    rate = measured * args.multiplier
    print(f"capacity {measured:.2f} req/s at concurrency {args.capacity_concurrency}; offering {rate:.2f} req/s "
          f"({args.multiplier}x) for {args.duration:g} s")

    samples: list = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(args.app, args.memory_interval, samples, stop))
    results: list[tuple[int, int, float, dict, dict]] = []

    async def one(index: int):
        status, elapsed, body, headers = await post(args.url, images[index % len(images)], args.max_tokens, args.client_timeout)
        results.append((index % len(images), status, elapsed, body, headers))

    tasks = []
    started = time.perf_counter()
    per_cycle = int(rate * args.duration)
    offered_s = 0.0
    for cycle in range(args.cycles):
        cycle_started = time.perf_counter()
        for index in range(per_cycle):
            delay = cycle_started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(cycle * per_cycle + index)))
        offered_s += time.perf_counter() - cycle_started
        if args.idle > 0 and cycle < args.cycles - 1:
            print(f"cycle {cycle + 1}/{args.cycles}: {per_cycle} offered; idle {args.idle:g} s", flush=True)
            await asyncio.sleep(args.idle)
    await asyncio.gather(*tasks)
    drained_s = time.perf_counter() - started
    if args.idle > 0:  # the last idle period too: what memory does once the load has gone
        await asyncio.sleep(args.idle)
    stop.set()
    await sampler

    statuses = Counter(status for _, status, _, _, _ in results)
    accepted = [r for r in results if r[1] == 200]
    wrong = [r for r in accepted if r[3].get("text") != references[r[0]]]
    rejected = [r for r in results if r[1] == 503]
    rejected_ms = [r[2] * 1000 for r in rejected]
    retry_after = Counter(r[4].get("retry-after") for r in rejected)
    rejection_bodies = Counter(
        "json" if isinstance(r[3].get("error"), dict) else "ray proxy text" for r in rejected
    )
    accepted_ms = [r[2] * 1000 for r in accepted]
    stages = sorted({stage for sample in samples for stage in sample["rss_mib"]})
    memory = {}
    for stage in stages:
        series = [sample["rss_mib"].get(stage, 0.0) for sample in samples]
        memory[stage] = {"start_mib": series[0], "end_mib": series[-1], "max_mib": max(series)}
    by_minute = rss_by_minute(samples, stages)
    report = {
        "url": args.url,
        "max_tokens": args.max_tokens,
        "capacity_rps": round(measured, 2),
        "offered_rps": round(rate, 2),
        "multiplier": args.multiplier,
        "duration_s": args.duration,
        "cycles": args.cycles,
        "idle_s": args.idle,
        "offered_in_s": round(offered_s, 1),
        "all_answered_in_s": round(drained_s, 1),
        "requests": len(results),
        "statuses": {str(key): value for key, value in sorted(statuses.items())},
        "accepted": len(accepted),
        "accepted_correct": len(accepted) - len(wrong),
        "accepted_rps": round(len(accepted) / drained_s, 2),
        "accepted_p50_ms": round(percentile(accepted_ms, 0.5), 1),
        "accepted_p99_ms": round(percentile(accepted_ms, 0.99), 1),
        "rejected": len(rejected),
        "rejected_p50_ms": round(percentile(rejected_ms, 0.5), 1),
        "rejected_p99_ms": round(percentile(rejected_ms, 0.99), 1),
        "rejected_max_ms": round(max(rejected_ms, default=0.0), 1),
        "rejected_under_100ms": sum(ms < 100 for ms in rejected_ms),
        "rejected_retry_after": {str(key): value for key, value in retry_after.items()},
        "rejected_body": dict(rejection_bodies),
        "memory_mib": memory,
        "rss_mib_by_minute": by_minute,
        "growth_after_minute_1_pct": growth_after_first_minute(by_minute, stages),
        "memory_samples": samples,
    }
    return report


def rss_by_minute(samples: list[dict], stages: list[str]) -> list[dict]:
    """RSS per stage at 0 s and at the end of each whole minute (the last sample at or before it), and at the end."""
    if not samples:
        return []
    marks = [0.0, *range(60, int(samples[-1]["t"]) + 1, 60)]
    rows = []
    for mark in marks:
        sample = [s for s in samples if s["t"] <= mark + 1e-6][-1] if mark else samples[0]
        rows.append({"minute": mark / 60, "t": sample["t"], **{stage: sample["rss_mib"].get(stage) for stage in stages}})
    if samples[-1]["t"] > rows[-1]["t"]:
        rows.append({"minute": round(samples[-1]["t"] / 60, 2), "t": samples[-1]["t"],
                     **{stage: samples[-1]["rss_mib"].get(stage) for stage in stages}})
    return rows


def growth_after_first_minute(rows: list[dict], stages: list[str]) -> dict[str, float | None]:
    """Per stage: % change of RSS from the end of minute 1 to the last sample (None for a run under 2 minutes)."""
    if len(rows) < 3:
        return {stage: None for stage in stages}
    first, last = rows[1], rows[-1]
    return {
        stage: round(100 * (last[stage] - first[stage]) / first[stage], 1) if first.get(stage) and last.get(stage) else None
        for stage in stages
    }


def print_minutes(report: dict) -> None:
    rows = report["rss_mib_by_minute"]
    if not rows:
        return
    stages = [key for key in rows[0] if key not in ("minute", "t")]
    print("RSS (MiB) per stage, replicas + children:")
    print("minute " + " ".join(f"{stage:>14}" for stage in stages))
    for row in rows:
        print(f"{row['minute']:6.2f} " + " ".join(f"{row[stage] or 0:14.1f}" for stage in stages))
    print("growth after minute 1 (%):", report["growth_after_minute_1_pct"])


def plot(report: dict, path: Path) -> Path | None:
    title = (
        f"{report['multiplier']}x capacity ({report['offered_rps']} req/s offered): "
        f"{report['accepted']} accepted, {report['rejected']} shed"
    )
    return plot_memory(report["memory_samples"], report["memory_mib"], path, title, unit="seconds into the overload")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default=None, help="Ray Serve app whose stages' memory is sampled (default: all)")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--limit", type=int, default=8, help="images used")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload (per cycle)")
    parser.add_argument("--cycles", type=int, default=1, help="overload bursts")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds without requests after each burst")
    parser.add_argument("--capacity-concurrency", type=int, default=16)
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--memory-interval", type=float, default=2.0)
    parser.add_argument("--client-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overload.json"))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot(report, out.with_suffix(".png")))
    out.write_text(json.dumps(report, indent=2))
    summary = {key: value for key, value in report.items() if key not in ("memory_samples", "rss_mib_by_minute")}
    print(json.dumps(summary, indent=2))
    print_minutes(report)
    return report


if __name__ == "__main__":
    main()
