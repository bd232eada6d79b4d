"""A corpus of malformed and hostile requests against the served graphs, and exotic but valid images.

Every hostile request must get a 4xx in the one JSON error shape, with a message that says what to
fix, and the server must answer a good request with 200 right after it. Exotic but valid images
must be read (200). `/lite` (PP-OCR) takes the cases that are not about the model, `/vllm` (tiny
HunyuanOCR) the tasks, fields, prompts and the chat API. Every request has a bounded timeout, so a
hang fails its case instead of blocking the session.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.config import OCRAppConfig
from tests.conftest import make_image, to_bytes, with_exif_orientation
from tests.integration.conftest import BASE_URL, HTTP_PORT, LITE_ROUTE, ROOT

pytestmark = pytest.mark.integration

VLLM = "/vllm"
LITE = LITE_ROUTE
TIMEOUT = 60  # a hang fails the case
GOOD_TIMEOUT = 120
MAX_BODY = 20 * 1024 * 1024
MODEL = OCRAppConfig.from_serve_config(ROOT / "configs" / "cpu.yaml").model.served_model_name
RESERVED = "<｜hy_place▁holder▁no▁102｜>"  # a special token of HunyuanOCR's tokenizer

GOOD_PNG = to_bytes(make_image(64, 64))
ANY = object()  # "param not checked"


# ------------------------------------------------------------------------------------------ payloads


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, scanlines: bytes, *, depth: int = 8, color: int = 0, level: int = 9) -> bytes:
    """A PNG written by hand: any declared size, any IDAT content."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(scanlines, level)) + png_chunk(b"IEND", b"")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def chat_body(*parts, text: str | None = "提取图中的文字。", **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}} for url in parts]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


def blank_pdf(pages: int) -> bytes:
    page = Image.new("RGB", (200, 100), "white")
    buffer = io.BytesIO()
    page.save(buffer, "PDF", save_all=True, append_images=[page] * (pages - 1), resolution=72)
    return buffer.getvalue()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("page.png", GOOD_PNG)
    return buffer.getvalue()


JPEG = to_bytes(make_image(300, 200), "JPEG", quality=90)
PNG = to_bytes(make_image(300, 200))
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><text x="5" y="30">HI</text></svg>'
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)><p>invoice</p></body></html>"
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x0f" + b"\xff\xfb\x90\x64" + b"\x00" * 400
PDF_1 = blank_pdf(1)


# ------------------------------------------------------------------------------------------ the corpus


@dataclass
class Case:
    name: str
    route: str  # VLLM or LITE
    request: dict  # httpx.request keyword arguments; a callable value is called per run (big bodies)
    status: int
    error_type: str | None = None
    mentions: tuple[str, ...] = ()  # every one appears in the message (case-insensitive)
    param: object = ANY
    path: str = "/ocr"
    method: str = "POST"


def ocr_case(name, route, status, error_type=None, mentions=(), param=ANY, **request) -> Case:
    return Case(name, route, request, status, error_type, tuple(mentions), param)


def chat_case(name, status, body, error_type="invalid_request_error", mentions=(), param=ANY, route=VLLM) -> Case:
    request = {"json": body} if not isinstance(body, (bytes, str)) else {
        "content": body, "headers": {"Content-Type": "application/json"}}
    return Case(name, route, request, status, error_type, tuple(mentions), param, path="/v1/chat/completions")


def over_limit_chunks():
    chunk = b"\xff" * (1024 * 1024)
    for _ in range(21):
        yield chunk


