"""The embedded default against its own library: the PP-OCR graph (configs/lite.yaml, what `make serve` runs
without a GPU) vs `rapidocr.RapidOCR()` itself, on the same receipts, for one user and for a few.

- graph: `POST /ocr` with the raw bytes to configs/lite.yaml's graph, served by Ray Serve from this process,
  with `--threads N` onnxruntime threads per replica (the config's `model.num_threads`); one deployment per N.
- rapidocr: `rapidocr.RapidOCR()` with its defaults (onnxruntime's own thread count), in this process, one
  engine per client thread, on the same bytes.

Concurrency 1: one request after the other (the person at the web UI); concurrency 4: four clients back to back.
Where the time goes, per request (medians): the graph's stages as the response reports them (preprocess: decode and
checks; encode: detection, crops and angle; decode: recognition) and the rest of the request (HTTP, Ray's proxy, the
ingress, the hops between stages, queueing); rapidocr's own det / cls / rec times and the rest (image loading,
resizing, crops). Rounds alternate (graph, rapidocr, then rapidocr, graph, ...: the speed of a shared 2-core machine drifts); per
level and side: median latency (ms), requests/s; and the ratios graph / rapidocr.

    python bench/vs_rapidocr.py                               # 10 receipts, threads 1 and 2, c=1 and 4, 2 rounds
    python bench/vs_rapidocr.py --threads 2 --rounds 3 --concurrency 1 4
    python bench/vs_rapidocr.py --url http://127.0.0.1:8000        # the graph `make serve` runs, as configured
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES, load_pages  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.rounds import interleaved_rounds  # noqa: E402
from bench.lib.service import deployed_graph, free_port, serve_instance  # noqa: E402


def lite_config(threads: int, spinning: bool):
    from serve_app.config import OCRAppConfig

    config = OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml")
    model = config.model.model_copy(update={"num_threads": threads, "thread_spinning": spinning})
    return config.model_copy(update={"model": model})


def graph_level(url: str, pages: list[bytes], concurrency: int, requests: int) -> dict:
    """`requests` POST /ocr calls from `concurrency` clients; latency of each, wall time of all."""
    import httpx

    async def run() -> tuple[list[float], float]:
        latencies: list[float] = []
        sent = 0
        async with httpx.AsyncClient(timeout=300) as client:

            async def one_client() -> None:
                nonlocal sent
                while sent < requests:
                    page = pages[sent % len(pages)]
                    sent += 1
                    started = time.perf_counter()
                    response = await client.post(f"{url}/ocr", content=page)
                    if response.status_code != 200:
                        raise SystemExit(f"graph answered {response.status_code}: {response.text[:300]}")
                    latencies.append(time.perf_counter() - started)
                    timings = response.json()["timings_ms"]
                    stages.append({name: timings[name] / 1000 for name in GRAPH_STAGES})

            started = time.perf_counter()
            await asyncio.gather(*(one_client() for _ in range(concurrency)))
            return latencies, time.perf_counter() - started

    stages: list[dict[str, float]] = []
    latencies, wall = asyncio.run(run())
    return summarize(latencies, wall, stages)


class RapidOCRClients:
    """rapidocr as its users call it: `RapidOCR()` with its defaults, one engine per client thread."""

    def __init__(self, concurrency: int):
        from rapidocr import RapidOCR

        self.engines = [RapidOCR() for _ in range(concurrency)]

    def level(self, pages: list[bytes], concurrency: int, requests: int) -> dict:
        latencies: list[float] = []
        lock = threading.Lock()
        sent = 0

        def one_client(engine) -> None:
            nonlocal sent
            while True:
                with lock:
                    if sent >= requests:
                        return
                    page = pages[sent % len(pages)]
                    sent += 1
                started = time.perf_counter()
                result = engine(page)
                if result is None:
                    raise SystemExit("rapidocr returned nothing")
                latencies.append(time.perf_counter() - started)
                stages.append(dict(zip(RAPIDOCR_STAGES, (elapse or 0.0 for elapse in result.elapse_list))))

        stages: list[dict[str, float]] = []
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one_client, self.engines[:concurrency]))
        return summarize(latencies, time.perf_counter() - started, stages)


GRAPH_STAGES = ("preprocess", "encode", "decode")  # the response's timings_ms (ms), in seconds here
RAPIDOCR_STAGES = ("det", "cls", "rec")  # RapidOCROutput.elapse_list (s)


def summarize(latencies: list[float], wall: float, stages: list[dict[str, float]]) -> dict:
    """Latency and throughput; per stage the median ms, and `rest`: the median of each request's time outside them."""
    rest = [latency - sum(parts.values()) for latency, parts in zip(latencies, stages)]
    stage_ms = {name: round(statistics.median(parts[name] for parts in stages) * 1000, 1) for name in stages[0]}
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "requests_per_s": round(len(latencies) / wall, 3),
        "stages_ms": {**stage_ms, "rest": round(statistics.median(rest) * 1000, 1)},
    }


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rounds)


