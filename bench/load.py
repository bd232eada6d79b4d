"""Load generator: a running deployment over its public HTTP API, swept over concurrency levels.

For each concurrency N, N workers send requests back to back over one shared async HTTP client,
either a fixed number of requests (`--requests`) or for a fixed time (`--duration`), drawing the
images of a folder round-robin and the request kind from a task mix:

- `text`, `spotting`, `fields`, ... (any task name): `POST {url}/ocr?task=...&max_tokens=N`, raw image body
  (`fields` asks for `--fields` with `--fields-max-tokens`: its guided JSON must not be cut);
- `stream`: `POST {url}/v1/chat/completions` with `stream: true` (SSE), time to first token measured;
- `chat`: the same chat completion, not streamed.

Per level it reports requests/s, pages/s, output tokens/s, p50/p95/p99 latency, time to first
token (streams) and errors by status code, then saves the report as JSON and a PNG plot
(throughput and latency vs concurrency). One fixed `--max-tokens` for all, so runs compare.
A worker refused with 429/503 waits the answer's Retry-After before its next request, as a
well-behaved client does: beyond the service's admission limit the refusals are counted, and the
accepted requests' throughput and latency stay those of the admitted load.

    python bench/load.py --url http://127.0.0.1:8000                 # 1 4 16 64, 32 requests per level
    python bench/load.py --duration 15 --mix text=0.6,spotting=0.2,fields=0.1,stream=0.1
    python bench/load.py --concurrency 1 8 --requests 40 --max-tokens 128 --out bench/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}
PDF_TYPE = "application/pdf"
CHAT_KINDS = ("stream", "chat")
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "sroie-sample"
DEFAULT_MIX = "text=0.6,spotting=0.2,fields=0.1,stream=0.1"
DEFAULT_FIELDS = "company,date,address,total"


# ---------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes
    content_type: str

    @property
    def is_image(self) -> bool:
        return self.content_type != PDF_TYPE

    @property
    def data_url(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def load_documents(folder: Path, limit: int | None = None) -> list[Document]:
    """The folder's images (and PDFs, for /ocr kinds), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"no such folder: {folder}")
    documents = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix in IMAGE_TYPES or suffix == ".pdf":
            documents.append(Document(path.name, path.read_bytes(), IMAGE_TYPES.get(suffix, PDF_TYPE)))
    if not documents:
        raise SystemExit(f"no images in {folder}")
    return documents[:limit] if limit else documents


def parse_mix(text: str) -> dict[str, float]:
    """`text=0.6,stream=0.1,...` -> weights (need not sum to 1). A bare name weighs 1."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise SystemExit(f"--mix: bad weight in {item!r}") from None
        if value < 0 or not math.isfinite(value):
            raise SystemExit(f"--mix: bad weight in {item!r}")
        if value > 0:
            mix[name.strip()] = mix.get(name.strip(), 0.0) + value
    if not mix:
        raise SystemExit("--mix: no kind with a positive weight")
    return mix


def kind_schedule(mix: dict[str, float], count: int) -> list[str]:
    """`count` kinds in proportion to the weights, interleaved and deterministic (smooth weighted
    round-robin): every level sends the same sequence, so levels compare."""
    total = sum(mix.values())
    current = dict.fromkeys(mix, 0.0)
    kinds = []
    for _ in range(count):
        for name, weight in mix.items():
            current[name] += weight
        chosen = max(current, key=current.get)
        current[chosen] -= total
        kinds.append(chosen)
    return kinds


# ---------------------------------------------------------------------------------------- requests

MAX_BACKOFF_S = 10.0  # a Retry-After longer than this is not waited out in full


def refused(kind: str, response: httpx.Response, latency: float) -> Outcome:
    """A non-200 answer; a 429/503 carries the server's Retry-After (seconds) when it sends one."""
    retry_after = None
    if response.status_code in (429, 503):
        try:
            retry_after = min(MAX_BACKOFF_S, max(0.0, float(response.headers.get("retry-after", ""))))
        except ValueError:
            retry_after = None
    return Outcome(kind, False, latency, str(response.status_code), retry_after_s=retry_after)


@dataclass
class Outcome:
    kind: str
    ok: bool
    latency_s: float
    error: str | None = None
    retry_after_s: float | None = None  # a refusal's Retry-After: the worker waits that long, as clients should
    pages: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    timings_ms: dict | None = None  # /ocr only: the service's own stage timings


