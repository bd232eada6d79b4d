"""The task registry: one place mapping a task name to its official instruction, parser and decoding.

HunyuanOCR is one model doing many jobs by instruction. The instructions below are the official
ones from its README, in Chinese (the default: users report it works better) and English.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from serve_app.errors import InvalidRequestError

Lang = Literal["zh", "en"]
OutputKind = Literal["text", "spotting", "markdown", "html", "latex", "fields"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    instruction_zh: str
    instruction_en: str
    output: OutputKind  # which parser turns the model text into structured results
    description: str
    families: tuple[str, ...] = ("hunyuan_vl",)  # model families that can do it


BOTH_FAMILIES = ("hunyuan_vl", "pp_ocr")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("text", "提取图中的文字。", "Extract the text in the image.", "text", "Plain text.", BOTH_FAMILIES),
        TaskSpec(
            "spotting",
            "检测并识别图片中的文字，将文本坐标格式化输出。",
            "Detect and recognize text in the image, and output the text coordinates in a formatted manner.",
            "spotting",
            "Text lines with boxes in the caller's pixel coordinates.",
            BOTH_FAMILIES,
        ),
        TaskSpec(
            "document",
            "提取文档图片中正文的所有信息用 markdown 格式表示，其中页眉、页脚部分忽略，表格用 html 格式表达，"
            "文档中公式用 latex 格式表示，按照阅读顺序组织进行解析。",
            "Extract all information from the main body of the document image and represent it in markdown "
            "format, ignoring headers and footers. Tables should be expressed in HTML format, formulas in the "
            "document should be represented using LaTeX format, and the parsing should be organized according "
            "to the reading order.",
            "markdown",
            "Markdown with HTML tables and LaTeX formulas.",
        ),
        TaskSpec("table", "把图中的表格解析为 HTML。", "Parse the table in the image into HTML.", "html", "An HTML table."),
        TaskSpec(
            "formula",
            "识别图片中的公式，用 LaTeX 格式表示。",
            "Identify the formula in the image and represent it using LaTeX format.",
            "latex",
            "LaTeX.",
        ),
        TaskSpec(
            "chart",
            "解析图中的图表，对于流程图使用 Mermaid 格式表示，其他图表使用 Markdown 格式表示。",
            "Parse the chart in the image; use Mermaid format for flowcharts and Markdown for other charts.",
            "markdown",
            "Mermaid for flowcharts, Markdown otherwise.",
        ),
        TaskSpec(
            "fields",
            "提取图片中的: {keys} 的字段内容，并按照 JSON 格式返回。",
            "Extract the content of the fields: {keys} from the image and return it in JSON format.",
            "fields",
            "JSON with exactly the requested keys (needs `fields`).",
        ),
        TaskSpec("subtitles", "提取图片中的字幕。", "Extract the subtitles from the image.", "text", "Subtitle text."),
        TaskSpec(
            "translate",
            "先提取文字，再将文字内容翻译为{language}。若是文档，则其中页眉、页脚忽略。公式用latex格式表示，表格用html格式表示。",
            "First extract the text, then translate the text content into {language}. If it is a document, ignore "
            "the header and footer. Formulas should be represented in LaTeX format, and tables should be "
            "represented in HTML format.",
            "markdown",
            "Translation (target_language, default English).",
        ),
    )
}

# Target language names as the Chinese instruction writes them (英文 is the official example).
LANGUAGE_NAMES_ZH = {
    "english": "英文", "chinese": "中文", "japanese": "日文", "korean": "韩文", "french": "法文",
    "german": "德文", "spanish": "西班牙文", "portuguese": "葡萄牙文", "italian": "意大利文",
    "russian": "俄文", "arabic": "阿拉伯文", "thai": "泰文", "vietnamese": "越南文", "malay": "马来文",
    "indonesian": "印尼文", "dutch": "荷兰文", "turkish": "土耳其文", "hindi": "印地文",
}
MAX_FIELDS = 64
MAX_FIELD_NAME_CHARS = 100
MAX_LANGUAGE_CHARS = 40


@dataclass(frozen=True)
class TaskRequest:
    """What the caller asked for, validated: the task, and the instruction that reaches the model."""

    task: str
    instruction: str
    fields: tuple[str, ...] = ()
    custom_prompt: bool = False


def build_task_request(
    task: str | None,
    lang: str | None = None,
    fields: list[str] | None = None,
    target_language: str | None = None,
    prompt: str | None = None,
    family: str = "hunyuan_vl",
) -> TaskRequest:
    """Resolve a task name (default `text`) and its options to the instruction; a free prompt wins."""
    name = (task or "text").strip().lower()
    spec = TASKS.get(name)
    if spec is None:
        raise InvalidRequestError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.", "task")
    if family not in spec.families:
        supported = ", ".join(name for name, other in TASKS.items() if family in other.families)
        raise InvalidRequestError(
            f"Task {name!r} needs the vision-language model (HunyuanOCR); this server runs the {family} model, "
            f"which does: {supported}.",
            "task",
        )
    if family != "hunyuan_vl" and prompt is not None and prompt.strip():
        raise InvalidRequestError("Free instructions need the vision-language model (HunyuanOCR).", "prompt")
    language = (lang or "zh").strip().lower()
    if language not in ("zh", "en"):
        raise InvalidRequestError(f"lang must be 'zh' or 'en', not {lang!r}.", "lang")
    keys = normalize_fields(fields) if name == "fields" else ()
    if name == "fields" and not keys and not prompt:
        raise InvalidRequestError("Task 'fields' needs the list of keys to extract, e.g. fields=company,date,total.", "fields")
    if prompt is not None and prompt.strip():
        return TaskRequest(name, prompt, keys, custom_prompt=True)
    template = spec.instruction_zh if language == "zh" else spec.instruction_en
    if name == "fields":
        return TaskRequest(name, template.format(keys=format_keys(keys)), keys)
    if name == "translate":
        return TaskRequest(name, template.format(language=target_language_name(target_language, language)))
    return TaskRequest(name, template)


def normalize_fields(fields: list[str] | None) -> tuple[str, ...]:
    """Keys from a list, or from comma-separated / JSON-list strings (query and form fields)."""
    keys: list[str] = []
    for item in fields or []:
        item = item.strip()
        if item.startswith("["):
            try:
                parsed = json.loads(item)
            except json.JSONDecodeError:
                raise InvalidRequestError("fields is not a valid JSON list of strings.", "fields") from None
            if not isinstance(parsed, list) or not all(isinstance(key, str) for key in parsed):
                raise InvalidRequestError("fields must be a list of strings.", "fields")
            keys.extend(parsed)
        else:
            keys.extend(item.split(","))
    keys = [key.strip() for key in keys if key.strip()]
    if len(keys) > MAX_FIELDS:
        raise InvalidRequestError(f"At most {MAX_FIELDS} fields per request; got {len(keys)}.", "fields")
    for key in keys:
        if len(key) > MAX_FIELD_NAME_CHARS:
            raise InvalidRequestError(f"Field names are limited to {MAX_FIELD_NAME_CHARS} characters.", "fields")
    return tuple(dict.fromkeys(keys))  # unique, in the caller's order


def format_keys(keys: tuple[str, ...]) -> str:
    """The official spelling: ['key1','key2']."""
    return "[" + ",".join("'" + key.replace("'", "\\'") + "'" for key in keys) + "]"


def target_language_name(target_language: str | None, lang: str) -> str:
    language = (target_language or "English").strip()
    if not language or len(language) > MAX_LANGUAGE_CHARS:
        raise InvalidRequestError(
            f"target_language must be a language name of at most {MAX_LANGUAGE_CHARS} characters.", "target_language"
        )
    if lang == "zh":
        return LANGUAGE_NAMES_ZH.get(language.lower(), language)
    return language[:1].upper() + language[1:]


def fields_json_schema(keys: tuple[str, ...], max_value_chars: int) -> dict:
    """JSON schema for guided decoding: exactly these keys, bounded strings (an unbounded string lets a
    weak model loop forever inside it)."""
    return {
        "type": "object",
        "properties": {key: {"type": "string", "maxLength": max_value_chars} for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }
