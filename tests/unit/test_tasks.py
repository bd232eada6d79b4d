"""The task registry: official instructions per task and language, options validated."""

from __future__ import annotations

import pytest

from serve_app.errors import InvalidRequestError
from serve_app.model.tasks import TASKS, build_task_request, fields_json_schema

OFFICIAL = {
    ("text", "zh"): "提取图中的文字。",
    ("text", "en"): "Extract the text in the image.",
    ("spotting", "zh"): "检测并识别图片中的文字，将文本坐标格式化输出。",
    ("spotting", "en"): "Detect and recognize text in the image, and output the text coordinates in a formatted manner.",
    ("table", "zh"): "把图中的表格解析为 HTML。",
    ("table", "en"): "Parse the table in the image into HTML.",
    ("formula", "zh"): "识别图片中的公式，用 LaTeX 格式表示。",
    ("formula", "en"): "Identify the formula in the image and represent it using LaTeX format.",
    ("chart", "zh"): "解析图中的图表，对于流程图使用 Mermaid 格式表示，其他图表使用 Markdown 格式表示。",
    ("chart", "en"): "Parse the chart in the image; use Mermaid format for flowcharts and Markdown for other charts.",
    ("subtitles", "zh"): "提取图片中的字幕。",
    ("subtitles", "en"): "Extract the subtitles from the image.",
    ("document", "zh"): "提取文档图片中正文的所有信息用 markdown 格式表示，其中页眉、页脚部分忽略，表格用 html 格式表达，"
    "文档中公式用 latex 格式表示，按照阅读顺序组织进行解析。",
    ("translate", "zh"): "先提取文字，再将文字内容翻译为英文。若是文档，则其中页眉、页脚忽略。公式用latex格式表示，表格用html格式表示。",
    ("translate", "en"): "First extract the text, then translate the text content into English. If it is a document, "
    "ignore the header and footer. Formulas should be represented in LaTeX format, and tables should be "
    "represented in HTML format.",
}


@pytest.mark.parametrize("task,lang", sorted(OFFICIAL))
def test_official_instructions(task, lang):
    assert build_task_request(task, lang).instruction == OFFICIAL[(task, lang)]


def test_chinese_is_the_default_language_and_text_the_default_task():
    request = build_task_request(None)
    assert request.task == "text" and request.instruction == "提取图中的文字。"


def test_fields_instruction_lists_the_keys_the_official_way():
    zh = build_task_request("fields", "zh", ["company", "date,total"])
    assert zh.instruction == "提取图片中的: ['company','date','total'] 的字段内容，并按照 JSON 格式返回。"
    assert zh.fields == ("company", "date", "total")
    en = build_task_request("fields", "en", ['["name", "id"]'])
    assert en.instruction == "Extract the content of the fields: ['name','id'] from the image and return it in JSON format."


def test_translate_takes_a_target_language():
    assert "翻译为日文" in build_task_request("translate", "zh", target_language="Japanese").instruction
    assert "into French." in build_task_request("translate", "en", target_language="french").instruction
    assert "翻译为Klingon" in build_task_request("translate", "zh", target_language="Klingon").instruction


def test_free_prompt_wins_but_keeps_the_task_for_parsing():
    request = build_task_request("spotting", prompt="Where is the total?")
    assert request.instruction == "Where is the total?" and request.task == "spotting" and request.custom_prompt


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"task": "summarize"}, "task"),
        ({"task": "text", "lang": "fr"}, "lang"),
        ({"task": "fields"}, "fields"),
        ({"task": "fields", "fields": ["[1, 2]"]}, "fields"),
        ({"task": "fields", "fields": ["[broken"]}, "fields"),
        ({"task": "fields", "fields": [",".join(f"k{i}" for i in range(100))]}, "fields"),
        ({"task": "translate", "target_language": "x" * 100}, "target_language"),
    ],
)
def test_bad_task_options_name_the_parameter(kwargs, param):
    with pytest.raises(InvalidRequestError) as raised:
        build_task_request(**kwargs)
    assert raised.value.param == param
    assert raised.value.status_code == 400


def test_every_task_has_both_languages():
    for spec in TASKS.values():
        assert spec.instruction_zh and spec.instruction_en


def test_fields_schema_has_exactly_the_keys_and_bounded_strings():
    schema = fields_json_schema(("a", "b"), 32)
    assert schema["required"] == ["a", "b"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["a"] == {"type": "string", "maxLength": 32}
