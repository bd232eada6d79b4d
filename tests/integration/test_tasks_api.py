"""Every task over both APIs on the served graph (tiny checkpoint, CPU), the official instruction
reaching the decoder, guided JSON for fields, the repetition guard, and the OpenAI SDK as a client."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from serve_app.profiles import PROFILES
from serve_app.model.tasks import build_task_request
from serve_app.results.repetition import has_tail_repetition
from tests.conftest import make_image, to_bytes
from tests.integration.conftest import BASE_URL, ROUTES, ROUTES_1_0

pytestmark = pytest.mark.integration

IMAGE = to_bytes(make_image(320, 200, seed=11))
DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
MODEL = "hunyuan-ocr-tiny-random"
FIELD_KEYS = ["company", "date", "total"]


def task_params(task: str) -> dict:
    return {"fields": ",".join(FIELD_KEYS)} if task == "fields" else {}


def ocr(route: str = "/vllm", **params) -> httpx.Response:
    return httpx.post(f"{BASE_URL}{route}/ocr", params=params, content=IMAGE, timeout=180)


@pytest.fixture(scope="module")
def tokenizer(served):
    return AutoTokenizer.from_pretrained(served)


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{BASE_URL}/vllm/v1", api_key="unused", max_retries=0, timeout=180)


# Every task of each version, in each language the version publishes (1.5: Chinese only).
TASK_CASES = [(ROUTES["vllm"], "1.5", task, "zh") for task in PROFILES["1.5"].tasks] + [
    (ROUTES_1_0["vllm"], "1.0", task, lang) for task in PROFILES["1.0"].tasks for lang in ("zh", "en")
]


@pytest.mark.parametrize("route,version,task,lang", TASK_CASES)
def test_each_task_over_ocr_reaches_the_decoder_with_its_official_instruction(served, tokenizer, route, version, task, lang):
    max_tokens = 256 if task == "fields" else 48  # room for the JSON of three bounded values
    response = ocr(route, task=task, lang=lang, max_tokens=max_tokens, return_token_ids="true", **task_params(task))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == task
    prompt = tokenizer.decode(body["prompt_token_ids"])
    request = build_task_request(task, lang, FIELD_KEYS if task == "fields" else None, version=version)
    expected = request.instruction
    assert all(warning in body["warnings"] for warning in request.warnings)  # 1.5's fields/subtitles: not official
    # The instruction follows the image span, then the assistant turn starts.
    assert prompt.split(tokenizer.convert_ids_to_tokens(body["prompt_token_ids"][-1]))[0].endswith(expected)
    if task in ("spotting", "spotting_json"):
        assert isinstance(body["boxes"], list)
    if task in ("layout", "layout_parse"):
        assert isinstance(body["regions"], list)
    if task == "fields":
        assert json.loads(body["text"]).keys() == set(FIELD_KEYS)
        assert set(body["fields"]) == set(FIELD_KEYS)


def test_fields_is_valid_json_with_exactly_the_keys_despite_random_weights(served):
    for keys in (["name"], ["invoice_no", "seller", "buyer", "amount", "tax"], ["公司", "日期"]):
        body = ocr(task="fields", fields=",".join(keys), max_tokens=512).json()
        parsed = json.loads(body["text"])
        assert list(parsed) == keys
        assert all(isinstance(value, str) for value in parsed.values())
        assert body["fields"] == parsed


def test_fields_on_the_transformers_engine_reports_invalid_json_clearly(served):
    response = ocr("/transformers", task="fields", fields="company,total", max_tokens=24)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "model_output_error"
    assert "JSON" in error["message"]


def test_repetition_guard_stops_a_looping_generation(served):
    # The random tiny model falls into a loop; the official early stop (cpu.yaml: checked from 200 characters,
    # every 50) stops it well before max_tokens, and the final cleanup keeps one copy of the loop.
    body = ocr(max_tokens=400).json()
    assert body["finish_reason"] == "repetition"
    assert body["usage"]["completion_tokens"] < 400
    assert any("repeating" in warning for warning in body["warnings"])
    assert "A repeated tail was removed from the text." in body["warnings"]
    assert not has_tail_repetition(body["text"])  # the text no longer ends in a loop


def test_unknown_task_and_missing_fields_are_4xx(served):
    assert ocr(task="poetry").json()["error"]["param"] == "task"
    missing = ocr(task="fields")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "fields"


def test_task_in_a_multipart_form(served):
    response = httpx.post(
        f"{BASE_URL}/vllm/ocr",
        files={"file": ("page.png", IMAGE, "image/png")},
        data={"task": "fields", "fields": "company,total", "max_tokens": "256"},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    assert list(response.json()["fields"]) == ["company", "total"]


def image_message(text: str | None = None) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": DATA_URL}}]
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def test_openai_sdk_lists_the_model(client):
    assert [model.id for model in client.models.list()] == [MODEL]


def test_openai_sdk_completion_matches_the_ocr_endpoint(served, client):
    completion = client.chat.completions.create(model=MODEL, messages=image_message("提取图中的文字。"), max_tokens=24)
    reference = ocr(max_tokens=24).json()
    assert completion.choices[0].message.content == reference["text"]
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == reference["usage"]["completion_tokens"]


def test_openai_sdk_stream_concatenates_to_the_completion(served, client):
    kwargs = {"model": MODEL, "messages": image_message(), "max_tokens": 24}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) > 1  # really streamed
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("task", list(PROFILES["1.5"].tasks))
def test_each_task_over_the_chat_api(served, client, task):
    extra = {"task": task, **({"fields": FIELD_KEYS} if task == "fields" else {})}
    completion = client.chat.completions.create(model=MODEL, messages=image_message(), max_tokens=200, extra_body=extra)
    content = completion.choices[0].message.content
    if task == "fields":
        assert json.loads(content).keys() == set(FIELD_KEYS)
    else:
        assert content == ocr(task=task, max_tokens=200).json()["text"]


def test_openai_errors_have_the_openai_shape(served, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=image_message(), max_tokens=8)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}]}],
        )
    assert raised.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "no image here"}])
    bad_json = httpx.post(f"{BASE_URL}/vllm/v1/chat/completions", content=b"{not json", timeout=30,
                          headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "error" in bad_json.json()
