"""Per-stage Prometheus metrics through Ray Serve's metrics API.

Ray adds the `application`, `deployment` and `replica` tags and exports them, prefixed `ray_`, on each
node's metrics endpoint (and the dashboard's Grafana panels). Queue depth and per-replica load come
from Ray Serve's own metrics (`ray_serve_deployment_queued_queries`, ...); vLLM's engine metrics
(`ray_vllm_*`) from the decoder. The README lists them all.

Each stage creates its metrics in its replica's constructor (Ray metrics belong to a process).
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000]
BATCH_SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
TOKENS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def _latency(name: str, description: str, tag_keys: tuple[str, ...] = ()) -> metrics.Histogram:
    return metrics.Histogram(name, description=description, boundaries=LATENCY_MS, tag_keys=tag_keys)


class IngressMetrics:
    def __init__(self):
        self.request_latency_ms = _latency(
            "ocr_request_latency_ms", "Whole request in the ingress, by route and HTTP status.", ("route", "status")
        )
        self.requests = metrics.Counter(
            "ocr_requests_total", description="Requests answered, by route and HTTP status.", tag_keys=("route", "status")
        )
        self.errors = metrics.Counter(
            "ocr_errors_total", description="Error answers by error type (the API's error.type).", tag_keys=("error_type",)
        )
        self.pages = metrics.Counter("ocr_pages_total", description="Pages (images or PDF pages) read.")


class PreprocessorMetrics:
    def __init__(self):
        self.latency_ms = _latency("ocr_preprocess_latency_ms", "Decode, validate, resize and prompt, per page.")
        self.image_pixels = metrics.Histogram(
            "ocr_image_megapixels",
            description="Size of the decoded images as sent (megapixels).",
            boundaries=[0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 16, 24, 50],
        )


class EncoderMetrics:
    def __init__(self):
        self.batch_latency_ms = _latency("ocr_encode_batch_latency_ms", "One vision-encoder call (a whole batch).")
        self.batch_size = metrics.Histogram(
            "ocr_encoder_batch_size", description="Images per vision-encoder call.", boundaries=BATCH_SIZES
        )
        self.image_tokens = metrics.Counter("ocr_image_tokens_total", description="Image embeddings (tokens) produced.")
        self.image_tokens_per_image = metrics.Histogram(
            "ocr_image_tokens", description="Image tokens per image.", boundaries=TOKENS
        )


class DecoderMetrics:
    def __init__(self):
        self.latency_ms = _latency("ocr_decode_latency_ms", "Generation of one page, first to last token.")
        self.time_to_first_token_ms = _latency("ocr_time_to_first_token_ms", "Until the first generated token.")
        self.output_tokens = metrics.Counter("ocr_output_tokens_total", description="Tokens generated.")
        self.prompt_tokens = metrics.Counter("ocr_prompt_tokens_total", description="Prompt tokens (image tokens included).")
        self.finished = metrics.Counter(
            "ocr_generations_total", description="Generations by finish reason.", tag_keys=("finish_reason",)
        )
