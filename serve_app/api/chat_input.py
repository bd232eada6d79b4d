"""Multimodal input of the chat API: the image and the instruction out of OpenAI-style messages.

`image_url` is a base64 data: URL. Only if `image_url.allowed_domains` is configured does the server
fetch http(s) URLs, and then only from those hosts, following redirects only to them (no SSRF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import httpx

from serve_app.config import ImageURLConfig
from serve_app.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.api.openai_schemas import ChatMessage, ImagePart, TextPart

USER_AGENT = "hunyuan-ocr-serve (image_url fetch)"

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<base64>;base64)?,", re.I)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """`data:image/...;base64,...` -> bytes."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "no scheme"
        raise InvalidRequestError(
            f"image_url must be a data: URL (data:image/png;base64,...); {scheme!r} URLs are not fetched.",
            "image_url",
        )
    match = _DATA_URL.match(url)
    if match is None or not match.group("base64"):
        raise InvalidRequestError("image_url is not a base64 data: URL (data:image/png;base64,...).", "image_url")
    payload = url[match.end() :]
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise PayloadTooLargeError(f"The image in image_url is over the limit of {max_bytes} bytes.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("image_url has invalid base64 data.", "image_url") from None


def host_allowed(host: str, allowed_domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == domain.lower() or host.endswith("." + domain.lower()) for domain in allowed_domains)


def check_fetchable(url: httpx.URL, config: ImageURLConfig) -> None:
    """Refuse a URL outside the allow-list before any connection is made."""
    listed = ", ".join(config.allowed_domains)
    if url.scheme not in config.allowed_schemes:
        raise InvalidRequestError(
            f"image_url must be a data: URL or an {'/'.join(config.allowed_schemes)} URL on an allowed host "
            f"({listed}); {url.scheme or 'no scheme'!r} URLs are not fetched.",
            "image_url",
        )
    if url.userinfo or not url.host or not host_allowed(url.host, config.allowed_domains):
        raise InvalidRequestError(
            f"image_url host {url.host!r} is not allowed; send a data: URL or use one of: {listed}.", "image_url"
        )


async def fetch_image_url(
    url: str, config: ImageURLConfig, max_bytes: int, transport: httpx.AsyncBaseTransport | None = None
) -> bytes:
    """GET an allowed URL; every redirect hop is checked against the allow-list; the body is bounded."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidRequestError("image_url is not a valid URL.", "image_url") from None
    check_fetchable(target, config)
    # trust_env=False: no proxy or netrc settings from the server's environment apply to callers' URLs.
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False, headers={"user-agent": USER_AGENT}
    ) as client:
        try:
            return await asyncio.wait_for(_fetch(client, target, config, max_bytes), config.fetch_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            raise InvalidRequestError(
                f"image_url could not be fetched within {config.fetch_timeout_s:g} s.", "image_url"
            ) from None
        except httpx.HTTPError as error:
            raise InvalidRequestError(f"image_url could not be fetched: {type(error).__name__}.", "image_url") from None


async def _fetch(client: httpx.AsyncClient, target: httpx.URL, config: ImageURLConfig, max_bytes: int) -> bytes:
    for _ in range(config.max_redirects + 1):
        async with client.stream("GET", target) as response:
            if response.is_redirect:
                target = target.join(response.headers["location"])
                check_fetchable(target, config)
                continue
            if response.status_code != 200:
                raise InvalidRequestError(
                    f"image_url could not be fetched: the server answered HTTP {response.status_code}.", "image_url"
                )
            too_large = PayloadTooLargeError(f"The image at image_url is over the limit of {max_bytes} bytes.")
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)
    raise InvalidRequestError(f"image_url redirected more than {config.max_redirects} times.", "image_url")


async def load_image(url: str, config: ImageURLConfig, max_bytes: int) -> bytes:
    """The bytes behind an image_url: decoded from a data: URL, or fetched from an allowed host."""
    if url.startswith("data:") or not config.allowed_domains:
        if len(url) > 256 * 1024:  # base64 of a large image: decoded off the event loop
            return await asyncio.to_thread(decode_data_url, url, max_bytes)
        return decode_data_url(url, max_bytes)
    return await fetch_image_url(url, config, max_bytes)


def image_and_instruction(messages: list[ChatMessage]) -> tuple[str, str | None]:
    """The one image's URL in the conversation and the text of the last user message (None: no text)."""
    images: list[ImagePart] = []
    instruction: str | None = None
    for message in messages:
        parts = message.content if isinstance(message.content, list) else []
        images.extend(part for part in parts if isinstance(part, ImagePart))
        if message.role == "user":
            if isinstance(message.content, str):
                texts = [message.content]
            else:
                texts = [part.text for part in parts if isinstance(part, TextPart)]
            text = "\n".join(text for text in texts if text.strip())
            instruction = text or instruction
    if not images:
        raise InvalidRequestError("The messages contain no image: add an image_url part with a data: URL.", "messages")
    if len(images) > 1:
        raise InvalidRequestError("Send one image per request.", "messages")
    return images[0].image_url.url, instruction
