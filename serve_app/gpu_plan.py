"""The GPU memory plan of one card: what each stage needs, and whether the config's Ray GPU fractions hold it.

One pure function, `gpu_plan(config, dims, card_bytes)`, computes it from the application config and the
model's dimensions (no torch, no CUDA: the builder and the unit tests call it on any machine):

- weights per stage in the serving dtype: the decoder (vLLM) holds the language model only, the encoder
  the vision tower with its adapter (the patch merger);
- the encoder's activations for its largest batch of max_pixels pages (max_batch_size pages, capped by
  encoder.max_batch_patches when set), plus each encoder replica's CUDA context;
- KV bytes per token (2 x layers x KV heads x head_dim x dtype bytes) and per page, and how many pages fit;
- vLLM: its CUDA context (created before vLLM's start-up memory snapshot, so outside
  gpu_memory_utilization), weights, a reserve for its activations / CUDA graphs / sampler buffers, and
  the KV cache, whose size the plan fixes (`kv_cache_memory_bytes`, see below);
- headroom for a display (or anything else on the card that is not ours).

`kv_cache_memory_bytes`: vLLM 0.32 sizes the KV cache by profiling (vllm/v1/worker/gpu_worker.py,
`determine_available_memory`): it snapshots the free memory at start-up, runs a dummy forward pass and
gives the KV cache `total x gpu_memory_utilization` minus everything the device lost meanwhile. On a card the
encoders share, their allocations during that window are counted as vLLM's, and memory they free makes the
profiler's assertion fail. With `kv_cache_memory_bytes` set, vLLM skips that measurement and allocates
exactly that many bytes; gpu_memory_utilization is then only the start-up check that at least
`total x gpu_memory_utilization` bytes are free (vllm/v1/worker/utils.py, `request_memory`). The plan
derives the value from the config's gpu_memory_utilization budget (the KV that budget holds after the
weights and the reserve, in whole blocks), and the serve configs carry it.

`check_gpu_plan(config, card_bytes)` raises ValueError naming the stage and the numbers when the plan does
not fit; `format_plan(plan)` is the text `python bench/gpu_plan.py --plan-only` prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

GIB = 2**30
MIB = 2**20
DEFAULT_CARD_BYTES = 24 * GIB
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# vLLM 0.32's defaults where engine_args leave them unset (vllm/config/cache.py: gpu_memory_utilization 0.92;
# block size 16 for the CUDA attention backends this model uses; max_num_seqs 256 on GPUs of this class).
VLLM_DEFAULT_UTILIZATION = 0.92
VLLM_DEFAULT_BLOCK_SIZE = 16
VLLM_DEFAULT_MAX_NUM_SEQS = 256
# encoder.placement in_decoder: the most image tokens vLLM's scheduler encodes in one step (its encoder budget is
# max(max_num_batched_tokens, one image's tokens)); vLLM's default max_num_batched_tokens for serving on such GPUs.
VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
RECEIPT_OUTPUT_TOKENS = (300, 600, 1000, 2048)  # SROIE receipts: 28-93 lines, 340-820 characters -> ~300 tokens


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelDims(_Frozen):
    """HunyuanOCR's dimensions (1.0 and 1.5 share them); `from_config_json` reads a checkpoint's."""

    text_hidden: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_kv_heads: int = 8
    head_dim: int = 128
    text_intermediate: int = 3584
    vocab: int = 120818
    tied_embeddings: bool = True
    vision_hidden: int = 1152
    vision_intermediate: int = 4304
    vision_layers: int = 27
    vision_heads: int = 16
    patch: int = 16
    merge: int = 2
    vision_max_image_size: int = Field(2048, description="Side of the vision tower's learned position grid, in pixels.")

    @classmethod
    def from_config_json(cls, path_or_config: str | Path | dict[str, Any]) -> ModelDims:
        """From a checkpoint's config.json (a file, its directory, or the parsed dict), in either layout the
        releases ship: text keys in `text_config` (1.5, also duplicated at the top level) or flat (1.0).
        Keys the file does not have keep HunyuanOCR's values."""
        if isinstance(path_or_config, dict):
            raw = path_or_config
        else:
            path = Path(path_or_config)
            raw = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        text = {**raw, **(raw.get("text_config") or {})}
        vision = raw.get("vision_config") or {}
        defaults = cls()
        pick = lambda source, key, default: source.get(key, default) if source.get(key) is not None else default  # noqa: E731
        tied = text.get("tie_word_embeddings", raw.get("tie_word_embeddings", defaults.tied_embeddings))
        return cls(
            text_hidden=pick(text, "hidden_size", defaults.text_hidden),
            text_layers=pick(text, "num_hidden_layers", defaults.text_layers),
            text_heads=pick(text, "num_attention_heads", defaults.text_heads),
            text_kv_heads=pick(text, "num_key_value_heads", defaults.text_kv_heads),
            head_dim=pick(text, "head_dim", defaults.head_dim),
            text_intermediate=pick(text, "intermediate_size", defaults.text_intermediate),
            vocab=pick(text, "vocab_size", defaults.vocab),
            tied_embeddings=bool(tied),
            vision_hidden=pick(vision, "hidden_size", defaults.vision_hidden),
            vision_intermediate=pick(vision, "intermediate_size", defaults.vision_intermediate),
            vision_layers=pick(vision, "num_hidden_layers", defaults.vision_layers),
            vision_heads=pick(vision, "num_attention_heads", defaults.vision_heads),
            patch=pick(vision, "patch_size", defaults.patch),
            merge=pick(vision, "spatial_merge_size", defaults.merge),
            vision_max_image_size=pick(vision, "max_image_size", defaults.vision_max_image_size),
        )

    def language_model_parameters(self) -> int:
        """HunYuanVL's language model (transformers' modeling_hunyuan_vl): embeddings (+ an untied head), per
        layer q/k/v/o without bias, per-head q/k RMSNorms, a gated MLP and two RMSNorms, a final norm."""
        h, d = self.text_hidden, self.head_dim
        attention = h * self.text_heads * d * 2 + h * self.text_kv_heads * d * 2 + 2 * d
        layer = attention + 3 * h * self.text_intermediate + 2 * h
        embeddings = self.vocab * h * (1 if self.tied_embeddings else 2)
        return embeddings + self.text_layers * layer + h

    def vision_parameters(self) -> int:
        """The vision tower with its adapter: patch embedding (conv with bias), the learned position grid,
        layers (LayerNorms, q/k/v/o and a GELU MLP, all with bias), and the patch merger (merge x merge conv
        to 2H, 1x1 conv to 4H, linear to the text width, RMSNorms, the newline/begin/end/sep embeddings)."""
        v, t, i = self.vision_hidden, self.text_hidden, self.vision_intermediate
        embeddings = v * 3 * self.patch**2 + v + ((self.vision_max_image_size // self.patch) ** 2 + 1) * v
        layer = 2 * 2 * v + 4 * (v * v + v) + (v * i + i) + (i * v + v)
        merger = (
            2 * v * v * self.merge**2 + 2 * v  # proj_conv
            + 4 * v * 2 * v + 4 * v  # proj_out
            + 4 * v * t + t  # mlp
            + 4 * v + 3 * t  # image_newline, image_begin / end / sep
            + v + t  # before_rms, after_rms
        )
        return embeddings + self.vision_layers * layer + merger

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.text_layers * self.text_kv_heads * self.head_dim * dtype_bytes

    def vision_activation_bytes(self, patches: int, dtype_bytes: int) -> int:
        """Peak working set of the vision tower for `patches` patches (one or several pages in one call).

        Inside a block, with SDPA's flash / memory-efficient kernel (O(S) attention memory, each image attended
        separately), live tensors peak either in attention (residual, normed, q, k, v, attention output, o_proj
        output: 7 H per patch) or in the MLP (residual, normed, fc1 and GELU outputs: 2 H + 2 I), plus the
        float32 inputs (3 x patch^2 pixels) and the float32 positional-embedding interpolation (H). An estimate:
        `make gpu-check` measures it."""
        hidden, intermediate = self.vision_hidden, self.vision_intermediate
        per_patch = max(7 * hidden, 2 * hidden + 2 * intermediate) * dtype_bytes
        per_patch += 3 * self.patch**2 * 4 + hidden * 4
        return patches * per_patch


class PlanAssumptions(_Frozen):
    """What the arithmetic cannot derive; `make gpu-check` measures each against the plan."""

    vllm_reserve_bytes: int = Field(
        int(1.5 * GIB), description="vLLM's memory besides weights and KV: the profile run's activations, CUDA graphs, "
        "sampler buffers."
    )
    vllm_context_bytes: int = Field(GIB // 2, description="vLLM's CUDA context (outside gpu_memory_utilization).")
    encoder_context_bytes: int = Field(GIB // 2, description="Each encoder replica's CUDA context.")
    display_bytes: int = Field(GIB // 2, description="Headroom for a display or other processes on the card.")
    prompt_text_tokens: int = Field(12, description="Chat template and instruction around the image tokens.")
    receipt_image_tokens: int = Field(474, description="A typical SROIE receipt's image tokens (463x1000 class).")


class PagesInFlight(_Frozen):
    label: str
    image_tokens: int
    output_tokens: int
    sequence_tokens: int
    kv_bytes: int
    pages_by_kv: int
    concurrency: int


class GpuPlan(_Frozen):
    card_bytes: int
    cards: int = 1  # GPUs the stages spread over; everything below is per card
    dtype: str
    dtype_bytes: int
    dims: ModelDims
    assumptions: PlanAssumptions
    # weights
    language_model_parameters: int
    vision_parameters: int
    decoder_weights_bytes: int
    encoder_weights_bytes: int
    # KV cache
    kv_bytes_per_token: int
    block_size: int
    kv_bytes_per_block: int
    gpu_memory_utilization: float
    vllm_budget_bytes: int
    derived_kv_cache_memory_bytes: int
    kv_cache_memory_bytes: int
    kv_from_engine_args: bool
    kv_tokens: int
    max_model_len: int | None
    max_num_seqs: int
    # decoder
    decoder_num_gpus: float
    decoder_replicas: int
    vllm_process_bytes: int
    # encoder.placement in_decoder: the tower's weights and its activations for vLLM's largest encoder step, in vLLM
    encoder_placement: str = "split"
    vllm_vision_pages: int = 0
    vllm_vision_bytes: int = 0
    # encoder
    max_pixels: int
    page_side: int
    patches_per_page: int
    image_tokens_per_page: int
    encoder_max_batch_size: int
    encoder_max_batch_patches: int | None
    encoder_batch_patches: int
    activation_per_page_bytes: int
    activation_per_batch_bytes: int
    encoder_replica_bytes: int
    encoder_num_gpus: float
    encoder_replicas: int
    # card
    ray_gpu_fractions: dict[str, float]
    total_bytes: int
    in_flight: list[PagesInFlight]

    @property
    def ray_fraction_total(self) -> float:
        return sum(self.ray_gpu_fractions.values())

    @property
    def decoder_share_bytes(self) -> int:
        return int(self.decoder_num_gpus * self.card_bytes)

    @property
    def encoder_share_bytes(self) -> int:
        return int(self.encoder_num_gpus * self.card_bytes)

    @property
    def vllm_startup_free_bytes(self) -> int:
        """Free memory when vLLM starts if every encoder replica already holds its peak (replicas start in
        any order)."""
        return (
            self.card_bytes - self.assumptions.display_bytes - self.encoder_replicas * self.encoder_replica_bytes
            - self.assumptions.vllm_context_bytes
        )

    def problems(self) -> list[str]:
        """Every way this plan fails on its card, each naming the stage and the numbers (empty: it fits)."""
        gib = _gib
        found = []
        if self.total_bytes > self.card_bytes:
            found.append(
                f"card: the plan needs {gib(self.total_bytes)} > the card's {gib(self.card_bytes)} "
                f"(decoder/vLLM {self.decoder_replicas} x {gib(self.vllm_process_bytes)} + encoder "
                f"{self.encoder_replicas} x {gib(self.encoder_replica_bytes)} + display {gib(self.assumptions.display_bytes)})"
            )
        if self.ray_fraction_total > 1 + 1e-9:
            parts = " + ".join(f"{stage} {fraction:g}" for stage, fraction in self.ray_gpu_fractions.items() if fraction)
            found.append(
                f"ray: GPU fractions at max replicas sum to {self.ray_fraction_total:.3g} > 1 ({parts}): the "
                "last replicas would never be placed on one GPU"
            )
        if self.vllm_process_bytes > self.decoder_share_bytes:
            vision = f" + vision tower {gib(self.vllm_vision_bytes)}" if self.vllm_vision_bytes else ""
            found.append(
                f"decoder: vLLM needs {gib(self.vllm_process_bytes)} (context {gib(self.assumptions.vllm_context_bytes)} "
                f"+ weights {gib(self.decoder_weights_bytes)} + reserve {gib(self.assumptions.vllm_reserve_bytes)} + KV "
                f"{gib(self.kv_cache_memory_bytes)}{vision}) > its share num_gpus {self.decoder_num_gpus:g} x "
                f"{gib(self.card_bytes)} = {gib(self.decoder_share_bytes)}"
            )
        if self.vllm_budget_bytes > self.vllm_startup_free_bytes:
            found.append(
                f"decoder: vLLM's start-up check wants gpu_memory_utilization {self.gpu_memory_utilization:g} x "
                f"{gib(self.card_bytes)} = {gib(self.vllm_budget_bytes)} free, but with the encoders at their peak only "
                f"{gib(self.vllm_startup_free_bytes)} is"
            )
        if self.max_model_len is not None and self.max_model_len * self.kv_bytes_per_token > self.kv_cache_memory_bytes:
            found.append(
                f"decoder: the KV cache ({gib(self.kv_cache_memory_bytes)}, {self.kv_tokens:,} tokens) cannot hold one "
                f"max_model_len sequence of {self.max_model_len:,} tokens ({gib(self.max_model_len * self.kv_bytes_per_token)}): "
                "vLLM refuses to start"
            )
        if self.encoder_replicas and self.encoder_replica_bytes > self.encoder_share_bytes:
            found.append(
                f"encoder: a replica needs {gib(self.encoder_replica_bytes)} (context "
                f"{gib(self.assumptions.encoder_context_bytes)} + weights {gib(self.encoder_weights_bytes)} + activations "
                f"{gib(self.activation_per_batch_bytes)} for {self.encoder_batch_patches:,} patches) > its share "
                f"num_gpus {self.encoder_num_gpus:g} x {gib(self.card_bytes)} = {gib(self.encoder_share_bytes)}"
            )
        return found


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _replicas_per_card(stage, cards: int) -> int:
    """A stage's replicas on one card at max scale, spread over `cards` GPUs (rounded up)."""
    return math.ceil(stage.max_replicas / cards)


def gpu_plan(
    config,
    dims: ModelDims | None = None,
    card_bytes: int | None = None,
    assumptions: PlanAssumptions | None = None,
) -> GpuPlan:
    """The memory plan of `config` (an OCRAppConfig) on one card of `card_bytes` (default: the config's
    `gpu.memory_gib`), each GPU stage's replicas at max scale spread over the config's `gpu.count` cards."""
    card_bytes = card_bytes or int(config.gpu.memory_gib * GIB)
    cards = config.gpu.count
    dims = dims or ModelDims()
    assumptions = assumptions or PlanAssumptions()
    dtype = config.model.dtype
    width = DTYPE_BYTES[dtype]
    engine_args = config.decoder.engine_args
    utilization = float(engine_args.get("gpu_memory_utilization") or VLLM_DEFAULT_UTILIZATION)
    block = int(engine_args.get("block_size") or VLLM_DEFAULT_BLOCK_SIZE)
    max_num_seqs = int(engine_args.get("max_num_seqs") or VLLM_DEFAULT_MAX_NUM_SEQS)
    max_model_len = engine_args.get("max_model_len")

    lm_params, vision_params = dims.language_model_parameters(), dims.vision_parameters()
    decoder_weights, encoder_weights = lm_params * width, vision_params * width
    kv_per_token = dims.kv_bytes_per_token(width)
    kv_per_block = kv_per_token * block
    # vLLM's own rounding: requested = ceil(total x utilization) (vllm/v1/worker/utils.py, request_memory).
    vllm_budget = math.ceil(card_bytes * utilization)
    # The largest page: a square at max_pixels (smart_resize keeps multiples of 32), patches bounded by
    # max_pixels / patch^2 for any aspect ratio.
    max_pixels = config.model.max_pixels
    factor = dims.patch * dims.merge
    side = math.isqrt(max_pixels) // factor * factor
    page_tokens = (side // factor) * (side // factor + 1) + 2
    page_patches = max_pixels // dims.patch**2

    # in_decoder: the tower lives in vLLM's process, with activations for the pages of its largest encoder step.
    in_decoder = getattr(config.encoder, "placement", "split") == "in_decoder"
    vision_pages = vision_bytes = 0
    if in_decoder:
        step_tokens = max(int(engine_args.get("max_num_batched_tokens") or VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS), page_tokens)
        vision_pages = max(1, step_tokens // page_tokens)
        vision_bytes = encoder_weights + dims.vision_activation_bytes(vision_pages * page_patches, width)
    kv_room = vllm_budget - decoder_weights - vision_bytes - assumptions.vllm_reserve_bytes
    derived_kv = max(0, kv_room // kv_per_block) * kv_per_block
    configured_kv = engine_args.get("kv_cache_memory_bytes")
    kv_bytes = int(configured_kv) if configured_kv is not None else derived_kv
    kv_blocks = kv_bytes // kv_per_block
    vllm_process = (
        assumptions.vllm_context_bytes + decoder_weights + vision_bytes + assumptions.vllm_reserve_bytes + kv_bytes
    )
    batch_size = config.encoder.max_batch_size
    max_batch_patches = getattr(config.encoder, "max_batch_patches", None)
    batch_patches = batch_size * page_patches
    if max_batch_patches is not None:  # an image larger than the cap runs alone
        batch_patches = max(page_patches, min(batch_patches, int(max_batch_patches)))
    act_page = dims.vision_activation_bytes(page_patches, width)
    act_batch = dims.vision_activation_bytes(batch_patches, width)
    encoder_replica = assumptions.encoder_context_bytes + encoder_weights + act_batch

    stages = {
        "preprocessor": config.preprocessor, "encoder": config.encoder,
        "decoder": config.decoder, "ingress": config.ingress,
    }
    if in_decoder:  # no VisionEncoder deployment
        del stages["encoder"]
    fractions = {name: stage.num_gpus * _replicas_per_card(stage, cards) for name, stage in stages.items()}
    encoder_replicas = 0 if in_decoder else _replicas_per_card(config.encoder, cards)
    decoder_replicas = _replicas_per_card(config.decoder, cards)
    total = assumptions.display_bytes + decoder_replicas * vllm_process + encoder_replicas * encoder_replica

    def in_flight(label: str, image_tokens: int, output: int) -> PagesInFlight:
        sequence = image_tokens + assumptions.prompt_text_tokens + output
        by_kv = kv_blocks // math.ceil(sequence / block)
        return PagesInFlight(
            label=label, image_tokens=image_tokens, output_tokens=output, sequence_tokens=sequence,
            kv_bytes=sequence * kv_per_token, pages_by_kv=by_kv, concurrency=min(max_num_seqs, by_kv),
        )

    full_outputs = sorted({2048, config.limits.default_max_tokens})
    rows = [in_flight(f"full {side}x{side} page", page_tokens, out) for out in full_outputs]
    rows += [in_flight("receipt", assumptions.receipt_image_tokens, out) for out in RECEIPT_OUTPUT_TOKENS]

    return GpuPlan(
        card_bytes=card_bytes, cards=cards, dtype=dtype, dtype_bytes=width, dims=dims, assumptions=assumptions,
        language_model_parameters=lm_params, vision_parameters=vision_params,
        decoder_weights_bytes=decoder_weights, encoder_weights_bytes=encoder_weights,
        kv_bytes_per_token=kv_per_token, block_size=block, kv_bytes_per_block=kv_per_block,
        gpu_memory_utilization=utilization, vllm_budget_bytes=vllm_budget,
        derived_kv_cache_memory_bytes=derived_kv, kv_cache_memory_bytes=kv_bytes,
        kv_from_engine_args=configured_kv is not None, kv_tokens=kv_blocks * block,
        max_model_len=int(max_model_len) if max_model_len is not None else None, max_num_seqs=max_num_seqs,
        decoder_num_gpus=config.decoder.num_gpus, decoder_replicas=decoder_replicas, vllm_process_bytes=vllm_process,
        max_pixels=max_pixels, page_side=side, patches_per_page=page_patches, image_tokens_per_page=page_tokens,
        encoder_max_batch_size=batch_size,
        encoder_max_batch_patches=int(max_batch_patches) if max_batch_patches is not None else None,
        encoder_batch_patches=batch_patches, activation_per_page_bytes=act_page, activation_per_batch_bytes=act_batch,
        encoder_replica_bytes=encoder_replica, encoder_num_gpus=0.0 if in_decoder else config.encoder.num_gpus,
        encoder_replicas=encoder_replicas, encoder_placement="in_decoder" if in_decoder else "split",
        vllm_vision_pages=vision_pages, vllm_vision_bytes=vision_bytes, ray_gpu_fractions=fractions, total_bytes=total, in_flight=rows,
    )


def check_gpu_plan(config, card_bytes: int | None = None, dims: ModelDims | None = None) -> GpuPlan | None:
    """Raise ValueError listing every problem of `config`'s plan on a card of `card_bytes` (stage and numbers);
    the plan when it fits. None (nothing to check) unless the config serves HunyuanOCR through vLLM."""
    if config.model.family != "hunyuan_vl" or config.decoder.engine != "vllm":
        return None
    plan = gpu_plan(config, dims, card_bytes)
    problems = plan.problems()
    if problems:
        raise ValueError(
            f"GPU memory plan does not fit one {_gib(plan.card_bytes)} card (python bench/gpu_plan.py --plan-only "
            f"prints it): " + "; ".join(problems)
        )
    return plan


def format_plan(plan: GpuPlan, source: str = "") -> str:
    """The plan as `python bench/gpu_plan.py --plan-only` prints it."""
    g = lambda value: f"{value / GIB:6.2f} GiB"  # noqa: E731
    a, d = plan.assumptions, plan.dims
    kv_source = "engine_args" if plan.kv_from_engine_args else "derived, not in engine_args"
    row = lambda label, text: f"  {label:<36}{text}"  # noqa: E731
    lines = [
        f"GPU memory plan: one {plan.card_bytes / GIB:g} GiB card, {plan.dtype}" + (f" ({source})" if source else ""),
        row("parameters", f"language model {plan.language_model_parameters / 1e9:.3f} B + vision tower and adapter "
            f"{plan.vision_parameters / 1e9:.3f} B"),
        row("decoder weights (LM only)", f"{g(plan.decoder_weights_bytes)}"),
        row("encoder weights (tower + adapter)", f"{g(plan.encoder_weights_bytes)} per replica"
            + (" (in vLLM: encoder.placement in_decoder)" if plan.vllm_vision_bytes else "")),
        row("KV cache per token", f"{plan.kv_bytes_per_token / 1024:6.0f} KiB (2 x {d.text_layers} layers x "
            f"{d.text_kv_heads} KV heads x {d.head_dim} x {plan.dtype_bytes} B); blocks of {plan.block_size}"),
        row("KV cache", f"{g(plan.kv_cache_memory_bytes)} = {plan.kv_cache_memory_bytes:,} B ({kv_source}): "
            f"{plan.kv_tokens:,} tokens"),
        row(f"gpu_memory_utilization {plan.gpu_memory_utilization:g}", f"{g(plan.vllm_budget_bytes)} = weights + "
            f"{a.vllm_reserve_bytes / GIB:g} GiB reserve + KV {plan.derived_kv_cache_memory_bytes / GIB:.2f} GiB "
            f"(derived kv_cache_memory_bytes {plan.derived_kv_cache_memory_bytes:,})"),
        row("vLLM process", f"{g(plan.vllm_process_bytes)} = {a.vllm_context_bytes / GIB:g} GiB CUDA context + weights "
            + (f"+ vision tower {plan.vllm_vision_bytes / GIB:.2f} GiB (weights + activations of {plan.vllm_vision_pages} "
               "page(s), its largest encoder step) " if plan.vllm_vision_bytes else "")
            + f"+ reserve + KV; share {plan.decoder_num_gpus:g} = {g(plan.decoder_share_bytes).strip()}"),
        row("vision activations at max_pixels", f"{g(plan.activation_per_page_bytes)} per page "
            f"({plan.patches_per_page:,} patches, {plan.image_tokens_per_page:,} image tokens at "
            f"{plan.page_side}x{plan.page_side}); {g(plan.activation_per_batch_bytes).strip()} per batch "
            f"({plan.encoder_batch_patches:,} patches: max_batch_size {plan.encoder_max_batch_size}, "
            f"max_batch_patches {plan.encoder_max_batch_patches})"),
        row("encoder replica", f"{g(plan.encoder_replica_bytes)} = {a.encoder_context_bytes / GIB:g} GiB CUDA context "
            f"+ weights + batch activations; share {plan.encoder_num_gpus:g} = {g(plan.encoder_share_bytes).strip()}")
        if plan.encoder_replicas else row("encoder replica", "none: encoder.placement in_decoder"),
        row("total" + (f" per card ({plan.cards} cards)" if plan.cards > 1 else ""), f"{g(plan.total_bytes)} = "
            f"{plan.decoder_replicas} vLLM + {plan.encoder_replicas} encoder replica(s) + {a.display_bytes / GIB:g} GiB "
            "display headroom"),
        row("Ray GPU fractions at max replicas", f"{plan.ray_fraction_total:6.2f}     ("
            + ", ".join(f"{stage} {value:g}" for stage, value in plan.ray_gpu_fractions.items() if value) + ")"),
        "  pages in flight (KV-limited, capped by max_num_seqs):",
    ]
    for pages in plan.in_flight:
        lines.append(
            f"    {pages.label:<22} {pages.image_tokens:>6,} image + {pages.output_tokens:>5,} output tokens: "
            f"{pages.sequence_tokens:>6,} tokens, {pages.kv_bytes / MIB:7.1f} MiB of KV -> {pages.pages_by_kv:>4} fit, "
            f"concurrency {pages.concurrency}"
        )
    problems = plan.problems()
    lines.append("  fits: every stage within its share, the card within its size" if not problems else "  PROBLEMS:")
    lines += [f"    - {problem}" for problem in problems]
    return "\n".join(lines)
