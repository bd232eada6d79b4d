"""The whole application's configuration: one pydantic tree that serve config YAML `args` mirror.

Validated from a dict (Ray Serve passes the YAML `args`), an object, or a file. Unknown fields
are errors, so a typo fails at `serve run` with the field's path in the message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

TINY_RANDOM_SOURCE = "builtin:tiny-random"
# The PP-OCR family reads pages at HunyuanOCR 1.0's budget (it sizes rendered PDF pages).
LITE_MIN_PIXELS, LITE_MAX_PIXELS = 512 * 512, 2048 * 2048


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    family: Literal["hunyuan_vl", "pp_ocr"] = Field(
        "hunyuan_vl",
        description="'hunyuan_vl': HunyuanOCR (vision tower -> vLLM/transformers). 'pp_ocr': PP-OCRv6 small "
        "detection -> recognition from the rapidocr wheel, offline on any CPU (tasks text and spotting only).",
    )
    source: str = Field(
        "tencent/HunyuanOCR",
        description=f"Hub id, local checkpoint directory, or '{TINY_RANDOM_SOURCE}' "
        "(a tiny random checkpoint of the same architecture, built offline on first use).",
    )
    version: Literal["1.5", "1.0"] = Field(
        "1.5", description="HunyuanOCR release whose official recipe (serve_app/profiles.py) gives the defaults of "
        "revision, subfolder, the pixel budget, max_tokens, decoding and the repetition stop; fields set here win."
    )
    revision: str | None = Field(
        None, description="Hub branch or commit. Unset: the version's (1.5: main, 1.0: its last commit). A branch is "
        "resolved to a commit once, when the app is built, and every replica loads that commit. Ignored for local paths."
    )
    subfolder: str | None = Field(None, description="Folder of the checkpoint inside the hub repo (e.g. 'v1.0').")
    served_model_name: str = Field("tencent/HunyuanOCR", description="Model id reported by the API.")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="Torch device of the vision encoder.")
    min_pixels: int = Field(512 * 512, gt=0, description="Pixel budget lower bound (default: the version's).")
    max_pixels: int = Field(
        4096 * 4096, gt=0, description="Pixel budget upper bound (default: the version's; 1.5 4096x4096, 1.0 2048x2048)."
    )
    num_threads: int = Field(1, ge=1, description="onnxruntime threads per replica (pp_ocr family).")
    thread_spinning: bool = Field(
        False, description="pp_ocr family: onnxruntime's threads spin-wait for more work after each run (its "
        "default) instead of sleeping. Off, a stage's idle threads leave the cores to the other stages."
    )

    @model_validator(mode="after")
    def _budget_ordered(self) -> ModelConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted request body.")
    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Largest decoded image (width*height); also the decompression-bomb guard."
    )
    max_image_side: int = Field(20_000, gt=0, description="Longest accepted image side in pixels.")
    max_prompt_chars: int = Field(4_000, gt=0, description="Longest accepted instruction.")
    max_pages: int = Field(50, ge=1, description="Most pages (PDF pages or images) in one request.")
    pdf_max_dpi: int = Field(200, ge=36, description="PDF pages render at most at this DPI (and within max_pixels).")
    max_tokens_cap: int = Field(32_768, gt=0, description="Server-side cap on max_tokens (default: the version's).")
    default_max_tokens: int = Field(4_096, gt=0, description="max_tokens when the caller gives none (default: the version's).")
    request_timeout_s: float = Field(
        300.0, gt=0, description="Longest a request may take end to end; past it the pipeline is cancelled and "
        "the caller gets 504. Keep Ray's http_options.request_timeout_s above it as a backstop."
    )

    @model_validator(mode="after")
    def _default_within_cap(self) -> LimitsConfig:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self


class DecodingConfig(_Strict):
    """Sampling settings every request gets (default: the version's official ones). A request may ask for a
    temperature (then top_k and top_p apply); the repetition penalty is the model's and always applies."""

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1, description="-1: no top-k cut.")
    repetition_penalty: float = Field(1.08, gt=0, description="1.5's official 1.08 ('built in, do not change'); 1.0: 1.0.")