CASES = [
    # -------------------------------------------------------------- bodies that are not a usable image
    ocr_case("empty_body", LITE, 400, "invalid_image", ["empty"], content=b""),
    ocr_case("not_an_image", LITE, 400, "invalid_image", ["not an image"], content=b"hello, this is not an image"),
    ocr_case("truncated_jpeg", LITE, 400, "invalid_image", ["truncated"], content=JPEG[: len(JPEG) // 2]),
    ocr_case("truncated_jpeg_header_only", LITE, 400, "invalid_image", ["truncated"], content=JPEG[:40]),
    ocr_case("truncated_png", LITE, 400, "invalid_image", ["truncated"], content=PNG[: len(PNG) // 2]),
    ocr_case("png_declares_30000x30000", LITE, 413, "payload_too_large", ["30000x30000", "20000"],
             content=raw_png(30000, 30000, b"\x00" * 30001)),
    ocr_case("png_bomb_declares_100M_pixels", LITE, 413, "payload_too_large", ["pixels", "limit"],
             content=raw_png(10000, 10000, b"\x00" * (10001 * 100))),
    ocr_case("png_declares_zero_width", LITE, 400, "invalid_image", ["image"], content=raw_png(0, 10, b"")),
    ocr_case("extreme_aspect_1x20000", LITE, 400, "invalid_image", ["aspect", "1x20000"],
             content=raw_png(1, 20000, b"\x00\xff" * 20000)),
    ocr_case("text_plain_body", LITE, 400, "invalid_image", ["image"],
             content=b"Please read this invoice", headers={"Content-Type": "text/plain"}),
    ocr_case("json_body_on_ocr", LITE, 400, "invalid_image", ["image"],
             content=b'{"image": "' + base64.b64encode(GOOD_PNG) + b'"}', headers={"Content-Type": "application/json"}),
    ocr_case("body_over_limit", LITE, 413, "payload_too_large", ["limit", str(MAX_BODY)],
             content=lambda: b"\xff" * (MAX_BODY + 1)),
    ocr_case("chunked_body_over_limit", LITE, 413, "payload_too_large", ["limit"], content=over_limit_chunks),
    ocr_case("svg", LITE, 400, "invalid_image", ["not an image"], content=SVG, headers={"Content-Type": "image/svg+xml"}),
    ocr_case("html_page", LITE, 400, "invalid_image", ["not an image"], content=HTML, headers={"Content-Type": "text/html"}),
    ocr_case("mp3_header", LITE, 400, "invalid_image", ["not an image"], content=MP3, headers={"Content-Type": "audio/mpeg"}),
    ocr_case("zip_archive", LITE, 400, "invalid_image", ["not an image"], content=zip_archive()),
    # -------------------------------------------------------------- parameters of /ocr
    ocr_case("unknown_task", LITE, 400, "invalid_request_error", ["bogus", "text"], param="task",
             content=GOOD_PNG, params={"task": "bogus"}),
    ocr_case("vl_task_on_lite", LITE, 400, "invalid_request_error", ["table"], param="task",
             content=GOOD_PNG, params={"task": "table"}),
    ocr_case("unknown_lang", VLLM, 400, "invalid_request_error", ["lang", "fr"], param="lang",
             content=GOOD_PNG, params={"lang": "fr"}),
    ocr_case("fields_without_keys", VLLM, 400, "invalid_request_error", ["fields"], param="fields",
             content=GOOD_PNG, params={"task": "fields"}),
    ocr_case("too_many_fields", VLLM, 400, "invalid_request_error", ["64", "fields"], param="fields",
             content=GOOD_PNG, params={"task": "fields", "fields": ",".join(f"key{i}" for i in range(65))}),
    ocr_case("field_name_too_long", VLLM, 400, "invalid_request_error", ["100"], param="fields",
             content=GOOD_PNG, params={"task": "fields", "fields": "k" * 101}),
    ocr_case("fields_bad_json_list", VLLM, 400, "invalid_request_error", ["JSON"], param="fields",
             content=GOOD_PNG, params={"task": "fields", "fields": "[not json"}),
    ocr_case("target_language_too_long", VLLM, 400, "invalid_request_error", ["target_language", "40"],
             param="target_language", content=GOOD_PNG, params={"task": "translate", "target_language": "x" * 41}),
    ocr_case("max_tokens_zero", VLLM, 400, "invalid_request_error", ["max_tokens"], param="max_tokens",
             content=GOOD_PNG, params={"max_tokens": 0}),
    ocr_case("max_tokens_negative", VLLM, 400, "invalid_request_error", ["max_tokens"], param="max_tokens",
             content=GOOD_PNG, params={"max_tokens": -5}),
    ocr_case("max_tokens_huge", VLLM, 400, "invalid_request_error", ["max_tokens", "1024"], param="max_tokens",
             content=GOOD_PNG, params={"max_tokens": 10**12}),
    ocr_case("max_tokens_not_integer", VLLM, 400, "invalid_request_error", ["max_tokens", "integer"],
             param="max_tokens", content=GOOD_PNG, params={"max_tokens": "many"}),
    ocr_case("max_tokens_fraction", VLLM, 400, "invalid_request_error", ["max_tokens"], param="max_tokens",
             content=GOOD_PNG, params={"max_tokens": "1.5"}),
    ocr_case("max_tokens_5000_digits", VLLM, 400, "invalid_request_error", ["max_tokens"], param="max_tokens",
             content=GOOD_PNG, params={"max_tokens": "9" * 5000}),
    ocr_case("return_token_ids_not_boolean", VLLM, 400, "invalid_request_error", ["return_token_ids"],
             param="return_token_ids", content=GOOD_PNG, params={"return_token_ids": "maybe"}),
    ocr_case("prompt_too_long", VLLM, 400, "invalid_request_error", ["prompt", "4000"], param="prompt",
             content=GOOD_PNG, params={"prompt": "x" * 4001}),
    ocr_case("reserved_token_in_prompt", VLLM, 400, "invalid_request_error", ["reserved"], param="prompt",
             content=GOOD_PNG, params={"prompt": f"read {RESERVED} twice"}),
    ocr_case("free_prompt_on_lite", LITE, 400, "invalid_request_error", ["instruction"], param="prompt",
             content=GOOD_PNG, params={"prompt": "read it"}),
    # -------------------------------------------------------------- multipart forms
    ocr_case("multipart_without_file", LITE, 400, "invalid_request_error", ["file"], param="file",
             files={"other": ("a.txt", b"hello", "text/plain")}),
    ocr_case("multipart_file_field_is_text", LITE, 400, "invalid_request_error", ["file"], param="file",
             files={"file": (None, "this is not a file")}),
    # A form cut before its closing boundary: the client did send `file`, so "put it in `file`" misleads.
    ocr_case("multipart_truncated", LITE, 400, "invalid_request_error", ["multipart", "parsed"],
             content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nabc",
             headers={"Content-Type": "multipart/form-data; boundary=xyz"}),
    ocr_case("multipart_bad_image", LITE, 400, "invalid_image", ["not an image"],
             files={"file": ("a.png", b"not really a png", "image/png")}),
    ocr_case("multipart_max_tokens_not_integer", VLLM, 400, "invalid_request_error", ["max_tokens"],
             param="max_tokens", files={"file": ("a.png", GOOD_PNG, "image/png")}, data={"max_tokens": "lots"}),
    ocr_case("multipart_max_tokens_superscript_digit", VLLM, 400, "invalid_request_error", ["max_tokens"],
             param="max_tokens", files={"file": ("a.png", GOOD_PNG, "image/png")}, data={"max_tokens": "²"}),
    ocr_case("multipart_max_tokens_double_minus", VLLM, 400, "invalid_request_error", ["max_tokens"],
             param="max_tokens", files={"file": ("a.png", GOOD_PNG, "image/png")}, data={"max_tokens": "--5"}),
    ocr_case("multipart_max_tokens_5000_digits", VLLM, 400, "invalid_request_error", ["max_tokens"],
             param="max_tokens", files={"file": ("a.png", GOOD_PNG, "image/png")}, data={"max_tokens": "9" * 5000}),
    ocr_case("multipart_too_many_fields", LITE, 400, "invalid_request_error", ["fields"],
             files={"file": ("a.png", GOOD_PNG, "image/png")}, data={f"x{index}": "1" for index in range(20)}),
    ocr_case("multipart_more_files_than_pages", LITE, 413, "payload_too_large", ["50"],
             files=[("file", (f"{index}.png", GOOD_PNG, "image/png")) for index in range(51)]),
    # -------------------------------------------------------------- PDFs
    ocr_case("corrupt_pdf", LITE, 400, "invalid_document", ["PDF"],
             content=b"%PDF-1.7\n" + b"\x00broken" * 50, headers={"Content-Type": "application/pdf"}),
    ocr_case("png_sent_as_pdf", LITE, 400, "invalid_document", ["PDF"],
             content=GOOD_PNG, headers={"Content-Type": "application/pdf"}),
    ocr_case("pdf_page_out_of_range", LITE, 400, "invalid_request_error", ["pages", "last page"], param="pages",
             content=PDF_1, params={"pages": "2"}),
    ocr_case("pdf_page_zero", LITE, 400, "invalid_request_error", ["pages"], param="pages",
             content=PDF_1, params={"pages": "0"}),
    ocr_case("pdf_pages_malformed", LITE, 400, "invalid_request_error", ["pages", "1-2-3"], param="pages",
             content=PDF_1, params={"pages": "1-2-3"}),
    ocr_case("pdf_pages_not_numbers", LITE, 400, "invalid_request_error", ["pages"], param="pages",
             content=PDF_1, params={"pages": "first"}),
    ocr_case("pdf_pages_superscript_digit", LITE, 400, "invalid_request_error", ["pages"], param="pages",
             content=PDF_1, params={"pages": "²"}),
    ocr_case("pdf_over_page_limit", LITE, 413, "payload_too_large", ["50 pages"], content=blank_pdf(51)),
    # -------------------------------------------------------------- other methods and paths, same error shape
    Case("wrong_method_on_ocr", LITE, {}, 405, None, (), method="GET"),
    Case("unknown_path", LITE, {"content": GOOD_PNG}, 404, None, (), path="/v1/completions"),
    # -------------------------------------------------------------- the chat API
    chat_case("chat_invalid_json", 400, b'{"model": "x", "messages": [', mentions=["JSON"], param=None),
    chat_case("chat_body_is_a_list", 400, b"[1, 2, 3]", mentions=["object"], param=None),
    chat_case("chat_missing_model", 400, {"messages": chat_body(data_url(GOOD_PNG))["messages"]},
              mentions=["model"], param="model"),
    chat_case("chat_empty_messages", 400, {"model": MODEL, "messages": []}, mentions=["messages"], param="messages"),
    chat_case("chat_wrong_model", 404, {**chat_body(data_url(GOOD_PNG)), "model": "gpt-4o"}, "not_found_error",
              ["gpt-4o", MODEL], param="model"),
    chat_case("chat_unknown_role", 400, {"model": MODEL, "messages": [
        {"role": "hacker", "content": [{"type": "image_url", "image_url": {"url": data_url(GOOD_PNG)}}]}]},
        mentions=["role"]),
    chat_case("chat_no_image", 400, {"model": MODEL, "messages": [{"role": "user", "content": "read the image"}]},
              mentions=["no image", "data:"], param="messages"),
    chat_case("chat_two_images", 400, chat_body(data_url(GOOD_PNG), data_url(GOOD_PNG)), mentions=["one image"],
              param="messages"),
    chat_case("chat_invalid_base64", 400, chat_body("data:image/png;base64,@@@not-base64@@@"),
              mentions=["base64"], param="image_url"),
    chat_case("chat_data_url_without_base64", 400, chat_body("data:image/png,rawbytes"), mentions=["base64"],
              param="image_url"),
    chat_case("chat_data_url_malformed", 400, chat_body("data:;;;,"), mentions=["data:"], param="image_url"),
    chat_case("chat_http_url", 400, chat_body("http://169.254.169.254/latest/meta-data/"), mentions=["data:", "http"],
              param="image_url"),
    chat_case("chat_https_url", 400, chat_body("https://example.com/receipt.png"), mentions=["data:", "https"],
              param="image_url"),
    chat_case("chat_file_url", 400, chat_body("file:///etc/passwd"), mentions=["data:", "file"], param="image_url"),
    chat_case("chat_svg_data_url", 400, chat_body(data_url(SVG, "image/svg+xml")), "invalid_image", ["not an image"]),
    chat_case("chat_image_part_without_url", 400, {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"uri": data_url(GOOD_PNG)}}]}]}, mentions=["url"]),
    chat_case("chat_max_tokens_negative", 400, chat_body(data_url(GOOD_PNG), max_tokens=-1), mentions=["max_tokens"],
              param="max_tokens"),
    chat_case("chat_max_tokens_zero", 400, chat_body(data_url(GOOD_PNG), max_tokens=0), mentions=["max_tokens"],
              param="max_tokens"),
    chat_case("chat_max_completion_tokens_zero", 400, chat_body(data_url(GOOD_PNG), max_completion_tokens=0),
              mentions=["tokens"]),
    chat_case("chat_max_tokens_huge", 400, chat_body(data_url(GOOD_PNG), max_tokens=10**9), mentions=["max_tokens"],
              param="max_tokens"),
    chat_case("chat_max_tokens_not_integer", 400, chat_body(data_url(GOOD_PNG), max_tokens="many"),
              mentions=["max_tokens", "integer"], param="max_tokens"),
    chat_case("chat_max_tokens_fraction", 400, chat_body(data_url(GOOD_PNG), max_tokens=2.5),
              mentions=["max_tokens"], param="max_tokens"),
    chat_case("chat_temperature_out_of_range", 400, chat_body(data_url(GOOD_PNG), temperature=5),
              mentions=["temperature"], param="temperature"),
    chat_case("chat_prompt_too_long", 400, chat_body(data_url(GOOD_PNG), text="y" * 4001), mentions=["prompt", "4000"],
              param="prompt"),
    chat_case("chat_reserved_token", 400, chat_body(data_url(GOOD_PNG), text=f"{RESERVED} hello"),
              mentions=["reserved"], param="prompt"),
    chat_case("chat_unknown_task", 400, chat_body(data_url(GOOD_PNG), task="summarize"), mentions=["summarize"],
              param="task"),
    chat_case("chat_fields_missing", 400, chat_body(data_url(GOOD_PNG), text=None, task="fields"),
              mentions=["fields"], param="fields"),
    chat_case("chat_fields_not_a_list", 400, chat_body(data_url(GOOD_PNG), task="fields", fields="a,b"),
              mentions=["fields"], param="fields"),
    chat_case("chat_too_many_fields", 400, chat_body(data_url(GOOD_PNG), text=None, task="fields",
                                                     fields=[f"k{i}" for i in range(65)]), mentions=["64"],
              param="fields"),
    chat_case("chat_unknown_lang", 400, chat_body(data_url(GOOD_PNG), lang="klingon"), mentions=["lang"], param="lang"),
    chat_case("chat_target_language_too_long", 400,
              chat_body(data_url(GOOD_PNG), task="translate", text=None, target_language="z" * 500),
              mentions=["target_language"], param="target_language"),
    chat_case("chat_stream_bad_image", 400, chat_body(data_url(b"definitely not an image"), stream=True),
              "invalid_image", ["not an image"]),
    chat_case("chat_stream_truncated_png", 400, chat_body(data_url(PNG[: len(PNG) // 3]), stream=True),
              "invalid_image", ["truncated"]),
    chat_case("chat_lite_bad_image", 400, {**chat_body(data_url(MP3, "audio/mpeg")), "model": "PP-OCRv6-small"},
              "invalid_image", ["not an image"], route=LITE),
]


def good_request(route: str) -> httpx.Response:
    params = {"max_tokens": 2} if route == VLLM else {}
    return httpx.post(f"{BASE_URL}{route}/ocr", params=params, content=GOOD_PNG, timeout=GOOD_TIMEOUT)


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_gets_a_helpful_4xx_and_the_server_keeps_serving(served, case: Case):
    # Big or one-shot bodies are built per run: a callable stands for its result (a generator: chunked).
    request = {key: (value() if callable(value) else value) for key, value in case.request.items()}
    try:
        response = httpx.request(case.method, f"{BASE_URL}{case.route}{case.path}", timeout=TIMEOUT, **request)
    except httpx.TimeoutException:
        pytest.fail(f"{case.name}: no answer within {TIMEOUT} s")

    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:500]}"
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert "error" in body, f"{case.name}: not the API's error shape: {body}"
    error = body["error"]
    assert error["code"] == case.status
    if case.error_type is not None:
        assert error["type"] == case.error_type, error
    if case.param is not ANY:
        assert error["param"] == case.param, error
    message = error["message"]
    print(f"{case.name}: {response.status_code} {error['type']} param={error['param']!r} {message!r}")
    assert isinstance(message, str) and message.strip(), error
    assert not message.startswith(("None", "Internal error")), f"{case.name}: unhelpful message {message!r}"
    assert not message.split(":")[0].strip().isdigit(), f"{case.name}: a bare position is no parameter: {message!r}"
    assert not re.search(r"\b[45]\d\d: ", message), f"{case.name}: an internal status prefix in {message!r}"
    for word in case.mentions:
        assert word.lower() in message.lower(), f"{case.name}: {message!r} should mention {word!r}"

    good = good_request(case.route)
    assert good.status_code == 200, f"after {case.name}: {good.status_code} {good.text[:300]}"


