"""Task requests: a task name and its options -> the instruction that reaches the model, and how its answer
is structured. The task table itself is per model version (serve_app/profiles.py): HunyuanOCR's
official instructions, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from serve_app.errors import InvalidRequestError
from serve_app.profiles import PROFILES, TRANSLATE_TARGETS_1_5, OutputKind, TaskSpec, profile_for

# Every task name any version knows (the batch CLI's choices; the server checks against its own version).
TASK_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for profile in PROFILES.values() for name in profile.tasks))


# Target language names as 1.0's Chinese instruction writes them (英文 is the official example).
LANGUAGE_NAMES_ZH = {
    "english": "英文", "chinese": "中文", "japanese": "日文", "korean": "韩文", "french": "法文",
    "german": "德文", "spanish": "西班牙文", "portuguese": "葡萄牙文", "italian": "意大利文",
    "russian": "俄文", "arabic": "阿拉伯文", "thai": "泰文", "vietnamese": "越南文", "malay": "马来文",
    "indonesian": "印尼文", "dutch": "荷兰文", "turkish": "土耳其文", "hindi": "印地文",
}
MAX_FIELDS = 64
MAX_FIELD_NAME_CHARS = 100
MAX_LANGUAGE_CHARS = 40
NOT_OFFICIAL_WARNING = (
    "HunyuanOCR {version} publishes no instruction for the task {task!r}; the server sends HunyuanOCR 1.0's, "
    "which this version was not documented to follow."
)


@dataclass(frozen=True)
class TaskRequest:
    """What the caller asked for, validated: the task, the instruction that reaches the model, and how the
    answer is structured."""

    task: str
    instruction: str
    output: OutputKind = "text"
    fields: tuple[str, ...] = ()
    custom_prompt: bool = False
    warnings: tuple[str, ...] = field(default=())


def available_tasks(family: str = "hunyuan_vl", version: str = "1.5") -> dict[str, TaskSpec]:
    """The tasks a server of this model family and version does, in the table's order."""
    return {name: spec for name, spec in profile_for(version).tasks.items() if family in spec.families}


def build_task_request(
    task: str | None,
    lang: str | None = None,
    fields: list[str] | None = None,
    target_language: str | None = None,
    prompt: str | None = None,
    family: str = "hunyuan_vl",
    version: str = "1.5",
) -> TaskRequest:
    """Resolve a task name (default `text`) and its options to the instruction; a free prompt wins."""
    name = (task or "text").strip().lower()
    tasks = profile_for(version).tasks
    spec = tasks.get(name)
    if spec is None:
        other = [v for v, profile in PROFILES.items() if name in profile.tasks and family == "hunyuan_vl"]
        hint = f" (it needs HunyuanOCR {other[0]}; this server runs {version})" if other else ""
        raise InvalidRequestError(f"Unknown task {task!r}{hint}; choose one of: {', '.join(tasks)}.", "task")
    if family not in spec.families:
        supported = ", ".join(available_tasks(family, version))
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
        return TaskRequest(name, prompt, spec.output, keys, custom_prompt=True)
    if language == "en" and spec.instruction_en is None and family == "hunyuan_vl":
        raise InvalidRequestError(
            f"HunyuanOCR {version} publishes its instruction for {name!r} in Chinese only (it reads documents in any "
            "language); omit lang or use lang=zh.",
            "lang",
        )
    template = spec.instruction_en if language == "en" and spec.instruction_en else spec.instruction_zh
    warnings = () if spec.official else (NOT_OFFICIAL_WARNING.format(version=version, task=name),)
    if name == "fields":
        instruction = template.format(keys=format_keys(keys))
    elif name == "translate":
        instruction = template.format(language=target_language_name(target_language, language, version))
    elif name == "doc_translate":
        if target_language is not None and TRANSLATE_TARGETS_1_5.get(target_language.strip().lower()) != "中文":
            raise InvalidRequestError(
                "doc_translate translates a document into Chinese only (the official doc_trans_en2zh); use the "
                "translate task for English.",
                "target_language",
            )
        instruction = template
    else:
        instruction = template
    return TaskRequest(name, instruction, spec.output, keys, warnings=warnings)


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


def target_language_name(target_language: str | None, lang: str, version: str = "1.0") -> str:
    language = (target_language or "English").strip()
    if not language or len(language) > MAX_LANGUAGE_CHARS:
        raise InvalidRequestError(
            f"target_language must be a language name of at most {MAX_LANGUAGE_CHARS} characters.", "target_language"
        )
    if version == "1.5":
        # 1.5's official translation instructions: trans_other2en and trans_other2zh, nothing else.
        name = TRANSLATE_TARGETS_1_5.get(language.lower())
        if name is None:
            raise InvalidRequestError(
                "HunyuanOCR 1.5's official translation targets are English and Chinese; for another language send "
                "your own instruction as `prompt`.",
                "target_language",
            )
        return name
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
