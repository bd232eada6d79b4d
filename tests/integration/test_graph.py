"""The whole graph on Ray Serve (CPU, tiny checkpoint), over HTTP, for both decoder engines.

The `served` fixture (conftest) deploys one graph per engine for the whole session.
"""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from PIL import Image

from tests.conftest import make_image, to_bytes, with_exif_orientation
from tests.integration.conftest import BASE_URL, IN_DECODER_ROUTE, ROUTES, ROUTES_1_0, graph_config
from tests.reference import reference_generate

pytestmark = pytest.mark.integration

MAX_TOKENS = 24
INSTRUCTION = "提取图中的文字。"


def parity_images() -> dict[str, tuple[bytes, Image.Image]]:
    """Five shapes the preprocessing must handle: tiny, wide, tall, over the pixel budget, EXIF-rotated."""
    images = {
        "tiny": make_image(24, 18, seed=1),
        "wide": make_image(900, 120, seed=2),
        "tall": make_image(150, 1000, seed=3),
        "over_budget": make_image(1600, 1200, seed=4),
    }
    encoded = {name: (to_bytes(image), image) for name, image in images.items()}
    rotated = with_exif_orientation(make_image(300, 200, seed=5), 6)
    encoded["exif_rotated"] = (rotated, Image.open(io.BytesIO(rotated)))
    return encoded