def raw_post(path: str, declared_length: int, sent: bytes, timeout: float = 20) -> tuple[int, dict] | None:
    """POST over a bare socket that declares `declared_length` body bytes but sends only `sent`:
    (status, JSON body), or None when no answer came within `timeout` (the server waits for the body)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared_length}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=timeout) as connection:
        connection.sendall(head + sent)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            return None
    if not received:
        return None
    header, _, body = received.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    body = body.strip()
    if b"\r\n" in body:  # chunked transfer encoding: the JSON is the first chunk
        body = body.split(b"\r\n")[1]
    return status, json.loads(body)


@pytest.mark.parametrize("route,path", [(LITE, "/ocr"), (VLLM, "/v1/chat/completions")], ids=["ocr", "chat"])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(served, route, path):
    """A client that announces 1 GiB gets its 413 from the headers: the server neither waits for
    nor buffers a body it will refuse (both APIs)."""
    answer = raw_post(f"{route}{path}", 1024**3, b'{"model": "')
    assert answer is not None, f"{path}: no answer while the announced 1 GiB body was not sent"
    status, body = answer
    assert status == 413, body
    assert body["error"]["type"] == "payload_too_large" and "limit" in body["error"]["message"]
    assert good_request(route).status_code == 200


# ------------------------------------------------------------------------------------------ exotic but valid


def png16_rgb(width: int, height: int) -> bytes:
    """48-bit RGB PNG (Pillow cannot write one): a dark-to-light ramp."""
    ramp = np.linspace(0, 65535, width, dtype=np.uint16)
    row = np.stack([ramp, ramp[::-1], ramp], axis=-1).astype(">u2").tobytes()
    return raw_png(width, height, b"".join(b"\x00" + row for _ in range(height)), depth=16, color=2)


def png16_gray(width: int, height: int) -> bytes:
    array = (np.asarray(make_image(width, height).convert("L"), dtype=np.uint16) * 257).astype("<u2")
    return to_bytes(Image.frombytes("I;16", (width, height), array.tobytes()), "PNG")


def palette_with_transparency() -> bytes:
    image = make_image(120, 80).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return to_bytes(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    image = make_image(120, 80).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((120, 80)))
    return to_bytes(image, "PNG")


def animated(fmt: str) -> bytes:
    frames = [make_image(120, 80, seed=seed) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


# name -> (route, bytes, stored size, oriented size)
EXOTIC = {
    "cmyk_jpeg": (LITE, lambda: to_bytes(make_image(160, 100).convert("CMYK"), "JPEG"), (160, 100), (160, 100)),
    "png_16bit_gray": (LITE, lambda: png16_gray(160, 100), (160, 100), (160, 100)),
    "png_16bit_rgb": (LITE, lambda: png16_rgb(160, 100), (160, 100), (160, 100)),
    "palette_png_with_transparency": (LITE, palette_with_transparency, (120, 80), (120, 80)),
    "rgba_png": (LITE, rgba_png, (120, 80), (120, 80)),
    "grayscale_jpeg": (LITE, lambda: to_bytes(make_image(160, 100).convert("L"), "JPEG"), (160, 100), (160, 100)),
    "one_bit_png": (LITE, lambda: to_bytes(make_image(160, 100).convert("1"), "PNG"), (160, 100), (160, 100)),
    "animated_gif": (LITE, lambda: animated("GIF"), (120, 80), (120, 80)),
    "animated_webp": (LITE, lambda: animated("WEBP"), (120, 80), (120, 80)),
    "exif_rotated_jpeg": (LITE, lambda: with_exif_orientation(make_image(300, 200), 6), (300, 200), (200, 300)),
    "tiff_cmyk": (LITE, lambda: to_bytes(make_image(160, 100).convert("CMYK"), "TIFF"), (160, 100), (160, 100)),
    "one_pixel_lite": (LITE, lambda: to_bytes(Image.new("RGB", (1, 1), "white")), (1, 1), (1, 1)),
    "one_pixel_vllm": (VLLM, lambda: to_bytes(Image.new("RGB", (1, 1), "white")), (1, 1), (1, 1)),
    "aspect_200_to_1_vllm": (VLLM, lambda: to_bytes(make_image(2000, 10)), (2000, 10), (2000, 10)),
    "aspect_200_to_1_lite": (LITE, lambda: to_bytes(make_image(2000, 10)), (2000, 10), (2000, 10)),
    # 200 MiB of zeros behind a 100x100 header: Pillow stops inflating once the image is full.
    "png_idat_bomb_small_header": (LITE, lambda: raw_png(100, 100, b"\x00" * (200 * 1024 * 1024), level=9),
                                   (100, 100), (100, 100)),
    # Tall and narrow: PP-OCR's detector scales the short side up to 736 px, so this must not become a
    # 736 x 138,000 px detection (> 7.7 GB and ~2 min of CPU for a 1 KB request).
    "aspect_1_to_200_lite": (LITE, lambda: to_bytes(make_image(10, 2000)), (10, 2000), (10, 2000)),
}
@pytest.mark.parametrize("name", list(EXOTIC))
def test_exotic_but_valid_images_are_read(served, name):
    route, make, stored, oriented = EXOTIC[name]
    params = {"max_tokens": 2} if route == VLLM else {}
    response = httpx.post(f"{BASE_URL}{route}/ocr", params=params, content=make(), timeout=TIMEOUT)
    assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:500]}"
    image = response.json()["image"]
    assert (image["width"], image["height"]) == stored
    assert (image["oriented_width"], image["oriented_height"]) == oriented


def test_exotic_image_over_the_chat_api(served):
    """A CMYK JPEG as a data: URL, streamed: the stream opens (200) and ends with [DONE]."""
    body = chat_body(data_url(to_bytes(make_image(160, 100).convert("CMYK"), "JPEG"), "image/jpeg"), stream=True)
    with httpx.stream("POST", f"{BASE_URL}{VLLM}/v1/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def test_refused_inputs_leave_one_line_each_in_the_stage_logs(served):
    """After the corpus above: the preprocessors' logs say a request was refused in one line, with no
    traceback (Ray Serve logs one of ~40 lines for every exception a stage raises)."""
    import ray

    response = httpx.post(f"{BASE_URL}{VLLM}/ocr", content=b"not an image", timeout=TIMEOUT)
    assert response.status_code == 400
    serve_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    text = "\n".join(path.read_text(errors="replace") for path in serve_logs.glob("replica_*_Preprocessor_*.log"))
    assert "Request refused with 400 invalid_image" in text
    assert "Traceback" not in text
