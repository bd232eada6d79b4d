"""GPU memory plan and throughput check for HunyuanOCR on one 24 GB card, with a full-size random checkpoint.

Builds a random-weight checkpoint with the REAL HunyuanOCR 1.0 dimensions (text: hidden 1024, 24 layers,
16 heads, 8 KV heads, head_dim 128, intermediate 3584, vocab 120818, tied embeddings; vision: hidden 1152,
intermediate 4304, 27 layers, 16 heads, patch 16, merge 2: 0.996 B parameters) and prints the memory plan
for serve_config.yaml on a 24 GB card:

- weights per stage in the serving dtype (decoder = language model only; encoder = vision tower + adapter);
- vision tower activations per batch of pages at max_pixels (an estimate; measured too with --run);
- KV cache bytes per token = 2 (K, V) x layers x KV heads x head_dim x dtype bytes;
- KV tokens that fit at the decoder's gpu_memory_utilization, and the receipts in flight that allows.

With --run (a CUDA machine with vLLM) it measures throughput through the real stage code: the
Preprocessor's ImagePreparer, the vision tower in this process with the VisionEncoder's batching, and
VLLMEngine generating a fixed 300 tokens per page (ignore_eos) at concurrency 64 over receipt images, and
reports pages/s and output tokens/s against the goals (>= 25 pages/s, >= 4000 tokens/s). On a card larger
than the plan's, vLLM gets the plan's KV cache size (kv_cache_memory_bytes) instead of a fraction, so the
run has the 24 GB card's batch capacity.

    python bench/gpu_plan.py --plan-only          # default without CUDA: config only, a few seconds
    python bench/gpu_plan.py --build              # also write the random checkpoint (~2 GB, ~1 min on CPU)
    python bench/gpu_plan.py --run                # default with CUDA: build if needed, then measure
    python bench/gpu_plan.py --run --source /models/HunyuanOCR --count 512

Assumptions (the real config.json is not on these machines): dimensions as above, from the HunyuanOCR
notes and transformers' HunYuanVL defaults (vision intermediate 4304); ~12 prompt tokens around the image
tokens; vLLM's non-KV overhead (activations, CUDA graphs, context) 1.5 GiB; 0.5 GiB CUDA context per
encoder replica.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.split_vs_fused import (  # noqa: E402
    DEFAULT_IMAGES,
    IMAGE_SUFFIXES,
    RESULTS,
    SplitPipeline,
    cuda_available,
    fixed_length_outputs,
    load_app_config,
    load_pages,
    percentiles,
    pyplot,
    save_json,
)

GIB = 2**30
FULL_VOCAB = 120818
DEFAULT_CHECKPOINT_DIR = Path("~/.cache/hunyuan-ocr-serve/full-size-random-v1").expanduser()
MARKER = "full_size_random.json"
GOALS = {"pages_per_s": 25.0, "output_tokens_per_s": 4000.0}
PROMPT_TEXT_TOKENS = 12  # chat template + instruction around the image tokens (assumed)
OUTPUT_LENGTHS = (300, 600, 1000, 2048)  # SROIE receipts: 28-93 lines, 340-820 characters -> ~300 tokens
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# --------------------------------------------------------------------------------------------- checkpoint


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def full_size_tokenizer(seed: int = 0, vocab_size: int = FULL_VOCAB):
    """The tiny checkpoint's tokenizer with its vocabulary padded to the real size: filler entries (byte-level
    spellings of 2-3 character Chinese strings, never produced by merges) fill the ids up to
    vocab_size - 11, then the 11 special tokens follow. Every id a random model can sample decodes."""
    import itertools

    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from serve_app.model import tiny_checkpoint as tc

    base = tc._build_tokenizer(seed)
    model = json.loads(base.backend_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    target = vocab_size - len(tc.SPECIAL_TOKENS)
    byte_chars = _bytes_to_unicode()
    chars = list(dict.fromkeys(tc.COMMON_CHINESE))
    combos = itertools.chain(itertools.product(chars, repeat=2), itertools.product(chars, repeat=3))
    for combo in combos:
        if len(vocab) >= target:
            break
        token = "".join(byte_chars[b] for b in "".join(combo).encode("utf-8"))
        vocab.setdefault(token, len(vocab))
    skip = {"backend", "vocab", "merges", "vocab_file", "merges_file", "tokenizer_file", "name_or_path"}
    kwargs = {key: value for key, value in base.init_kwargs.items() if key not in skip}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in tc.SPECIAL_TOKENS])
    tokenizer.chat_template = tc.CHAT_TEMPLATE
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"padded tokenizer has {len(tokenizer)} entries, expected {vocab_size}")
    return tokenizer


def placeholder_ids(vocab_size: int = FULL_VOCAB) -> dict[str, int]:
    """Special-token ids as full_size_tokenizer assigns them (the last 11 ids): the config without a tokenizer."""
    from serve_app.model import tiny_checkpoint as tc

    first = vocab_size - len(tc.SPECIAL_TOKENS)
    return {token: first + index for index, token in enumerate(tc.SPECIAL_TOKENS)}


def full_size_config():
    from serve_app.model.tiny_checkpoint import build_full_size_config

    return build_full_size_config(placeholder_ids(), FULL_VOCAB)


def build_full_size_checkpoint(output_dir: Path, seed: int = 0, device: str | None = None) -> Path:
    """Write the full-size random checkpoint (bf16 weights, padded tokenizer, real pixel budget) into
    `output_dir`; a no-op when it is already there."""
    import torch
    from transformers import GenerationConfig, HunYuanVLForConditionalGeneration, HunYuanVLProcessor
    from transformers.models.hunyuan_vl.image_processing_hunyuan_vl import HunYuanVLImageProcessor

    from serve_app.model import tiny_checkpoint as tc
    from serve_app.model.tiny_checkpoint import build_full_size_config

    output_dir = Path(output_dir).expanduser()
    if (output_dir / MARKER).is_file():
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = full_size_tokenizer(seed)
    ids = tc._token_ids(tokenizer)
    config = build_full_size_config(ids, len(tokenizer))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = torch.get_default_dtype()
    rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            model = HunYuanVLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
        torch.random.set_rng_state(rng)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[tc.BOS_TOKEN], eos_token_id=ids[tc.EOS_TOKEN], pad_token_id=ids[tc.PAD_TOKEN]
    )
    model.save_pretrained(output_dir, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # vLLM, started next, sizes itself from the free memory
    image_processor = HunYuanVLImageProcessor(min_pixels=512 * 512, max_pixels=2048 * 2048)
    HunYuanVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=tc.CHAT_TEMPLATE).save_pretrained(
        output_dir
    )
    elapsed = time.perf_counter() - started
    (output_dir / MARKER).write_text(json.dumps({"seed": seed, "build_s": round(elapsed, 1), "device": device}))
    print(f"built the full-size random checkpoint in {output_dir} in {elapsed:.0f} s")
    return output_dir


# --------------------------------------------------------------------------------------------- plan


def parameter_counts(config) -> dict[str, int]:
    """Exact parameter counts from the architecture on the meta device (tied embeddings counted once)."""
    import torch
    from transformers import HunYuanVLForConditionalGeneration

    with torch.device("meta"):
        model = HunYuanVLForConditionalGeneration(config)
    vision = sum(p.numel() for name, p in model.named_parameters() if ".vision_tower." in f".{name}")
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "vision_tower": vision, "language_model": total - vision}


def image_tokens(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = 32) -> tuple[int, int, int]:
    """(tokens, patches) of an image at the pixel budget: (H/32)*(W/32+1)+2 tokens, (H/16)*(W/16) patches."""
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import smart_resize

    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (h // factor) * (w // factor + 1) + 2, (h // 16) * (w // 16), h * w


def receipt_sizes(images_dir: Path | None) -> tuple[list[tuple[int, int]], str]:
    from PIL import Image

    files = []
    if images_dir is not None and images_dir.is_dir():
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        return [(463, 1000)], "assumed 463x1000 (SROIE-like)"
    sizes = []
    for path in files:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes, f"{images_dir} ({len(files)} images)"


def vision_activation_bytes(patches: int, vision, dtype_bytes: int) -> int:
    """Peak working set of the vision tower for `patches` patches (one or several pages in one call).

    Inside a block, with SDPA's flash / memory-efficient kernel (O(S) attention memory, each image
    attended separately), live tensors peak either in attention (residual, normed, q, k, v, attention
    output, o_proj output: 7 H per patch) or in the MLP (residual, normed, fc1 and GELU outputs: 2 H + 2 I),
    plus the float32 inputs (3*16*16 pixels) and the float32 positional-embedding interpolation (H).
    """
    hidden, intermediate = vision.hidden_size, vision.intermediate_size
    per_patch = max(7 * hidden, 2 * hidden + 2 * intermediate) * dtype_bytes
    per_patch += 3 * vision.patch_size**2 * 4 + hidden * 4
    return patches * per_patch


def memory_plan(config, app, card_gib: float, sizes: list[tuple[int, int]], activation_reserve_gib: float = 1.5,
                encoder_context_gib: float = 0.5) -> dict[str, Any]:
    text, vision = config.text_config, config.vision_config
    dtype = app.model.dtype
    width = DTYPE_BYTES[dtype]
    params = parameter_counts(config)
    card = card_gib * GIB
    engine_args = app.decoder.engine_args
    utilization = float(engine_args.get("gpu_memory_utilization", 0.9))
    max_num_seqs = int(engine_args.get("max_num_seqs", 256))
    block = int(engine_args.get("block_size", 16))

    decoder_weights = params["language_model"] * width
    encoder_weights = params["vision_tower"] * width
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * width
    vllm_budget = utilization * card
    kv_bytes = vllm_budget - decoder_weights - activation_reserve_gib * GIB
    kv_blocks = int(kv_bytes // (kv_per_token * block))
    kv_tokens = kv_blocks * block

    min_pixels, max_pixels = app.model.min_pixels, app.model.max_pixels
    side = int(math.isqrt(max_pixels))
    full_tokens, full_patches, _ = image_tokens(side, side, min_pixels, max_pixels)
    batch = app.encoder.max_batch_size
    act_page = vision_activation_bytes(full_patches, vision, width)
    act_batch = vision_activation_bytes(full_patches * batch, vision, width)
    encoder_replica = encoder_weights + act_batch + encoder_context_gib * GIB
    encoder_share = app.encoder.num_gpus * card
    scaling = app.encoder.autoscaling
    encoder_replicas = scaling.max_replicas if scaling is not None else (app.encoder.num_replicas or 1)
    total = vllm_budget + encoder_replicas * encoder_replica

    receipts = [image_tokens(w, h, min_pixels, max_pixels) for w, h in sizes]
    receipt_tokens = [tokens for tokens, _, _ in receipts]
    typical_image_tokens = int(statistics.median(receipt_tokens))

    def in_flight(image_tokens_: int, output: int) -> dict[str, int]:
        sequence = image_tokens_ + PROMPT_TEXT_TOKENS + output
        by_kv = kv_blocks // math.ceil(sequence / block)
        return {"sequence_tokens": sequence, "kv_limited": by_kv, "concurrency": min(max_num_seqs, by_kv)}

    return {
        "card_gib": card_gib,
        "dtype": dtype,
        "parameters": params,
        "weights_gib": {"decoder_language_model": decoder_weights / GIB, "encoder_vision_tower": encoder_weights / GIB},
        "kv_cache": {
            "bytes_per_token": kv_per_token,
            "formula": f"2 x {text.num_hidden_layers} layers x {text.num_key_value_heads} KV heads x {text.head_dim} x {width} B",
            "gpu_memory_utilization": utilization,
            "vllm_budget_gib": vllm_budget / GIB,
            "activation_reserve_gib": activation_reserve_gib,
            "kv_gib": kv_bytes / GIB,
            "kv_bytes": int(kv_blocks * block * kv_per_token),
            "tokens": kv_tokens,
            "block_size": block,
            "max_num_seqs": max_num_seqs,
        },
        "vision_activations": {
            "max_pixels": max_pixels,
            "patches_per_page": full_patches,
            "image_tokens_per_page": full_tokens,
            "per_page_gib": act_page / GIB,
            "batch": batch,
            "per_batch_gib": act_batch / GIB,
            "estimate": "patches x (max(7H, 2H+2I) x dtype + fp32 pixels + fp32 positions)",
        },
        "encoder": {
            "replica_gib": encoder_replica / GIB,
            "context_gib": encoder_context_gib,
            "share_gib": encoder_share / GIB,
            "num_gpus": app.encoder.num_gpus,
            "replicas": encoder_replicas,
            "fits_share": encoder_replica <= encoder_share,
        },
        "total_gib": total / GIB,
        "fits_card": total <= card,
        "receipts": {
            "image_tokens": receipt_tokens,
            "typical_image_tokens": typical_image_tokens,
            "prompt_text_tokens": PROMPT_TEXT_TOKENS,
            "in_flight_by_output_tokens": {str(out): in_flight(typical_image_tokens, out) for out in OUTPUT_LENGTHS},
            "full_page_side": side,
            "full_page_2048_output": in_flight(full_tokens, 2048),
        },
    }


def print_plan(plan: dict) -> None:
    gib = lambda value: f"{value:6.2f} GiB"  # noqa: E731
    params, weights, kv = plan["parameters"], plan["weights_gib"], plan["kv_cache"]
    act, encoder, receipts = plan["vision_activations"], plan["encoder"], plan["receipts"]
    print(f"Memory plan: one {plan['card_gib']:g} GiB card, {plan['dtype']} (serve config: {plan['serve_config']})")
    print(
        f"  parameters: {params['total'] / 1e9:.3f} B = language model {params['language_model'] / 1e9:.3f} B"
        f" + vision tower {params['vision_tower'] / 1e9:.3f} B"
    )
    print(f"  decoder weights (LM only)        {gib(weights['decoder_language_model'])}")
    print(f"  encoder weights (tower+adapter)  {gib(weights['encoder_vision_tower'])} per replica")
    print(f"  KV cache per token               {kv['bytes_per_token'] / 1024:.0f} KiB  ({kv['formula']})")
    print(
        f"  vLLM budget                      {gib(kv['vllm_budget_gib'])}  (gpu_memory_utilization {kv['gpu_memory_utilization']}) "
        f"= weights + {kv['activation_reserve_gib']} GiB reserve + KV {kv['kv_gib']:.2f} GiB"
    )
    print(f"  KV tokens that fit               {kv['tokens']:,}  (blocks of {kv['block_size']}, max_num_seqs {kv['max_num_seqs']})")
    print(
        f"  vision activations at max_pixels {gib(act['per_page_gib'])} per page ({act['patches_per_page']:,} patches, "
        f"{act['image_tokens_per_page']:,} image tokens); {gib(act['per_batch_gib'])} per batch of {act['batch']} (estimate)"
    )
    print(
        f"  encoder replica                  {gib(encoder['replica_gib'])} (weights + batch activations + "
        f"{encoder['context_gib']} GiB context) vs share {encoder['share_gib']:.2f} GiB (num_gpus {encoder['num_gpus']}): "
        f"{'fits' if encoder['fits_share'] else 'OVER its share'}"
    )
    print(
        f"  total                            {gib(plan['total_gib'])} = vLLM + {encoder['replicas']} encoder replica(s): "
        f"{'fits' if plan['fits_card'] else 'DOES NOT FIT'} the card"
    )
    print(
        f"  receipts ({plan['images']}): image tokens {min(receipts['image_tokens'])}-{max(receipts['image_tokens'])}, "
        f"typical {receipts['typical_image_tokens']} + {receipts['prompt_text_tokens']} prompt tokens"
    )
    for out, row in receipts["in_flight_by_output_tokens"].items():
        print(
            f"    {int(out):>5} output tokens: {row['sequence_tokens']:>5} tokens/page -> KV room for "
            f"{row['kv_limited']:>4}, concurrency {row['concurrency']}"
        )
    full = receipts["full_page_2048_output"]
    side = receipts["full_page_side"]
    print(
        f"    full {side}x{side} page, 2048 output: {full['sequence_tokens']} tokens -> KV room for "
        f"{full['kv_limited']}, concurrency {full['concurrency']}"
    )


# --------------------------------------------------------------------------------------------- run


async def measure_run(args, app, model_path: str, plan: dict) -> dict:
    import torch

    fixed_length_outputs()
    on_cuda = torch.cuda.is_available()
    overrides: dict[str, Any] = {"max_num_seqs": max(int(app.decoder.engine_args.get("max_num_seqs", 0) or 0), args.concurrency)}
    emulated = None
    if on_cuda and args.emulate_card:
        card = torch.cuda.get_device_properties(0).total_memory / GIB
        if card > plan["card_gib"] * 1.05:
            # A bigger card: give vLLM the plan's KV cache, not a fraction of this card.
            overrides.update(gpu_memory_utilization=None, kv_cache_memory_bytes=plan["kv_cache"]["kv_bytes"])
            emulated = {"card_gib": round(card, 1), "kv_cache_memory_bytes": plan["kv_cache"]["kv_bytes"]}
    from bench.split_vs_fused import with_engine_args

    app = with_engine_args(app, **overrides)
    pipeline = SplitPipeline(app, model_path)
    await pipeline.start()
    try:
        llm = pipeline.engine._engine()
        cache = llm.vllm_config.cache_config
        kv_tokens = int(cache.num_gpu_blocks or 0) * int(cache.block_size)
        activation = measure_vision_activation(pipeline, app) if on_cuda else None
        pages, origin = load_pages(args.images, args.count)
        from bench.overhead import run_load

        results: list[dict] = []

        async def send(payload: bytes) -> int:
            result = await pipeline.run(payload, args.max_tokens)
            results.append(result)
            return result["completion_tokens"]

        warm = pages[: min(len(pages), max(4, args.concurrency // 4))]
        await run_load(send, warm, min(len(warm), args.concurrency))
        results.clear()
        pipeline.encoder.batch_sizes.clear()
        load = await run_load(send, pages, args.concurrency)
    finally:
        await pipeline.shutdown()
    stages = {stage: percentiles([r[f"{stage}_s"] * 1000 for r in results]) for stage in ("preprocess", "encode", "decode")}
    return {
        "device": pipeline.device,
        "gpu": torch.cuda.get_device_name(0) if on_cuda else None,
        "checkpoint": model_path,
        "images": origin,
        "pages": args.count,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "engine_start_s": round(pipeline.start_s, 1),
        "emulated_card": emulated,
        "kv_cache_tokens": kv_tokens,
        "kv_cache_tokens_planned": plan["kv_cache"]["tokens"],
        "pages_per_s": load["requests_per_s"],
        "output_tokens_per_s": load["output_tokens_per_s"],
        "latency_ms": {"p50": load["p50_ms"], "p95": load["p95_ms"]},
        "stage_ms": stages,
        "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in results),
        "completion_tokens_min": min(r["completion_tokens"] for r in results),
        "encoder_batch_size_mean": statistics.mean(pipeline.encoder.batch_sizes) if pipeline.encoder.batch_sizes else 0.0,
        "vision_activation": activation,
        "goals": GOALS,
        "meets_goals": {key: load[key if key != "pages_per_s" else "requests_per_s"] >= goal for key, goal in GOALS.items()},
    }


def measure_vision_activation(pipeline, app) -> dict:
    """Peak allocation of the tower on synthetic max_pixels pages, one page and a full encoder batch."""
    import numpy as np
    import torch

    from serve_app.model.hunyuan_vl import encode_image_tensors

    side = int(math.isqrt(app.model.max_pixels)) // 32 * 32
    grid = np.array([1, side // 16, side // 16], dtype=np.int64)
    # 8-bit patches, normalised on the device: what the VisionEncoder gets from the Preprocessor.
    pixels = np.random.default_rng(0).integers(0, 256, (int(np.prod(grid)), 3 * 16 * 16), dtype=np.uint8)
    normalization = pipeline.preparer.normalization
    measured = {}
    for batch in sorted({1, app.encoder.max_batch_size}):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        encode_image_tensors(pipeline.tower, [pixels] * batch, [grid] * batch, normalization)
        torch.cuda.synchronize()
        measured[str(batch)] = {
            "peak_gib": (torch.cuda.max_memory_allocated() - before) / GIB,
            "seconds": round(time.perf_counter() - started, 3),
        }
    torch.cuda.empty_cache()
    return {"side": side, "by_batch": measured}


def print_run(run: dict) -> None:
    print(
        f"Run on {run['gpu'] or run['device']}: {run['pages']} pages ({run['images']}) at concurrency {run['concurrency']}, "
        f"{run['max_tokens']} output tokens each (ignore_eos); vLLM started in {run['engine_start_s']} s"
    )
    if run["emulated_card"]:
        emulated = run["emulated_card"]
        print(
            f"  vLLM KV cache set to the plan's {emulated['kv_cache_memory_bytes'] / GIB:.2f} GiB "
            f"(this card: {emulated['card_gib']} GiB)"
        )
    print(f"  KV cache tokens: {run['kv_cache_tokens']:,} (planned {run['kv_cache_tokens_planned']:,})")
    goals = run["goals"]
    met = {key: "MET" if value else "NOT MET" for key, value in run["meets_goals"].items()}
    print(f"  pages/s      {run['pages_per_s']:9.2f}   goal >= {goals['pages_per_s']:g}: {met['pages_per_s']}")
    print(
        f"  output tok/s {run['output_tokens_per_s']:9.1f}   goal >= {goals['output_tokens_per_s']:g}: "
        f"{met['output_tokens_per_s']}"
    )
    stages = run["stage_ms"]
    print(
        f"  latency p50 {run['latency_ms']['p50']:.0f} ms, p95 {run['latency_ms']['p95']:.0f} ms; stage p50: preprocess "
        f"{stages['preprocess']['p50']:.1f} ms, encode (queue + tower) {stages['encode']['p50']:.1f} ms, "
        f"decode {stages['decode']['p50']:.0f} ms; "
        f"encoder batch {run['encoder_batch_size_mean']:.1f} on average; prompt {run['prompt_tokens_median']:.0f} tokens"
    )
    if run["vision_activation"]:
        for batch, row in run["vision_activation"]["by_batch"].items():
            side = run["vision_activation"]["side"]
            print(f"  vision tower at {side}x{side}: batch {batch}: peak +{row['peak_gib']:.2f} GiB, {row['seconds']} s")


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    plan, run = report["plan"], report.get("run")
    fig, axes = plt.subplots(1, 3 if run else 2, figsize=(14 if run else 10, 4.5))
    # Card memory, stacked.
    kv = plan["kv_cache"]
    parts = [
        ("decoder weights", plan["weights_gib"]["decoder_language_model"]),
        ("vLLM reserve", kv["activation_reserve_gib"]),
        ("KV cache", kv["kv_gib"]),
    ]
    encoder = plan["encoder"]
    for index in range(encoder["replicas"]):
        parts += [
            (f"encoder {index + 1} weights", plan["weights_gib"]["encoder_vision_tower"]),
            (
                f"encoder {index + 1} activations (batch {plan['vision_activations']['batch']})",
                plan["vision_activations"]["per_batch_gib"],
            ),
            (f"encoder {index + 1} context", encoder["context_gib"]),
        ]
    bottom = 0.0
    for label, value in parts:
        axes[0].bar(["plan"], [value], bottom=bottom, label=f"{label} {value:.1f}")
        bottom += value
    axes[0].axhline(plan["card_gib"], color="black", linestyle="--", label=f"card {plan['card_gib']:g} GiB")
    axes[0].set_ylabel("GiB")
    axes[0].set_title("memory plan")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    # Receipts in flight by output length.
    rows = plan["receipts"]["in_flight_by_output_tokens"]
    axes[1].plot([int(k) for k in rows], [r["kv_limited"] for r in rows.values()], "o-", label="KV room")
    axes[1].plot([int(k) for k in rows], [r["concurrency"] for r in rows.values()], "s--", label="concurrency (max_num_seqs cap)")
    axes[1].set_xlabel("output tokens per receipt")
    axes[1].set_ylabel("receipts in flight")
    axes[1].set_title(f"receipts of ~{plan['receipts']['typical_image_tokens']} image tokens")
    axes[1].legend(fontsize=8)
    if run:
        names = ["pages/s", "output tok/s / 100"]
        measured = [run["pages_per_s"], run["output_tokens_per_s"] / 100]
        goals = [run["goals"]["pages_per_s"], run["goals"]["output_tokens_per_s"] / 100]
        xs = range(len(names))
        axes[2].bar([x - 0.2 for x in xs], measured, 0.4, label="measured")
        axes[2].bar([x + 0.2 for x in xs], goals, 0.4, label="goal")
        axes[2].set_xticks(list(xs), names)
        axes[2].set_title(f"{run['gpu'] or run['device']}, concurrency {run['concurrency']}", fontsize=9)
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan-only", action="store_true", help="print the plan from the config (default without CUDA)")
    mode.add_argument("--run", action="store_true", help="also measure throughput (default with CUDA)")
    parser.add_argument("--serve-config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--card-gib", type=float, default=24.0)
    parser.add_argument("--activation-reserve-gib", type=float, default=1.5, help="vLLM's non-KV memory besides weights")
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR)
    parser.add_argument("--build", action="store_true", help="write the full-size random checkpoint (implied by --run)")
    parser.add_argument("--source", help="--run with this checkpoint (directory or hub id) instead of the random one")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=512, help="pages in the timed run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--no-emulate-card", dest="emulate_card", action="store_false",
                        help="on a larger card, keep gpu_memory_utilization instead of the plan's KV size")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_plan.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = parser.parse_args(argv)
    run = args.run or (not args.plan_only and cuda_available())

    app = load_app_config(args.serve_config)
    config = full_size_config()
    sizes, origin = receipt_sizes(args.images)
    plan = memory_plan(config, app, args.card_gib, sizes, args.activation_reserve_gib)
    plan["serve_config"] = str(args.serve_config)
    plan["images"] = origin
    print_plan(plan)
    report: dict[str, Any] = {"plan": plan, "run": None, "checkpoint_dir": None}

    if args.build or (run and not args.source):
        report["checkpoint_dir"] = str(build_full_size_checkpoint(args.checkpoint_dir))
    if run:
        if not cuda_available():
            print("WARNING: no CUDA device: this run measures the plumbing, not the GPU plan")
        from serve_app.model.model_files import resolve_model_path

        source = args.source or report["checkpoint_dir"]
        run_app = load_app_config(args.serve_config, source)
        model_path = resolve_model_path(run_app.model)
        report["run"] = asyncio.run(measure_run(args, run_app, model_path, plan))
        gc.collect()  # finalize vLLM's objects while the interpreter is whole
        print_run(report["run"])
    save_json(report, args.out)
    plot(report, args.plot or args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
