"""The chat API's multimodal input: data: URLs only, one image, the last user text as instruction."""

from __future__ import annotations

import base64

import pytest

from serve_app.chat_input import decode_data_url, image_and_instruction
from serve_app.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.openai_schemas import ChatCompletionRequest

PNG = b"\x89PNG\r\n\x1a\nfake"
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def messages(*content, system: str | None = None):
    items = [{"role": "system", "content": system}] if system else []
    items.append({"role": "user", "content": list(content)})
    return ChatCompletionRequest(model="m", messages=items).messages


def test_image_and_text_parts():
    image, text = image_and_instruction(
        messages({"type": "image_url", "image_url": {"url": DATA_URL}}, {"type": "text", "text": "Read it."}), 1000
    )
    assert image == PNG and text == "Read it."


def test_no_text_means_no_instruction():
    assert image_and_instruction(messages({"type": "image_url", "image_url": {"url": DATA_URL}}), 1000)[1] is None


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
        image_and_instruction(messages({"type": "text", "text": "hi"}), 1000)
    part = {"type": "image_url", "image_url": {"url": DATA_URL}}
    with pytest.raises(InvalidRequestError, match="one image"):
        image_and_instruction(messages(part, part), 1000)