@dataclass
class Target:
    """Where and what to send; shared by all workers."""

    client: httpx.AsyncClient
    max_tokens: int
    fields: list[str]
    fields_max_tokens: int | None = None
    model: str | None = None
    documents: list[Document] = field(default_factory=list)


async def send_ocr(target: Target, kind: str, document: Document) -> Outcome:
    params: dict = {"task": kind, "max_tokens": target.max_tokens}
    if kind == "fields":
        params["fields"] = ",".join(target.fields)
        params["max_tokens"] = target.fields_max_tokens or target.max_tokens
    started = time.perf_counter()
    response = await target.client.post(
        "/ocr", params=params, content=document.data, headers={"content-type": document.content_type}
    )
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return refused(kind, response, latency)
    body = response.json()
    return Outcome(
        kind, True, latency, pages=len(body.get("pages") or []) or 1,
        completion_tokens=body["usage"]["completion_tokens"], timings_ms=body.get("timings_ms"),
    )


def chat_body(target: Target, document: Document, stream: bool) -> dict:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": document.data_url}}]}],
        "max_tokens": target.max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def send_chat(target: Target, document: Document) -> Outcome:
    started = time.perf_counter()
    response = await target.client.post("/v1/chat/completions", json=chat_body(target, document, False))
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return refused("chat", response, latency)
    return Outcome("chat", True, latency, pages=1, completion_tokens=response.json()["usage"]["completion_tokens"])


async def send_stream(target: Target, document: Document) -> Outcome:
    """A streamed chat completion: TTFT is the time to the first chunk with non-empty content."""
    started = time.perf_counter()
    ttft = None
    tokens = None
    done = False
    async with target.client.stream("POST", "/v1/chat/completions", json=chat_body(target, document, True)) as response:
        if response.status_code != 200:
            await response.aread()
            return refused("stream", response, time.perf_counter() - started)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:  # the status line was sent already: errors come in the stream
                await response.aread()
                return Outcome("stream", False, time.perf_counter() - started, f"stream:{chunk['error'].get('code')}")
            if ttft is None and any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    if not done:
        return Outcome("stream", False, latency, "stream:truncated")
    if tokens is None:
        return Outcome("stream", False, latency, "stream:no-usage")
    return Outcome("stream", True, latency, pages=1, completion_tokens=tokens, ttft_s=ttft)


async def send(target: Target, kind: str, index: int) -> Outcome:
    """One request of a kind; transport failures are outcomes too (named by exception class)."""
    started = time.perf_counter()
    try:
        if kind in CHAT_KINDS:
            images = [document for document in target.documents if document.is_image]
            document = images[index % len(images)]
            return await (send_stream(target, document) if kind == "stream" else send_chat(target, document))
        return await send_ocr(target, kind, target.documents[index % len(target.documents)])
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as error:
        return Outcome(kind, False, time.perf_counter() - started, type(error).__name__)


# ---------------------------------------------------------------------------------------- levels


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency_stats(values_s: list[float], prefix: str = "") -> dict:
    if not values_s:
        return {f"{prefix}p50_ms": None, f"{prefix}p95_ms": None, f"{prefix}p99_ms": None, f"{prefix}mean_ms": None}
    return {
        f"{prefix}p50_ms": round(percentile(values_s, 0.50) * 1000, 1),
        f"{prefix}p95_ms": round(percentile(values_s, 0.95) * 1000, 1),
        f"{prefix}p99_ms": round(percentile(values_s, 0.99) * 1000, 1),
        f"{prefix}mean_ms": round(sum(values_s) / len(values_s) * 1000, 1),
    }


def summarize(concurrency: int, outcomes: list[Outcome], elapsed: float) -> dict:
    ok = [outcome for outcome in outcomes if outcome.ok]
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if not outcome.ok:
            errors[outcome.error] = errors.get(outcome.error, 0) + 1
    by_kind = {}
    for kind in sorted({outcome.kind for outcome in outcomes}):
        mine = [outcome for outcome in outcomes if outcome.kind == kind]
        mine_ok = [outcome for outcome in mine if outcome.ok]
        by_kind[kind] = {
            "requests": len(mine),
            "ok": len(mine_ok),
            "errors": len(mine) - len(mine_ok),
            "output_tokens": sum(outcome.completion_tokens for outcome in mine_ok),
            **_latency_stats([outcome.latency_s for outcome in mine_ok]),
        }
    ttfts = [outcome.ttft_s for outcome in ok if outcome.ttft_s is not None]
    timed = [outcome.timings_ms for outcome in ok if outcome.timings_ms]
    stages = {
        (name if name == "encoder_batch_size" else f"{name}_ms"): round(
            sum(float(timing.get(name, 0)) for timing in timed) / len(timed), 2)
        for name in ("preprocess", "encode", "decode", "total", "encoder_batch_size")
    } if timed else None
    tokens = sum(outcome.completion_tokens for outcome in ok)
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": errors,
        "error_count": len(outcomes) - len(ok),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 4),
        "pages_per_s": round(sum(outcome.pages for outcome in ok) / elapsed, 4),
        "output_tokens_per_s": round(tokens / elapsed, 2),
        "output_tokens": tokens,
        **_latency_stats([outcome.latency_s for outcome in ok]),
        "streams": len([outcome for outcome in ok if outcome.kind == "stream"]),
        **_latency_stats(ttfts, "ttft_"),
        "stage_means": stages,  # /ocr requests: the service's own timings_ms, averaged (where time goes)
        "by_kind": by_kind,
    }


