"""Security defaults on a served graph: the API key on every route (the web UI and its API included),
image_url fetching only from allow-listed hosts (no SSRF), and logs without keys or document text."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import render_text_page, to_bytes
from tests.integration.conftest import BASE_URL, ROUTES, SECURE_API_KEY, SECURE_ROUTE

pytestmark = pytest.mark.integration

URL = f"{BASE_URL}{SECURE_ROUTE}"
AUTH = {"Authorization": f"Bearer {SECURE_API_KEY}"}
# Words that appear only in this file's test page: they must come back in the answer, never in a log.
SECRET_LINES = ("ACCOUNT QX7KPLUM", "BALANCE 99123")


def chat_body(url: str) -> dict:
    return {
        "model": "PP-OCRv6-small",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


GOOD_PNG = to_bytes(render_text_page(("HELLO 123",), size=(300, 120)), "PNG")


@pytest.mark.parametrize(
    "method,path,kwargs",
    [
        ("POST", "/ocr", {"content": GOOD_PNG}),
        ("POST", "/v1/chat/completions", {"json": chat_body(data_url(GOOD_PNG))}),
        ("GET", "/v1/models", {}),
        ("GET", "/healthz", {}),
        ("GET", "/docs", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/no/such/route", {}),
        ("GET", "/ui/", {}),
        ("GET", "/ui/config", {}),
        ("GET", "/ui/gradio_api/info", {}),
        ("POST", "/ui/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0, "session_hash": "x"}}),
        ("POST", "/ui/gradio_api/upload", {"files": {"files": ("a.png", GOOD_PNG, "image/png")}}),
    ],
)
def test_every_route_refuses_a_caller_without_the_key(served, method, path, kwargs):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = httpx.request(method, f"{URL}{path}", headers=headers, timeout=60, **kwargs)
        assert response.status_code == 401, (path, headers, response.text[:200])
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and "key" in error["message"].lower()
        assert SECURE_API_KEY not in response.text


def test_with_the_key_the_apis_answer(served):
    page = to_bytes(render_text_page(SECRET_LINES, size=(520, 220)), "JPEG", quality=95)
    response = httpx.post(f"{URL}/ocr", content=page, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["text"].splitlines() == list(SECRET_LINES)
    assert httpx.get(f"{URL}/healthz", headers=AUTH, timeout=60).json()["status"] == "ok"
    chat = httpx.post(f"{URL}/v1/chat/completions", json=chat_body(data_url(page)), headers=AUTH, timeout=120)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"].splitlines() == list(SECRET_LINES)


def test_the_browser_gets_a_password_prompt_for_the_web_ui(served):
    challenge = httpx.get(f"{URL}/ui/", timeout=60)
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic ")
    page = httpx.get(f"{URL}/ui/", auth=("anyone", SECURE_API_KEY), timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower()
    info = httpx.get(f"{URL}/ui/gradio_api/info", auth=("anyone", SECURE_API_KEY), timeout=60)
    assert info.status_code == 200, info.text[:300]


def test_image_url_from_an_allowed_host_is_fetched(served, image_server):
    image_server.asked.clear()
    response = httpx.post(
        f"{URL}/v1/chat/completions", json=chat_body(image_server.url("/receipt.jpg")), headers=AUTH, timeout=120
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"][0]["message"]["content"]) > 50  # a real receipt's text
    assert image_server.asked == ["/receipt.jpg"]


@pytest.mark.parametrize(
    "url,mentions",
    [
        ("http://localhost:{port}/receipt.jpg", "not allowed"),  # same server, host not on the list
        ("http://169.254.169.254/latest/meta-data/", "not allowed"),
        ("file:///etc/passwd", "'file' URLs are not fetched"),
        ("ftp://127.0.0.1:{port}/receipt.jpg", "'ftp' URLs are not fetched"),
    ],
)
def test_image_url_outside_the_allow_list_is_refused_unfetched(served, image_server, url, mentions):
    image_server.asked.clear()
    body = chat_body(url.format(port=image_server.port))
    response = httpx.post(f"{URL}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400, response.text
    assert mentions in response.json()["error"]["message"] and response.json()["error"]["param"] == "image_url"
    assert image_server.asked == []


def test_a_redirect_off_the_allow_list_is_not_followed(served, image_server):
    image_server.asked.clear()
    response = httpx.post(
        f"{URL}/v1/chat/completions", json=chat_body(image_server.url("/redirect-out")), headers=AUTH, timeout=60
    )
    assert response.status_code == 400, response.text
    assert "'localhost' is not allowed" in response.json()["error"]["message"]
    assert image_server.asked == ["/redirect-out"]  # the redirect's target was never asked for


def test_without_an_allow_list_no_url_is_fetched(served, image_server):
    image_server.asked.clear()
    body = {
        "model": "hunyuan-ocr-tiny-random",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_server.url("/receipt.jpg")}}]}],
    }
    response = httpx.post(f"{BASE_URL}{ROUTES['vllm']}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400 and "data: URL" in response.json()["error"]["message"]
    assert image_server.asked == []


def test_logs_hold_neither_the_key_nor_document_text(served):
    # After the requests above (this module runs them first): every log file of this Ray session.
    import ray

    response = httpx.post(
        f"{URL}/ocr", content=to_bytes(render_text_page(SECRET_LINES, size=(520, 220)), "PNG"), headers=AUTH, timeout=120
    )
    assert SECRET_LINES[0] in response.json()["text"]
    failed = httpx.post(f"{URL}/ocr", content=b"not an image", headers=AUTH, timeout=60)
    assert failed.status_code == 400
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert any("secure" in path.name or "OCRIngress" in path.name for path in files), "no serve logs found"
    for path in files:
        content = path.read_bytes()
        for secret in (SECURE_API_KEY, *SECRET_LINES):
            assert secret.encode() not in content, f"{secret!r} found in {path}"
