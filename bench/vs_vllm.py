"""The graph against what a user would run instead: vLLM's own OpenAI server on the same checkpoint.

Both serve `/v1/chat/completions` and are driven by the same closed-loop client, with the same images, the
same instruction (the text task's official prompt) and the same decoding (the model profile's temperature,
top_p, top_k and repetition penalty, `--max-tokens` each):

- split, in_decoder: the serve config's graph (default configs/cpu.yaml on CPU, serve_config.yaml with CUDA) with
  each `encoder.placement` (`--placement`, default both): the vision tower in a VisionEncoder stage of its own,
  or inside the decoder's vLLM engine. Both are served by Ray Serve from this process, side by side;
- vllm: `python -m vllm.entrypoints.openai.api_server` on the same checkpoint with the config's engine args
  (dtype, max_model_len, max_num_seqs, KV cache bytes, enforce_eager), the official flags
  (`--no-enable-prefix-caching --mm-processor-cache-gb 0`), one image per prompt and the config's pixel
  budget. It runs the vision tower itself; on CPU it needs the project's model class
  (`--model-class-overrides`, the stock class crashes in the patch merger there: see split_vs_fused.py),
  with `--stock` it runs HunYuanVL as vLLM ships it (a GPU).

The mean prompt tokens of all sides must match (the same prompt reached every model), or the script stops.
Rounds alternate (split, in_decoder, vllm, then the reverse, ...); per concurrency: output tok/s, p50 latency,
each side's medians, and each placement's ratios to vllm.

    python bench/vs_vllm.py                                          # tiny checkpoint, c=1 16 32, 2 rounds
    python bench/vs_vllm.py --source tencent/HunyuanOCR --serve-config serve_config.yaml --stock   # a GPU
    python bench/vs_vllm.py --graph-url split=http://127.0.0.1:8000   # a graph already running
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.config import default_serve_config, load_app_config, with_placement  # noqa: E402
from bench.lib.http_load import load_documents  # noqa: E402
from bench.lib.images import DEFAULT_IMAGES  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from bench.lib.rounds import interleaved_rounds  # noqa: E402
from bench.lib.service import deployed_graph, free_port, serve_instance  # noqa: E402
from bench.lib.stats import percentile  # noqa: E402

PASSED_ENGINE_ARGS = ("max_model_len", "max_num_seqs", "kv_cache_memory_bytes", "enforce_eager", "gpu_memory_utilization")


def vllm_command(config, model_path: str, port: int, stock: bool) -> list[str]:
    """vLLM's OpenAI server with the decoder's engine settings, the official flags and the model's pixel budget."""
    from serve_app.engines.vllm_engine import ARCHITECTURE, MODEL_CLASS_OVERRIDE

    args = config.decoder.engine_args
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
        "--served-model-name", "vllm", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", config.model.dtype, "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
        "--limit-mm-per-prompt", json.dumps({"image": 1}),
        "--mm-processor-kwargs", json.dumps({"min_pixels": config.model.min_pixels, "max_pixels": config.model.max_pixels}),
        "--generation-config", "vllm",  # decoding comes from each request, as the graph's does
    ]
    for name in PASSED_ENGINE_ARGS:
        value = args.get(name)
        if value is True:
            command.append(f"--{name.replace('_', '-')}")
        elif value not in (None, False):
            command += [f"--{name.replace('_', '-')}", str(value)]
    if not stock:
        command += ["--model-class-overrides", json.dumps({ARCHITECTURE: MODEL_CLASS_OVERRIDE})]
    return command


def start_vllm(command: list[str], log: Path, timeout_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vLLM's server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.terminate()
    raise SystemExit(f"vLLM's server not healthy within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def chat_body(model: str, data_url: str, instruction: str, decoding, max_tokens: int, with_system: bool) -> dict:
    user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                        {"type": "text", "text": instruction}]}
    body = {"model": model, "messages": [user], "max_tokens": max_tokens, "temperature": decoding.temperature}
    if with_system:  # vLLM's server: the official clients' message list (the graph adds the system message itself)
        body["messages"] = [{"role": "system", "content": ""}, user]
        body.update(top_p=decoding.top_p, top_k=decoding.top_k, repetition_penalty=decoding.repetition_penalty)
    return body


async def closed_loop(url: str, bodies: list[dict], concurrency: int, requests: int) -> dict:
    latencies, prompt_tokens, output_tokens = [], [], 0
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one_client() -> None:
            nonlocal sent, output_tokens
            while sent < requests:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
                latencies.append(time.perf_counter() - started)
                usage = response.json()["usage"]
                prompt_tokens.append(usage["prompt_tokens"])
                output_tokens += usage["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "output_tokens_per_s": round(output_tokens / wall, 1),
        "p50_ms": round(percentile([s * 1000 for s in latencies], 0.5), 1),
        "mean_prompt_tokens": round(statistics.fmean(prompt_tokens), 1),
        "mean_output_tokens": round(output_tokens / len(latencies), 1),
    }


def run_level(url: str, bodies: list[dict], concurrency: int, requests: int) -> dict:
    return asyncio.run(closed_loop(url, bodies, concurrency, requests))


