"""Closed-loop load: N workers back to back, each sending its next request when its last one is answered.

The HTTP load generator of the service's public API (load.py, batching.py, stage_cpu.py): documents of a
folder round-robin, request kinds from a task mix:

- `text`, `spotting`, `fields`, ... (any task name): `POST /ocr?task=...&max_tokens=N`, raw image body
  (`fields` asks for the target's fields with `fields_max_tokens`: its guided JSON must not be cut);
- `stream`: `POST /v1/chat/completions` with `stream: true` (SSE), time to first token measured;
- `chat`: the same chat completion, not streamed.

A worker refused with 429/503 waits the answer's Retry-After before its next request, as a well-behaved
client does. And `run_load`: the same closed loop over any coroutine (HTTP or the stages in-process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.lib.stats import latency_ms, percentile

IMAGE_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}
PDF_TYPE = "application/pdf"
CHAT_KINDS = ("stream", "chat")
DEFAULT_FIELDS = "company,date,address,total"
MAX_BACKOFF_S = 10.0  # a Retry-After longer than this is not waited out in full


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


def refused(kind: str, response: httpx.Response, latency: float) -> Outcome:
    """A non-200 answer; a 429/503 carries the server's Retry-After (seconds) when it sends one."""
    retry_after = None
    if response.status_code in (429, 503):
        try:
            retry_after = min(MAX_BACKOFF_S, max(0.0, float(response.headers.get("retry-after", ""))))
        except ValueError:
            retry_after = None
    return Outcome(kind, False, latency, str(response.status_code), retry_after_s=retry_after)


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


async def served_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


# ---------------------------------------------------------------------------------------- levels


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
            **latency_ms([outcome.latency_s for outcome in mine_ok]),
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
        **latency_ms([outcome.latency_s for outcome in ok]),
        "streams": len([outcome for outcome in ok if outcome.kind == "stream"]),
        **latency_ms(ttfts, "ttft_"),
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


async def run_load(send, payloads: list, concurrency: int) -> dict:
    """Every payload through `send` (a coroutine returning the output tokens of one) with at most
    `concurrency` in flight; latency per request, overall rate."""
    queue: asyncio.Queue = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    latencies: list[float] = []
    tokens = 0

    async def worker():
        nonlocal tokens
        while not queue.empty():
            payload = queue.get_nowait()
            started = time.perf_counter()
            produced = await send(payload)  # not `tokens += await ...`: that reads `tokens` before awaiting
            tokens += produced
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "requests_per_s": len(latencies) / elapsed,
        "output_tokens_per_s": tokens / elapsed,
    }
