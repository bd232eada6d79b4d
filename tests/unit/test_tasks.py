"""The task tables per HunyuanOCR version: official instructions byte for byte, options validated.

The expected strings are copied from the official sources, not from serve_app: 1.0 from its README's
"Application-oriented Prompts" table, 1.5 from `inference/utils/tasks.py` (TASK_PROMPTS)."""

from __future__ import annotations

import pytest

from serve_app.errors import InvalidRequestError
from serve_app.profiles import PROFILES
from serve_app.model.tasks import TASK_NAMES, available_tasks, build_task_request, fields_json_schema

OFFICIAL_1_0 = {
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


# 1.5: TASK_PROMPTS, keyed here by our task name (the official key in the comment).
OFFICIAL_1_5 = {
    "text": "提取图中的文字。",  # structured_parse
    "spotting": "检测并识别图片中的文字，将文本坐标格式化输出。",  # spotting_hunyuan
    "spotting_json": '检测并识别图中所有的文字行，请按从上到下、从左到右的阅读顺序进行识别。 输出格式为 JSON 数组，每个元素必须包含：'
    '"box": [xmin, ymin, xmax, ymax]（坐标需归一化到 [0, 1000] 范围内）；"text": "识别出的文字内容"。 '
    "注意：请直接输出 JSON 数组，不要包含任何多余的描述性文字。",
    "document": "提取文档图片中正文的所有信息用markdown格式表示，其中页眉、页脚部分忽略，表格用html格式表达，"
    "文档中公式用latex格式表示，按照阅读顺序组织进行解析。",  # doc_parse
    "table": "把图中的表格解析为HTML。",
    "formula": "识别图片中的公式，用LaTeX格式表示。",
    "chart": "解析图中的图表，对于流程图使用Mermaid格式表示，其他图表使用Markdown格式表示。",  # chart_parse
    "layout": "按照阅读顺序解析图中的版式信息。",
    "layout_parse": "提取文档图片中所有内容用markdown格式表示，表格用html格式表达，文档中公式用latex格式表示，"
    "请按照阅读顺序组织进行全文解析，并输出版式分析信息。",
    "translate": "按照阅读顺序，提取图中文字，公式用latex格式表示，表格用markdown格式表示，再将文字内容翻译为英文。",  # trans_other2en
    "doc_translate": "先解析文档，再将文档内容翻译为中文，其中页眉、页脚忽略，公式用latex格式表示，表格用html格式表示。",
}


@pytest.mark.parametrize("task,lang", sorted(OFFICIAL_1_0))
def test_official_1_0_instructions(task, lang):
    assert build_task_request(task, lang, version="1.0").instruction == OFFICIAL_1_0[(task, lang)]


@pytest.mark.parametrize("task", sorted(OFFICIAL_1_5))
def test_official_1_5_instructions(task):
    request = build_task_request(task, version="1.5")
    assert request.instruction == OFFICIAL_1_5[task]
    assert request.warnings == ()  # official: nothing to warn about
    assert len(request.instruction) == len(OFFICIAL_1_5[task])


def test_1_5_spotting_json_is_the_official_166_characters():
    assert len(build_task_request("spotting_json").instruction) == 166


def test_1_5_translation_targets_are_the_two_official_ones():
    assert build_task_request("translate", target_language="Chinese").instruction.endswith("再将文字内容翻译为中文。")
    assert build_task_request("translate", target_language="english").instruction == OFFICIAL_1_5["translate"]
    with pytest.raises(InvalidRequestError) as raised:
        build_task_request("translate", target_language="French")
    assert raised.value.param == "target_language" and "prompt" in raised.value.message
    with pytest.raises(InvalidRequestError):
        build_task_request("doc_translate", target_language="English")


def test_1_5_has_no_english_instructions_and_says_so():
    with pytest.raises(InvalidRequestError) as raised:
        build_task_request("text", "en", version="1.5")
    assert raised.value.param == "lang" and "Chinese only" in raised.value.message
    assert build_task_request("text", "en", version="1.0").instruction == "Extract the text in the image."


def test_1_5_keeps_fields_and_subtitles_as_documented_non_official_prompts():
    for task, options in (("fields", {"fields": ["company"]}), ("subtitles", {})):
        request = build_task_request(task, version="1.5", **options)
        assert request.instruction == build_task_request(task, version="1.0", **options).instruction
        assert request.warnings and "publishes no instruction" in request.warnings[0]


def test_tasks_new_in_1_5_are_refused_on_1_0_with_the_reason():
    for task in ("spotting_json", "layout", "layout_parse", "doc_translate"):
        with pytest.raises(InvalidRequestError) as raised:
            build_task_request(task, version="1.0")
        assert "HunyuanOCR 1.5" in raised.value.message


def test_each_task_says_how_its_answer_is_parsed():
    assert build_task_request("layout").output == "layout" and build_task_request("layout_parse").output == "layout"
    assert build_task_request("spotting_json").output == "spotting"
    assert build_task_request("document").output == "document"  # 1.5: normalised as the official client does
    assert build_task_request("document", version="1.0").output == "markdown"
    assert list(available_tasks("pp_ocr")) == ["text", "spotting"]
    assert set(TASK_NAMES) == {name for profile in PROFILES.values() for name in profile.tasks}


def test_chinese_is_the_default_language_and_text_the_default_task():
    request = build_task_request(None)
    assert request.task == "text" and request.instruction == "提取图中的文字。"


def test_fields_instruction_lists_the_keys_the_official_way():
    zh = build_task_request("fields", "zh", ["company", "date,total"])
    assert zh.instruction == "提取图片中的: ['company','date','total'] 的字段内容，并按照 JSON 格式返回。"
    assert zh.fields == ("company", "date", "total")
    en = build_task_request("fields", "en", ['["name", "id"]'])
    assert en.instruction == "Extract the content of the fields: ['name','id'] from the image and return it in JSON format."


def test_translate_takes_a_target_language_on_1_0():
    assert "翻译为日文" in build_task_request("translate", "zh", target_language="Japanese", version="1.0").instruction
    assert "into French." in build_task_request("translate", "en", target_language="french", version="1.0").instruction
    assert "翻译为Klingon" in build_task_request("translate", "zh", target_language="Klingon", version="1.0").instruction


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


def test_every_1_0_task_has_both_languages():
    for spec in PROFILES["1.0"].tasks.values():
        assert spec.instruction_zh and spec.instruction_en


def test_fields_schema_has_exactly_the_keys_and_bounded_strings():
    schema = fields_json_schema(("a", "b"), 32)
    assert schema["required"] == ["a", "b"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["a"] == {"type": "string", "maxLength": 32}
