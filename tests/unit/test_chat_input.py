"""The chat API's multimodal input: data: URLs only, one image, the last user text as instruction."""

from __future__ import annotations

import base64

import pytest

from serve_app.api.chat_input import decode_data_url, image_and_instruction
from serve_app.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.api.openai_schemas import ChatCompletionRequest

PNG = b"\x89PNG\r\n\x1a\nfake"
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def messages(*content, system: str | None = None):
    items = [{"role": "system", "content": system}] if system else []
    items.append({"role": "user", "content": list(content)})
    return ChatCompletionRequest(model="m", messages=items).messages


def test_image_and_text_parts():
    url, text = image_and_instruction(
        messages({"type": "image_url", "image_url": {"url": DATA_URL}}, {"type": "text", "text": "Read it."})
    )
    assert url == DATA_URL and text == "Read it."
    assert decode_data_url(url, 1000) == PNG


def test_no_text_means_no_instruction():
    assert image_and_instruction(messages({"type": "image_url", "image_url": {"url": DATA_URL}}))[1] is None


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://169.254.169.254/latest/meta-data", "not fetched"),
        ("https://example.com/a.png", "not fetched"),
        ("file:///etc/passwd", "not fetched"),
        ("data:image/png,rawbytes", "base64"),
        ("data:image/png;base64,@@@notbase64@@@", "invalid base64"),
        ("/etc/passwd", "not fetched"),
    ],
)
def test_only_base64_data_urls_are_accepted(url, message):
    with pytest.raises(InvalidRequestError, match=message):
        decode_data_url(url, 1000)


def test_data_url_over_the_limit():
    with pytest.raises(PayloadTooLargeError):
        decode_data_url("data:image/png;base64," + base64.b64encode(b"x" * 5000).decode(), 1000)


def test_zero_or_two_images_are_refused():
    with pytest.raises(InvalidRequestError, match="no image"):
        image_and_instruction(messages({"type": "text", "text": "hi"}))
    part = {"type": "image_url", "image_url": {"url": DATA_URL}}
    with pytest.raises(InvalidRequestError, match="one image"):
        image_and_instruction(messages(part, part))


# ---------------------------------------------------------------- allow-listed image_url fetching

import asyncio  # noqa: E402

import httpx  # noqa: E402

from serve_app.api.chat_input import fetch_image_url, load_image  # noqa: E402
from serve_app.config import ImageURLConfig  # noqa: E402

ALLOWED = ImageURLConfig(allowed_domains=["images.example.com"])


def serving(routes: dict[str, httpx.Response]):
    """A fake network: answers by URL, and records every URL the fetcher asked for."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.MockTransport(handler), asked


def fetch(url: str, routes: dict, config: ImageURLConfig = ALLOWED, max_bytes: int = 1000):
    transport, asked = serving(routes)
    try:
        return asyncio.run(fetch_image_url(url, config, max_bytes, transport=transport)), asked
    except InvalidRequestError as error:  # PayloadTooLargeError is not one: raised as is
        error.asked = asked
        raise


def test_an_allowed_host_is_fetched():
    body, asked = fetch("https://images.example.com/a.png", {"https://images.example.com/a.png": httpx.Response(200, content=PNG)})
    assert body == PNG and asked == ["https://images.example.com/a.png"]


def test_subdomains_of_an_allowed_domain_are_allowed_lookalikes_are_not():
    url = "https://cdn.images.example.com/a.png"
    assert fetch(url, {url: httpx.Response(200, content=PNG)})[0] == PNG
    for url in ("https://evilimages.example.com/a.png", "https://images.example.com.evil.net/a.png"):
        with pytest.raises(InvalidRequestError, match="not allowed") as caught:
            fetch(url, {})
        assert caught.value.asked == []  # refused before any connection


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://images.example.com/a.png", "'http' URLs are not fetched"),  # https only by default
        ("file:///etc/passwd", "'file' URLs are not fetched"),
        ("https://169.254.169.254/latest/meta-data", "not allowed"),
        ("https://user:pw@images.example.com/a.png", "not allowed"),
    ],
)
def test_urls_outside_the_list_are_refused_without_a_connection(url, message):
    with pytest.raises(InvalidRequestError, match=message) as caught:
        fetch(url, {})
    assert caught.value.asked == []


def test_redirects_are_followed_only_within_the_list():
    start = "https://images.example.com/a.png"
    inside = "https://cdn.images.example.com/b.png"
    routes = {
        start: httpx.Response(302, headers={"location": inside}),
        inside: httpx.Response(200, content=PNG),
    }
    assert fetch(start, routes)[0] == PNG
    routes[start] = httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})
    with pytest.raises(InvalidRequestError, match="not") as caught:
        fetch(start, routes)
    assert caught.value.asked == [start]  # the metadata address was never asked


def test_redirect_loops_and_errors_and_oversize_bodies():
    url = "https://images.example.com/loop"
    with pytest.raises(InvalidRequestError, match="redirected more than 3 times"):
        fetch(url, {url: httpx.Response(302, headers={"location": url})})
    with pytest.raises(InvalidRequestError, match="HTTP 404"):
        fetch("https://images.example.com/missing.png", {})
    big = "https://images.example.com/big.png"
    with pytest.raises(PayloadTooLargeError):
        fetch(big, {big: httpx.Response(200, content=b"x" * 5000)})


def test_without_an_allow_list_only_data_urls_are_read():
    assert asyncio.run(load_image(DATA_URL, ImageURLConfig(), 1000)) == PNG
    with pytest.raises(InvalidRequestError, match="data: URL"):
        asyncio.run(load_image("https://images.example.com/a.png", ImageURLConfig(), 1000))


def test_allow_list_entries_must_be_host_names():
    for bad in ("https://example.com", "example.com/path", "*.example.com", ""):
        with pytest.raises(ValueError, match="host names"):
            ImageURLConfig(allowed_domains=[bad])