def measure(args, config, model_path: str) -> list[dict]:
    from serve_app.profiles import TEXT_ZH

    documents = [doc for doc in load_documents(Path(args.images), args.limit) if doc.is_image]
    running = dict(item.split("=", 1) for item in args.graph_url or [])  # placement -> URL of a running graph
    placements = list(running) or args.placement
    bodies = {
        side: [
            chat_body(config.model.served_model_name if side != "vllm" else "vllm", doc.data_url, TEXT_ZH,
                      config.decoding, args.max_tokens, side == "vllm")
            for doc in documents
        ]
        for side in [*placements, "vllm"]
    }
    port = free_port()
    log = Path(args.out).with_suffix(".vllm.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    server = start_vllm(vllm_command(config, model_path, port, args.stock), log, args.start_timeout)
    urls = {"vllm": f"http://127.0.0.1:{port}"}
    try:
        if running:  # graphs already running, on this config and checkpoint
            return compare(args, {**{side: url.rstrip("/") for side, url in running.items()}, **urls}, bodies, len(documents))
        with serve_instance(free_port(), len(placements)) as base_url, contextlib.ExitStack() as graphs:
            for placement in placements:
                graphs.enter_context(deployed_graph(with_placement(config, placement), placement, f"/{placement}"))
            graph_urls = {placement: f"{base_url}/{placement}" for placement in placements}
            return compare(args, {**graph_urls, **urls}, bodies, len(documents))
    finally:
        server.terminate()
        server.wait(60)


def compare(args, urls: dict[str, str], bodies: dict[str, list[dict]], images: int) -> list[dict]:
    for side in urls:  # warm-up: connections, first batch
        run_level(urls[side], bodies[side], 1, 1)
    rows = []
    for concurrency in args.concurrency:
        requests = max(images, args.requests_per_client * concurrency)
        rounds = interleaved_rounds(
            {side: functools.partial(run_level, urls[side], bodies[side], concurrency, requests) for side in urls},
            args.rounds,
        )
        rows.append(summarize(concurrency, requests, rounds))
        print(format_row(rows[-1]), flush=True)
    return rows


def summarize(concurrency: int, requests: int, rounds: dict[str, list[dict]]) -> dict:
    prompts = {side: statistics.fmean(r["mean_prompt_tokens"] for r in rounds[side]) for side in rounds}
    if max(prompts.values()) - min(prompts.values()) > 0.5:
        raise SystemExit(f"different prompts reached the models: mean prompt tokens {prompts}")
    placements = [side for side in rounds if side != "vllm"]
    row: dict = {"concurrency": concurrency, "requests": requests, "mean_prompt_tokens": round(prompts["vllm"], 1)}
    row["placements"] = placements
    for side in rounds:
        row[f"{side}_output_tokens_per_s"] = statistics.median(r["output_tokens_per_s"] for r in rounds[side])
        row[f"{side}_p50_ms"] = statistics.median(r["p50_ms"] for r in rounds[side])
        row[f"{side}_rounds"] = rounds[side]
    for side in placements:
        row[f"{side}_throughput_ratio"] = round(row[f"{side}_output_tokens_per_s"] / row["vllm_output_tokens_per_s"], 2)
        row[f"{side}_p50_ratio"] = round(row[f"{side}_p50_ms"] / row["vllm_p50_ms"], 2)
    return row


def format_row(row: dict) -> str:
    sides = [*row["placements"], "vllm"]
    throughput = "  ".join(f"{side} {row[f'{side}_output_tokens_per_s']:.1f}" for side in sides)
    latency = "  ".join(f"{side} {row[f'{side}_p50_ms']:.1f}" for side in sides)
    ratios = "  ".join(
        f"{side}/vllm {row[f'{side}_throughput_ratio']:.2f} tok/s, {row[f'{side}_p50_ratio']:.2f} p50"
        for side in row["placements"]
    )
    return (
        f"c={row['concurrency']:<3} output tok/s: {throughput}  |  p50 ms: {latency}  |  {ratios}  "
        f"(prompt {row['mean_prompt_tokens']} tokens)"
    )


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    rows = report["levels"]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    levels = [row["concurrency"] for row in rows]
    for side in [*rows[0]["placements"], "vllm"]:
        throughput.plot(levels, [row[f"{side}_output_tokens_per_s"] for row in rows], marker="o", label=side)
        latency.plot(levels, [row[f"{side}_p50_ms"] for row in rows], marker="o", label=side)
    throughput.set_title("output tokens/s")
    latency.set_title("p50 latency (ms)")
    for axis in (throughput, latency):
        axis.set_xlabel("concurrency")
        axis.legend()
    figure.suptitle(f"the graph's placements vs vLLM's OpenAI server ({report['max_tokens']} output tokens)")
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-config", default=None, help="default: serve_config.yaml with CUDA, else configs/cpu.yaml")
    parser.add_argument("--source", default=None, help="model source instead of the config's")
    parser.add_argument("--placement", nargs="+", choices=["split", "in_decoder"], default=["split", "in_decoder"],
                        help="the graph's encoder.placement(s) to deploy and measure")
    parser.add_argument("--graph-url", action="append", metavar="PLACEMENT=URL",
                        help="a running graph of this config and placement instead of deploying one (repeatable)")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--requests-per-client", type=int, default=2, help="at least the images, each level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stock", action="store_true", help="vLLM's own HunYuanVL class (a GPU; CPU crashes)")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", default=str(RESULTS / "vs_vllm.json"))
    args = parser.parse_args(argv)
    from serve_app.model.model_files import resolve_model_path

    config = load_app_config(Path(args.serve_config) if args.serve_config else default_serve_config(), args.source)
    model_path = resolve_model_path(config.model)
    levels = measure(args, config, model_path)
    report = {"model": model_path, "max_tokens": args.max_tokens, "rounds": args.rounds, "levels": levels}
    out = Path(args.out)
    report["plot"] = str(plot(report, out.with_suffix(".png")))
    write_json(report, out)
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