async def run_level(
    target: Target, kinds: list[str], concurrency: int, requests: int | None = None, duration: float | None = None
) -> dict:
    """N workers back to back: `requests` in all, or new ones until `duration` seconds have passed
    (those in flight then still finish and count; the time includes them, so throughput at high
    concurrency reads a little low: the last requests drain at falling concurrency)."""
    outcomes: list[Outcome] = []
    issued = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + duration if duration else None

    async def worker():
        nonlocal issued
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            if deadline is None and issued >= requests:
                return
            index = issued
            issued += 1
            outcome = await send(target, kinds[index % len(kinds)], index)
            outcomes.append(outcome)
            if outcome.retry_after_s:  # refused under overload: back off as told instead of hammering
                await asyncio.sleep(outcome.retry_after_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level = summarize(concurrency, outcomes, time.perf_counter() - started)
    level["client_cpu_s"] = round(time.process_time() - cpu_started, 3)  # this generator's own CPU time
    return level


async def served_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


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


# ---------------------------------------------------------------------------------------- output

HEADER = (f"{'conc':>4} {'ok':>5} {'err':>4} {'req/s':>7} {'pages/s':>7} {'tok/s':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'ttft95':>7}")


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


def plot(report: dict, path: Path, title: str | None = None) -> Path:
    """Throughput (left) and latency (right) vs concurrency, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    xs = [level["concurrency"] for level in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [level["requests_per_s"] for level in levels], "o-", label="requests/s")
    left.plot(xs, [level["pages_per_s"] for level in levels], "s--", label="pages/s")
    left.set_ylabel("requests/s, pages/s")
    tokens_axis = left.twinx()
    tokens_axis.plot(xs, [level["output_tokens_per_s"] for level in levels], "^:", color="tab:green", label="output tokens/s")
    tokens_axis.set_ylabel("output tokens/s")
    handles = left.get_legend_handles_labels()[0] + tokens_axis.get_legend_handles_labels()[0]
    left.legend(handles, [handle.get_label() for handle in handles], loc="upper left", fontsize=8)
    left.set_title("throughput")
    left.set_ylim(bottom=0)
    tokens_axis.set_ylim(bottom=0)
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "x:"), ("ttft_p50_ms", "^-.")):
        points = [(level["concurrency"], level[key]) for level in levels if level.get(key) is not None]
        if points:
            right.plot([x for x, _ in points], [y for _, y in points], style, label=key.replace("_ms", "").replace("_", " "))
    right.set_ylabel("latency (ms)")
    right.set_ylim(bottom=0)
    right.set_title("latency")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xlabel("concurrency")
        if len(set(xs)) > 1 and min(xs) > 0:
            axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [str(x) for x in xs])
        axis.grid(alpha=0.3)
    mix = ",".join(f"{name}={weight:g}" for name, weight in report["mix"].items())
    figure.suptitle(title or f"{report['url']}   mix {mix}   max_tokens {report['max_tokens']}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save(report: dict, out: Path, plot_path: Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path = Path(plot_path) if plot_path else out.with_suffix(".png")
    report["plot"] = str(plot_path)
    out.write_text(json.dumps(report, indent=2))
    plot(report, plot_path, title)
    return out, plot_path


def default_out(name: str) -> Path:
    return ROOT / "bench" / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


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


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep, print the table, save JSON + PNG; returns the report (with its paths)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, [1, 4, 16, 64], DEFAULT_MIX)
    args = parser.parse_args(argv)
    report = run_from_args(args)
    print_errors(report)
    out, png = save(report, args.out or default_out("load"), args.plot)
    print(f"saved {out} and {png}")
    return report


if __name__ == "__main__":
    main()
