"""Per-stage metrics reach Ray's Prometheus endpoint after real requests through the vLLM graph."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from tests.conftest import make_image, to_bytes
from tests.integration.conftest import BASE_URL, HTTP_PORT, LITE_ROUTE, METRICS_PORT, ROUTES

pytestmark = pytest.mark.integration

URL = f"{BASE_URL}{ROUTES['vllm']}"
EXPECTED = (
    # ingress
    'ray_ocr_request_latency_ms_bucket{.*route="/ocr".*status="200"',
    'ray_ocr_requests_total{.*route="/ocr".*status="400"',
    'ray_ocr_errors_total{.*error_type="invalid_image"',
    "ray_ocr_pages_total{",
    # stages
    'ray_ocr_preprocess_latency_ms_bucket{.*deployment="Preprocessor"',
    "ray_ocr_image_megapixels_bucket{",
    'ray_ocr_encoder_batch_size_bucket{.*deployment="VisionEncoder"',
    "ray_ocr_encode_batch_latency_ms_bucket{",
    "ray_ocr_image_tokens_total{",
    'ray_ocr_decode_latency_ms_bucket{.*deployment="Decoder"',
    "ray_ocr_time_to_first_token_ms_bucket{",
    "ray_ocr_output_tokens_total{",
    "ray_ocr_prompt_tokens_total{",
    'ray_ocr_generations_total{.*finish_reason="length"',
    # Ray Serve's own: queue depth and load per deployment
    'ray_serve_deployment_queued_queries{.*deployment="Decoder"',
    "ray_serve_replica_processing_queries{",
    # vLLM's engine metrics, through Ray
    "ray_vllm_num_requests_running{",
    "ray_vllm_generation_tokens_total{",
)


def test_stage_metrics_are_exported(served):
    image = to_bytes(make_image(320, 240, seed=7), "PNG")
    for _ in range(3):
        response = httpx.post(f"{URL}/ocr", params={"max_tokens": 8}, content=image, timeout=120)
        assert response.status_code == 200, response.text
    assert httpx.post(f"{URL}/ocr", content=b"not an image", timeout=60).status_code == 400

    missing = EXPECTED
    deadline = time.monotonic() + 90  # Ray exports on an interval
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).text
        missing = [pattern for pattern in EXPECTED if not re.search(pattern, text)]
        if missing:
            time.sleep(3)
    exported = sorted(set(re.findall(r"^(ray_(?:ocr|vllm)_\w+)", text, re.M)))
    assert not missing, f"not exported: {missing}; ocr/vllm metrics exported: {exported}"
    tokens = [float(value) for value in re.findall(r'^ray_ocr_output_tokens_total\{[^}]*application="vllm"[^}]*\} (\S+)', text, re.M)]
    assert tokens and sum(tokens) >= 3 * 8  # three requests of 8 tokens each, at least


def test_a_client_that_leaves_mid_upload_is_counted_as_such_not_as_our_failure(served):
    """A client that sends half a body and hangs up is status 499 / client_closed_request in the metrics,
    where it was a 500 / internal_error (and an error in the log) before."""
    for path in ("/ocr", "/v1/chat/completions"):
        with socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=30) as connection:
            connection.sendall(
                f"POST {LITE_ROUTE}{path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000000\r\n\r\n".encode() + b"x" * 5000
            )
            time.sleep(2)  # the proxy has handed it to the ingress, which waits for the rest of the body
    expected = [
        r'ray_ocr_requests_total\{[^}]*application="lite"[^}]*route="/ocr"[^}]*status="499"',
        r'ray_ocr_requests_total\{[^}]*application="lite"[^}]*route="/v1/chat/completions"[^}]*status="499"',
        r'ray_ocr_errors_total\{[^}]*application="lite"[^}]*error_type="client_closed_request"',
    ]
    missing, deadline = expected, time.monotonic() + 90
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).text
        missing = [pattern for pattern in expected if not re.search(pattern, text)]
        if missing:
            time.sleep(3)
    assert not missing, f"not exported: {missing}"