GRAPHS = (
    {f"{engine}@1.5": (route, "1.5") for engine, route in ROUTES.items()}
    | {f"{engine}@1.0": (route, "1.0") for engine, route in ROUTES_1_0.items()}
    | {"vllm-in-decoder@1.5": (IN_DECODER_ROUTE, "1.5")}
)


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_concurrent_http_results_match_transformers_generate_token_for_token(served, checkpoints, graph):
    """Both engines, on both versions' recipes and config layouts, and both encoder placements (the tower in a
    VisionEncoder stage, or in vLLM's engine): the served graph (the official message list, the version's repetition
    penalty) == transformers' own generate, token for token."""
    route, version = GRAPHS[graph]
    engine = graph.split("@")[0].removesuffix("-in-decoder")
    checkpoint = checkpoints[version]
    config = graph_config(checkpoint, engine, version)
    images = parity_images()

    async def send_all():
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=300) as client:
            requests = [
                client.post(
                    f"{route}/ocr",
                    params={"max_tokens": MAX_TOKENS, "prompt": INSTRUCTION, "return_token_ids": "true"},
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                )
                for data, _ in images.values()
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(send_all())
    for (name, (_, image)), response in zip(images.items(), responses):
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        expected_text, expected_ids = reference_generate(
            checkpoint, image, INSTRUCTION, MAX_TOKENS, config.model.min_pixels, config.model.max_pixels,
            config.decoding.repetition_penalty,
        )
        assert body["token_ids"] == expected_ids, name
        # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence (which
        # transformers' decode shows as U+FFFD); the random tiny model emits such byte tokens.
        assert body["text"] in (expected_text, expected_text.rstrip("\ufffd")), name
        assert body["usage"]["completion_tokens"] == len(expected_ids), name
        assert body["text"].strip(), f"{name}: the untied tiny model should produce visible text"
    rotated = responses[-1].json()["image"]
    assert rotated["exif_orientation"] == 6
    assert (rotated["width"], rotated["height"]) == (300, 200)
    assert (rotated["oriented_width"], rotated["oriented_height"]) == (200, 300)
    over_budget = responses[3].json()["image"]
    assert over_budget["model_width"] * over_budget["model_height"] <= config.model.max_pixels


def test_response_reports_model_usage_and_stage_timings(served):
    response = httpx.post(f"{BASE_URL}/vllm/ocr", content=to_bytes(make_image(200, 100)), timeout=120)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "hunyuan-ocr-tiny-random"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["usage"]["prompt_tokens"] > 2  # the image tokens are counted
    timings = body["timings_ms"]
    assert all(timings[stage] > 0 for stage in ("preprocess", "encode", "decode", "total"))
    assert timings["total"] >= timings["decode"]
    assert body["finish_reason"] in ("stop", "length")


def test_multipart_upload_with_form_fields(served):
    image = make_image(240, 160, seed=7)
    raw = httpx.post(f"{BASE_URL}/vllm/ocr", params={"max_tokens": 8}, content=to_bytes(image), timeout=120).json()
    form = httpx.post(
        f"{BASE_URL}/vllm/ocr",
        files={"file": ("page.png", to_bytes(image), "image/png")},
        data={"max_tokens": "8"},
        timeout=120,
    )
    assert form.status_code == 200, form.text
    assert form.json()["text"] == raw["text"]
    assert form.json()["usage"]["completion_tokens"] <= 8


def test_max_tokens_cuts_the_output(served):
    body = httpx.post(f"{BASE_URL}/vllm/ocr", params={"max_tokens": 3}, content=to_bytes(make_image(200, 100)), timeout=120).json()
    assert body["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    "kwargs,status,error_type",
    [
        ({"content": b"this is not an image"}, 400, "invalid_image"),
        ({"content": b""}, 400, "invalid_image"),
        ({"content": to_bytes(make_image(300, 200))[:400]}, 400, "invalid_image"),
        ({"content": to_bytes(make_image(64, 64)), "params": {"max_tokens": 0}}, 400, "invalid_request_error"),
        ({"content": to_bytes(make_image(64, 64)), "params": {"max_tokens": 10**6}}, 400, "invalid_request_error"),
        ({"content": to_bytes(make_image(64, 64)), "params": {"max_tokens": "many"}}, 400, "invalid_request_error"),
        ({"content": to_bytes(make_image(64, 64)), "params": {"prompt": "x" * 5000}}, 400, "invalid_request_error"),
        ({"files": {"other": ("a.txt", b"hello", "text/plain")}}, 400, "invalid_request_error"),
        (
            {"content": to_bytes(make_image(64, 64)), "params": {"prompt": "read <｜hy_place▁holder▁no▁102｜> twice"}},
            400,
            "invalid_request_error",
        ),
    ],
)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(served, kwargs, status, error_type):
    response = httpx.post(f"{BASE_URL}/vllm/ocr", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["code"] == status
    assert error["message"]
    good = httpx.post(f"{BASE_URL}/vllm/ocr", params={"max_tokens": 2}, content=to_bytes(make_image(64, 64)), timeout=120)
    assert good.status_code == 200


def test_body_over_the_limit_is_413(served):
    too_big = b"\xff" * (20 * 1024 * 1024 + 1)
    response = httpx.post(f"{BASE_URL}/vllm/ocr", content=too_big, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


def test_healthz_reports_every_stage_and_the_served_model(served, checkpoints):
    response = httpx.get(f"{BASE_URL}/vllm/healthz", timeout=30)
    assert response.status_code == 200
    model = {"id": "hunyuan-ocr-tiny-random", "source": served, "version": "1.5", "revision": None}  # local: no commit
    assert response.json() == {
        "status": "ok", "stages": {"preprocessor": "ok", "encoder": "ok", "decoder": "ok"}, "model": model
    }
    assert httpx.get(f"{BASE_URL}/vllm-1-0/healthz", timeout=30).json()["model"]["version"] == "1.0"
    (card,) = httpx.get(f"{BASE_URL}/vllm-1-0/v1/models", timeout=30).json()["data"]
    assert (card["root"], card["version"]) == (checkpoints["1.0"], "1.0")


def test_openapi_documents_the_ocr_endpoint(served):
    schema = httpx.get(f"{BASE_URL}/vllm/openapi.json", timeout=30).json()
    assert "/ocr" in schema["paths"]
    assert "OCRResponse" in schema["components"]["schemas"]


def test_the_in_decoder_graph_has_no_encoder_stage_and_answers_as_the_split_graph(served):
    """encoder.placement in_decoder: Preprocessor, Decoder and ingress only; health without an encoder; a 2-page PDF
    and a streamed chat completion give the split graph's text (the tower's time counts in decode)."""
    import base64

    from ray import serve

    from tests.integration.test_documents import text_pdf

    assert set(serve.status().applications["vllm-in-decoder"].deployments) == {"Preprocessor", "Decoder", "OCRIngress"}
    health = httpx.get(f"{BASE_URL}{IN_DECODER_ROUTE}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["stages"] == {"preprocessor": "ok", "decoder": "ok"}

    pdf = text_pdf(["A", "B"])
    split, fused = (
        httpx.post(f"{BASE_URL}{route}/ocr", params={"max_tokens": 8}, content=pdf, timeout=300).json()
        for route in (ROUTES["vllm"], IN_DECODER_ROUTE)
    )
    assert [page["text"] for page in fused["pages"]] == [page["text"] for page in split["pages"]]
    assert [page["page"] for page in fused["pages"]] == [1, 2]
    assert all(page["timings_ms"]["encode"] == 0 and page["timings_ms"]["decode"] > 0 for page in fused["pages"])

    image = "data:image/png;base64," + base64.b64encode(to_bytes(make_image(320, 200, seed=11))).decode()
    body = {
        "model": "hunyuan-ocr-tiny-random", "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
    }
    whole = httpx.post(f"{BASE_URL}{ROUTES['vllm']}/v1/chat/completions", json=body, timeout=120).json()
    with httpx.stream("POST", f"{BASE_URL}{IN_DECODER_ROUTE}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1]]
    assert "".join(deltas) == whole["choices"][0]["message"]["content"] and sum(1 for text in deltas if text) > 1
