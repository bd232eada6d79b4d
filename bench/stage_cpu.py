"""CPU time per request of each process of a running service: where the CPU of a request goes.

Runs one closed-loop level of bench/load.py's generator (bench.lib.http_load; after a short warm-up) against
a service on this machine and reads the CPU time (user + system) of each process before and after, from the
processes themselves: each stage's replicas (`ray::ServeReplica:<app>:<deployment>`) and, apart, their
child processes (vLLM's engine core and worker under the Decoder), Ray's HTTP proxy, the Serve
controller, the raylet and the GCS, and this client. Prints and saves CPU ms per request and % of a
core per group, and the total: what the served graph spends per request beyond the model's own work
(compare with bench/overhead.py's in-process path).

    python bench/stage_cpu.py --url http://127.0.0.1:8000 --app ocr            # c=16, 20 s, text
    python bench/stage_cpu.py --concurrency 32 --duration 30 --max-tokens 256 --out bench/results/cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import http_load  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.processes import cpu_seconds, stage_processes  # noqa: E402
from bench.lib.results import timestamped, write_json  # noqa: E402

RAY_PROCESSES = {  # group -> a string in the command line that names it
    "Ray proxy": "ray::ProxyActor",
    "Serve controller": "ray::ServeController",
    "raylet": "/raylet",
    "GCS": "gcs_server",
}


def process_groups(app: str) -> dict[str, list[psutil.Process]]:
    """Group name -> its processes: each deployment's replicas, their children apart, and Ray's own."""
    groups: dict[str, list[psutil.Process]] = {}
    for deployment, replicas in sorted(stage_processes(app).items()):
        groups[deployment] = replicas
        children = [child for replica in replicas for child in _children(replica)]
        if children:
            groups[f"{deployment} children"] = children
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        for group, marker in RAY_PROCESSES.items():
            if marker in command:
                groups.setdefault(group, []).append(process)
    return groups


def group_cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """Group -> user + system CPU seconds of its processes so far (a process gone since counts 0)."""
    return {group: cpu_seconds(processes) for group, processes in groups.items()}


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


async def measure(args) -> dict:
    documents = http_load.load_documents(args.images, args.limit_images)
    mix = http_load.parse_mix(args.mix)
    groups = process_groups(args.app)
    if not any(not name.endswith("children") and name not in RAY_PROCESSES for name in groups):
        raise SystemExit(f"no replica of app {args.app!r} runs on this machine (--app names the Serve application)")
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8)
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), timeout=args.timeout, limits=limits) as client:
        target = http_load.Target(client, args.max_tokens, args.fields.split(","), documents=documents)
        if any(kind in http_load.CHAT_KINDS for kind in mix):
            target.model = await http_load.served_model(client)
        kinds = http_load.kind_schedule(mix, args.concurrency * 64)
        await http_load.run_level(target, kinds, 1, requests=args.warmup)  # warm-up, not counted
        before, client_before, started = group_cpu_seconds(groups), time.process_time(), time.perf_counter()
        level = await http_load.run_level(target, kinds, args.concurrency, duration=args.duration)
        after, client_after, elapsed = group_cpu_seconds(groups), time.process_time(), time.perf_counter() - started
    used = {group: after[group] - before[group] for group in groups}
    used["this client"] = client_after - client_before
    requests = max(level["ok"], 1)
    by_group = {
        group: {
            "cpu_s": round(seconds, 3),
            "core_percent": round(100 * seconds / elapsed, 1),
            "ms_per_request": round(1000 * seconds / requests, 2),
        }
        for group, seconds in sorted(used.items(), key=lambda item: -item[1])
    }
    service = sum(seconds for group, seconds in used.items() if group != "this client")
    return {
        "url": args.url,
        "app": args.app,
        "mix": mix,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "requests_ok": level["ok"],
        "errors": level["errors"],
        "requests_per_s": level["requests_per_s"],
        "cpus": psutil.cpu_count(),
        "service_ms_per_request": round(1000 * service / requests, 2),
        "service_core_percent": round(100 * service / elapsed, 1),
        "by_group": by_group,
    }


def print_table(report: dict) -> None:
    print(
        f"{report['url']} app {report['app']}: c={report['concurrency']}, {report['seconds']} s, "
        f"{report['requests_ok']} requests ({report['requests_per_s']} req/s), max_tokens {report['max_tokens']}"
    )
    print(f"{'process group':<28} {'% of a core':>11} {'CPU ms/request':>15}")
    for group, row in report["by_group"].items():
        print(f"{group:<28} {row['core_percent']:>11.1f} {row['ms_per_request']:>15.2f}")
    print(
        f"{'service total':<28} {report['service_core_percent']:>11.1f} {report['service_ms_per_request']:>15.2f}"
        f"   ({report['cpus']} CPUs)"
    )


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    groups = [group for group in report["by_group"] if group != "this client"]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    axis.barh(groups[::-1], [report["by_group"][group]["ms_per_request"] for group in groups[::-1]])
    axis.set_xlabel("CPU ms per request")
    axis.set_title(
        f"c={report['concurrency']}, {report['requests_per_s']:.2f} req/s: "
        f"{report['service_ms_per_request']:.0f} CPU ms per request in all"
    )
    return save_figure(figure, path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the service (its route prefix included)")
    parser.add_argument("--app", default="ocr", help="the Serve application's name (default %(default)s)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--mix", default="text", help="as bench/load.py (default %(default)s)")
    parser.add_argument("--fields", default=http_load.DEFAULT_FIELDS)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=4, help="requests at concurrency 1 first, not counted")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/stage_cpu-<time>.json)")
    args = parser.parse_args(argv)
    report = asyncio.run(measure(args))
    print_table(report)
    out = write_json(report, args.out or timestamped("stage_cpu"))
    png = plot(report, out.with_suffix(".png"))
    print(f"saved {out}" + (f" and {png}" if png else ""))
    return report


if __name__ == "__main__":
    main()