def measure(args, pages: list[bytes]) -> dict:
    rapid = RapidOCRClients(max(args.concurrency))
    rapid.level(pages[:1], 1, 1)  # onnxruntime's first run allocates
    rows: list[dict] = []
    if args.url:  # a graph that is already running: as it is configured
        rows += compare(args, args.url, None, pages, rapid)
        return {"pages": len(pages), "rounds": args.rounds, "levels": rows}
    with serve_instance(free_port()) as url:
        for threads in args.threads:
            for spinning in args.spinning:
                with deployed_graph(lite_config(threads, spinning == "on")):
                    rows += compare(args, url, threads, pages, rapid, spinning)
    return {"pages": len(pages), "rounds": args.rounds, "levels": rows}


def compare(
    args, url: str, threads: int | None, pages: list[bytes], rapid: RapidOCRClients, spinning: str | None = None
) -> list[dict]:
    graph_level(url, pages[:1], 1, 1)  # first request: connections, onnxruntime's first run
    rows = []
    for concurrency in args.concurrency:
        requests = max(len(pages), args.requests_per_client * concurrency)
        measured = interleaved_rounds(
            {
                "graph": lambda: graph_level(url, pages, concurrency, requests),
                "rapidocr": lambda: rapid.level(pages, concurrency, requests),
            },
            args.rounds,
        )
        graph_rounds, rapid_rounds = measured["graph"], measured["rapidocr"]
        row = {
            "threads": threads,
            "spinning": spinning,
            "concurrency": concurrency,
            "requests": requests,
            "graph_p50_ms": median_of(graph_rounds, "p50_ms"),
            "rapidocr_p50_ms": median_of(rapid_rounds, "p50_ms"),
            "graph_rps": median_of(graph_rounds, "requests_per_s"),
            "rapidocr_rps": median_of(rapid_rounds, "requests_per_s"),
            "graph_rounds": graph_rounds,
            "rapidocr_rounds": rapid_rounds,
        }
        for side, side_rounds in (("graph", graph_rounds), ("rapidocr", rapid_rounds)):
            row[f"{side}_stages_ms"] = {
                name: statistics.median(r["stages_ms"][name] for r in side_rounds) for name in side_rounds[0]["stages_ms"]
            }
        row["p50_ratio"] = round(row["graph_p50_ms"] / row["rapidocr_p50_ms"], 2)
        row["throughput_ratio"] = round(row["graph_rps"] / row["rapidocr_rps"], 2)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def parts(side: str) -> str:
        return " + ".join(f"{name} {ms:.0f}" for name, ms in row[f"{side}_stages_ms"].items())

    return (
        f"threads {row['threads'] or 'as served'}{'' if row['spinning'] is None else ', spinning ' + row['spinning']}  "
        f"c={row['concurrency']:<2}  p50 graph {row['graph_p50_ms']:8.1f} ms  "
        f"rapidocr {row['rapidocr_p50_ms']:8.1f} ms  ratio {row['p50_ratio']:.2f}  |  req/s graph {row['graph_rps']:.2f}  "
        f"rapidocr {row['rapidocr_rps']:.2f}  ratio {row['throughput_ratio']:.2f}\n"
        f"    median ms: graph {parts('graph')}  |  rapidocr {parts('rapidocr')}"
    )


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    rows = report["levels"]
    labels = [f"t{row['threads'] or '?'}{'s' if row['spinning'] == 'on' else ''} c{row['concurrency']}" for row in rows]
    positions = range(len(rows))
    latency.bar([p - 0.2 for p in positions], [row["graph_p50_ms"] for row in rows], 0.4, label="graph")
    latency.bar([p + 0.2 for p in positions], [row["rapidocr_p50_ms"] for row in rows], 0.4, label="rapidocr")
    throughput.bar([p - 0.2 for p in positions], [row["graph_rps"] for row in rows], 0.4, label="graph")
    throughput.bar([p + 0.2 for p in positions], [row["rapidocr_rps"] for row in rows], 0.4, label="rapidocr")
    for axis, title in ((latency, "p50 latency (ms)"), (throughput, "requests/s")):
        axis.set_xticks(list(positions), labels)
        axis.set_title(title)
        axis.legend()
    figure.suptitle("PP-OCR graph (threads per replica, concurrency) vs rapidocr.RapidOCR()")
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running PP-OCR graph instead of deploying one per --threads")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of page images")
    parser.add_argument("--limit", type=int, default=10, help="pages used")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="model.num_threads values of the graph")
    parser.add_argument("--spinning", nargs="+", choices=["on", "off"], default=["off"],
                        help="model.thread_spinning values of the graph (onnxruntime's idle threads spin or sleep)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests-per-client", type=int, default=5, help="at least the pages, each level")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "vs_rapidocr.json"))
    args = parser.parse_args(argv)
    pages, origin = load_pages(Path(args.images), args.limit)
    report = {"images": origin, **measure(args, pages)}
    out = Path(args.out)
    report["plot"] = str(plot(report, out.with_suffix(".png")))
    write_json(report, out)
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
