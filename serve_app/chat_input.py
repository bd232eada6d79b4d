"""Multimodal input of the chat API: the image and the instruction out of OpenAI-style messages."""

from __future__ import annotations

import base64
import binascii
import re

from serve_app.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.openai_schemas import ChatMessage, ImagePart, TextPart

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<base64>;base64)?,", re.I)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """`data:image/...;base64,...` -> bytes. Only data: URLs: the server never fetches URLs for a caller."""
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


def image_and_instruction(messages: list[ChatMessage], max_bytes: int) -> tuple[bytes, str | None]:
    """The one image in the conversation and the text of the last user message (None: no text)."""
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
    return decode_data_url(images[0].image_url.url, max_bytes), instruction