class RepetitionGuardConfig(_Strict):
    """The official clients' early stop and final cleanup, on the generated text (characters, not tokens).

    While generating: from `start_chars` on, every `check_every_chars`, the last `window_chars` are checked for a
    tail that is one unit of at most `max_unit_chars` repeated `min_repeats` times (a unit of only whitespace does
    not count); then generation stops. At the end, a text of at least `cleanup_min_chars` whose tail is one unit
    (>= 2 characters) repeated `cleanup_min_repeats` times keeps one copy of it. Legitimately repetitive output
    shorter than start_chars (runs of empty table rows, say) is never stopped."""

    enabled: bool = True
    start_chars: int = Field(4000, ge=1)
    check_every_chars: int = Field(1000, ge=1)
    window_chars: int = Field(8000, ge=2)
    max_unit_chars: int = Field(256, ge=1)
    min_repeats: int = Field(8, ge=2)
    cleanup_min_chars: int = Field(2000, ge=0, description="Default: the version's (1.5: 2000, 1.0: 8000).")
    cleanup_min_repeats: int = Field(10, ge=2)


class AutoscalingConfig(_Strict):
    """Mirrors Ray Serve's autoscaling_config fields that matter per stage."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class StageConfig(_Strict):
    """Ray Serve deployment options of one stage."""

    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count; leave unset to autoscale.")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, le=1)
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests waiting for this stage beyond max_ongoing_requests per replica; past it "
        "callers get 503 + Retry-After at once. -1: unbounded (no load shedding)."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) on the 503 of a shed request.")
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    cpu_nice: int = Field(
        0, ge=0, le=19, description="Run this stage's processes this many nice steps below Ray's other workers (its "
        "children, such as vLLM's engine core, inherit it). On a CPU the compute stages share, this keeps Ray's HTTP "
        "proxy and the ingress prompt: shedding load and health checks are not stuck behind image decoding or decode."
    )
    access_log: bool = Field(
        True, description="Ray Serve's log line per request for this stage. The inner stages' lines repeat what the "
        "ingress's line says; off, they cost no log volume or CPU (about 9% more throughput on 2 cores). Off sets "
        "this deployment's logging_config, which then takes precedence over an application-level one."
    )
    malloc_arena_max: int | None = Field(
        2, ge=1, description="glibc malloc arenas per process (MALLOC_ARENA_MAX; its children inherit it). glibc's "
        "default, 8 per core, lets each of a replica's threads keep freed memory in an arena of its own. None: "
        "glibc's default."
    )
    malloc_mmap_threshold_kib: int | None = Field(
        1024, ge=0, description="Allocations of at least this size are mapped and unmapped apart "
        "(MALLOC_MMAP_THRESHOLD_), so their memory goes back to the OS when freed. glibc's default threshold "
        "rises to 32 MiB as large blocks are freed, after which batches of varying size fragment the heap: RSS "
        "climbed without end under overload (bench/overload.py). None: glibc's default."
    )
    onednn_primitive_cache_capacity: int | None = Field(
        None, ge=1, description="oneDNN's cache of compiled CPU kernels (ONEDNN_PRIMITIVE_CACHE_CAPACITY; oneDNN's "
        "default is 1024). vLLM's CPU matmuls and torch's CPU ops compile one per operand shape, and batches of "
        "varying size make new shapes for a long time: at 1024 the cache grew vLLM's engine core by ~450 MiB under "
        "varied load, at 64 by ~80 MiB, at the same speed. CPU only (no effect on a GPU). None: oneDNN's default."
    )
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0, description="How long a stopping replica (redeploy, downscale, shutdown) keeps serving the "
        "requests it holds. Unset: limits.request_timeout_s, so any request it accepted can finish."
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each replica needs (ray_actor_options.resources), "
        "e.g. {node_role_cpu: 0.01}: replicas go only to nodes started with that resource (`ray start --resources`, "
        "a KubeRay group's rayStartParams), and autoscaling adds them wherever it exists. Empty: any node."
    )
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Ray node labels each replica's node must have (ray_actor_options."
        "label_selector, Ray >= 2.49), e.g. {ocr-role: gpu}: nodes started with `ray start --labels`, or a KubeRay "
        "group's `labels` (KubeRay >= 1.5.1 also scales such groups up). Values take Ray's operators ('!gpu', "
        "'in(a,b)'). Empty: any node."
    )

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> StageConfig:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self

    @model_validator(mode="after")
    def _placement_valid(self) -> StageConfig:
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"resources: {name!r} is not a custom resource; use num_cpus / num_gpus")
            if amount < 0:
                raise ValueError(f"resources: {name!r} must not be negative")
        if self.label_selector:
            from ray._private.label_utils import validate_label_selector  # Ray's own check, as Serve runs it

            problem = validate_label_selector(self.label_selector)
            if problem:
                raise ValueError(f"label_selector: {problem}")
        return self

    @property
    def max_replicas(self) -> int:
        """Replicas at full scale: autoscaling's max_replicas, else num_replicas (default 1)."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.num_replicas or 1

    def apply_cpu_nice(self) -> None:
        """Lower this process's CPU priority by `cpu_nice`: every thread of it, since Linux keeps a nice value
        per thread (os.nice alone would leave Ray's threads and the ones that later start vLLM unchanged)."""
        if self.cpu_nice == 0:
            return
        threads = [int(tid) for tid in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
        for thread in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + self.cpu_nice))
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
            except PermissionError:  # a sandbox that forbids setpriority: run at the priority Ray gave
                return

    def process_env(self) -> dict[str, str]:
        """Read when a process starts (by glibc, oneDNN): they go in the replica's runtime_env, and its children
        (vLLM's engine core) inherit them."""
        env = {}
        if self.malloc_arena_max is not None:
            env["MALLOC_ARENA_MAX"] = str(self.malloc_arena_max)
        if self.malloc_mmap_threshold_kib is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(self.malloc_mmap_threshold_kib * 1024)
        if self.onednn_primitive_cache_capacity is not None:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(self.onednn_primitive_cache_capacity)
        return env

    def deployment_options(self, default_drain_s: float) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`; `default_drain_s` unless graceful_shutdown_timeout_s is set."""
        from ray.serve.config import BackpressureConfig

        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": (
                self.graceful_shutdown_timeout_s if self.graceful_shutdown_timeout_s is not None else default_drain_s
            ),
            # Used when Ray's proxy itself sheds a request for this stage (the ingress): 503 + Retry-After.
            "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=self.retry_after_s),
        }
        if env := self.process_env():
            options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
        if self.resources:
            options["ray_actor_options"]["resources"] = dict(self.resources)
        if self.label_selector:
            options["ray_actor_options"]["label_selector"] = dict(self.label_selector)
        if not self.access_log:
            options["logging_config"] = {"enable_access_log": False}
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class PreprocessorConfig(StageConfig):
    image_threads: int = Field(
        2, ge=1, le=64, description="Threads that resize one large image, in horizontal bands (a model input of 1 MP "
        "or more; Pillow releases the GIL). More cut a big photo's latency on a machine with cores to spare; 1 keeps "
        "each image on one core."
    )


class EncoderConfig(StageConfig):
    placement: Literal["split", "in_decoder"] = Field(
        "split", description="'split': the vision tower runs in VisionEncoder replicas of its own, which batch "
        "images across requests and scale apart from the decoder; the decoder gets embeddings. 'in_decoder': no "
        "VisionEncoder deployment; vLLM runs the tower inside the decoder's engine on the Preprocessor's 8-bit "
        "patches (as `vllm serve` does, without redoing the resize), one process on one GPU share. Same results; "
        "bench/vs_vllm.py measures which is faster where. The encoder's other fields apply to 'split' only."
    )
    max_batch_size: int = Field(8, ge=1, description="Most images per vision tower call.")
    max_batch_patches: int | None = Field(
        None, ge=1, description="Most 16x16 patches per vision tower call (the images' sizes added up), so that a "
        "batch of large pages does not run out of GPU memory; an image larger than this runs alone. None: no cap "
        "(only max_batch_size). A 2048x2048 page is 16384 patches."
    )
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a call that would hold one image waits for more. Images that queued "
        "while the previous call ran go into the next without waiting, so under load batches form anyway; a wait "
        "only delays a lone image (0: none; on the CPU config, 5 ms added ~8 ms to the median time between stages at "
        "concurrency 1)."
    )


class DecoderConfig(StageConfig):
    engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="'vllm' (production: AsyncLLM, continuous batching) or 'transformers' (debug)."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM AsyncEngineArgs fields (checked against vLLM when the app is built).",
    )
    cpu_worker_in_engine_core: bool = Field(
        True, description="vLLM's CPU build only: run the model worker inside vLLM's engine-core process (its UniProc "
        "executor) instead of a process of its own. The engine core busy-waits on that process's results (and the "
        "worker on its next step) for up to 1 s, spinning on a core the other stages need: on 2 cores that was half of "
        "vLLM's CPU per request (bench/stage_cpu.py). Off: vLLM's default MP executor with its OpenMP thread binding. "
        "No effect on GPU."
    )


class IngressConfig(StageConfig):
    num_cpus: float = Field(0.25, ge=0)


class GPUConfig(_Strict):
    """The GPUs the memory plan (serve_app/gpu_plan.py) is checked against when `model.device` is cuda."""

    count: int = Field(
        1, ge=1, description="Cards the GPU stages spread over, on one node or several. The plan and the Ray GPU "
        "fractions are checked per card, each stage's replicas at max scale divided over the cards (rounded up): "
        "with 2, a decoder and an encoder autoscaling to 2 replicas each hold one of each per card."
    )
    memory_gib: float = Field(24.0, gt=0, description="Memory of each card (an RTX 4090D: 24).")


class UIConfig(_Strict):
    enabled: bool = Field(True, description="Serve the web UI (Gradio) from the ingress.")
    concurrency_limit: int = Field(4, ge=1, description="Requests one UI event runs at once.")
    path: str = Field("/ui", pattern=r"^/[A-Za-z0-9_\-/]*[A-Za-z0-9_\-]$", description="Where the UI is mounted.")


class SecurityConfig(_Strict):
    """Optional API key. When a key is configured every route needs it: `Authorization: Bearer <key>`
    (or HTTP Basic with the key as password, which the browser asks for on the web UI)."""

    api_key_env: str | None = Field(
        "OCR_API_KEY", description="Environment variable holding the key (read in the ingress replica); "
        "unset or empty: no key from the environment."
    )
    api_key_file: str | None = Field(
        None, description="File holding the key (first line). If set, it must exist and be non-empty."
    )
    log_payloads: bool = Field(
        False, description="Debug only: log instructions and extracted text. Off: logs never hold document content."
    )


class ImageURLConfig(_Strict):
    """Which image_url values the chat API accepts. Default: data: URLs only; the server fetches nothing."""

    allowed_domains: list[str] = Field(
        default_factory=list,
        description="Hosts whose http(s) URLs are fetched (a listed domain also allows its subdomains). "
        "Redirects are followed only to hosts on this list.",
    )
    allowed_schemes: list[Literal["https", "http"]] = Field(default_factory=lambda: ["https"])
    fetch_timeout_s: float = Field(10.0, gt=0, description="Whole fetch, redirects included.")
    max_redirects: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _plain_hosts(self) -> ImageURLConfig:
        for domain in self.allowed_domains:
            if not domain or any(char in domain for char in "/:@*? ") or domain != domain.strip("."):
                raise ValueError(f"allowed_domains entries are host names like 'images.example.com'; got {domain!r}")
        return self


class OCRAppConfig(_Strict):
    model: ModelConfig = ModelConfig()
    limits: LimitsConfig = LimitsConfig()
    decoding: DecodingConfig = DecodingConfig()
    repetition_guard: RepetitionGuardConfig = RepetitionGuardConfig()
    fields_max_value_chars: int = Field(
        256, ge=1, description="Longest value per key in the fields task (bounds guided JSON strings)."
    )
    preprocessor: PreprocessorConfig = PreprocessorConfig()
    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    ingress: IngressConfig = IngressConfig()
    gpu: GPUConfig = GPUConfig()
    ui: UIConfig = UIConfig()
    security: SecurityConfig = SecurityConfig()
    image_url: ImageURLConfig = ImageURLConfig()

    @model_validator(mode="before")
    @classmethod
    def _version_defaults(cls, data: Any) -> Any:
        """Fill what the YAML leaves unset from the model version's profile (explicit values win)."""
        if not isinstance(data, dict):
            return data
        from serve_app.profiles import HUB_ID, profile_for

        data = dict(data)
        model = data.get("model")
        model_fields = model.model_dump(exclude_unset=True) if isinstance(model, BaseModel) else dict(model or {})
        profile = profile_for(model_fields.get("version", "1.5"))
        model_defaults = {"min_pixels": profile.min_pixels, "max_pixels": profile.max_pixels}
        if model_fields.get("family") == "pp_ocr":
            model_defaults = {"min_pixels": LITE_MIN_PIXELS, "max_pixels": LITE_MAX_PIXELS}  # PDF render size
        elif model_fields.get("source", HUB_ID) == profile.hub_id:
            model_defaults.update(revision=profile.revision, subfolder=profile.subfolder)
        data["model"] = _with_defaults(model, model_defaults)
        data["limits"] = _with_defaults(
            data.get("limits"),
            {"max_tokens_cap": profile.max_tokens_cap, "default_max_tokens": profile.default_max_tokens},
        )
        data["decoding"] = _with_defaults(data.get("decoding"), profile.decoding.model_dump())
        data["repetition_guard"] = _with_defaults(
            data.get("repetition_guard"), {"cleanup_min_chars": profile.cleanup_min_chars}
        )
        return data

    @model_validator(mode="after")
    def _placement_supported(self) -> OCRAppConfig:
        if self.encoder.placement == "in_decoder" and (self.model.family != "hunyuan_vl" or self.decoder.engine != "vllm"):
            raise ValueError(
                "encoder.placement 'in_decoder' needs model.family 'hunyuan_vl' and decoder.engine 'vllm' (vLLM runs "
                "the vision tower); use 'split'"
            )
        return self

    @classmethod
    def from_serve_config(cls, path: str | Path, app_name: str | None = None) -> OCRAppConfig:
        """Read the `args` of an application in a Ray Serve config file."""
        document = yaml.safe_load(Path(path).read_text())
        applications = document.get("applications", [])
        for application in applications:
            if app_name is None or application.get("name") == app_name:
                return cls.model_validate(application.get("args") or {})
        raise ValueError(f"{path}: no application named {app_name!r}")


def _with_defaults(section: Any, defaults: dict[str, Any]) -> Any:
    """A config section (dict, model or None) with `defaults` for the fields it does not set."""
    if isinstance(section, BaseModel):
        unset = {key: value for key, value in defaults.items() if key not in section.model_fields_set}
        return type(section).model_validate({**section.model_dump(exclude_unset=True), **unset})
    return {**defaults, **(section or {})}
