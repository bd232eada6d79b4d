"""HunyuanOCR versions as data: one profile per release, holding its official serving recipe.

`model.version` in the config picks a profile; its values are the defaults of the config fields they
feed (hub revision, files, pixel budget, max_tokens, decoding, repetition stop), so an explicit field in
the YAML still wins. The task table (which tasks exist, their exact instructions, how their answers are
parsed) lives here too, per version.

Sources (read 2026-12, see ../shared/notes/hunyuanocr-versions.md): Tencent-Hunyuan/HunyuanOCR
`inference/utils/tasks.py` (1.5 prompts, byte for byte), `inference/vLLM/infer_vllm_client.py` and
`docs/inference/archive/vLLM.md` (1.5 messages, sampling, early stop), the 1.0 README and
`Hunyuan-OCR-vllm/run_hy_ocr.py` (1.0 prompts and sampling).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Version = Literal["1.5", "1.0"]
DEFAULT_VERSION: Version = "1.5"
HUB_ID = "tencent/HunyuanOCR"
# The last commit of tencent/HunyuanOCR whose root is HunyuanOCR 1.0 (its root became 1.5 on 2026-07-06,
# with 1.0 archived under v1.0/ and no tag).
V1_0_COMMIT = "f6af82ee007fe6091b29fb3bb287b491ead41c82"

OutputKind = Literal["text", "spotting", "markdown", "document", "html", "latex", "fields", "layout"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Frozen):
    """One task: its instruction(s) and how the model's answer is structured."""

    name: str
    instruction_zh: str
    instruction_en: str | None = None  # None: the release publishes no English text
    output: OutputKind = "text"
    description: str
    official: bool = True  # False: not a prompt this release publishes (the response says so)
    families: tuple[str, ...] = ("hunyuan_vl",)


class Decoding(_Frozen):
    """The official sampling settings (greedy either way: temperature 0)."""

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    repetition_penalty: float = Field(1.0, gt=0)


class ModelProfile(_Frozen):
    version: Version
    hub_id: str = HUB_ID
    revision: str = Field(description="Branch or commit; resolved to a commit once, when the app is built.")
    subfolder: str | None = Field(None, description="Folder of the checkpoint inside the hub repo.")
    ignore_patterns: tuple[str, ...] = Field((), description="Repo files not downloaded.")
    min_pixels: int
    max_pixels: int
    default_max_tokens: int
    max_tokens_cap: int
    system_message: str | None = Field(
        "", description="Content of the system message before the user turn (None: no system message)."
    )
    decoding: Decoding
    cleanup_min_chars: int = Field(description="The official final cleanup trims a looping tail of texts this long.")
    tasks: dict[str, TaskSpec]


BOTH_FAMILIES = ("hunyuan_vl", "pp_ocr")

# Instructions both releases share, byte for byte.
TEXT_ZH = "提取图中的文字。"
SPOTTING_ZH = "检测并识别图片中的文字，将文本坐标格式化输出。"
FIELDS_ZH = "提取图片中的: {keys} 的字段内容，并按照 JSON 格式返回。"
FIELDS_EN = "Extract the content of the fields: {keys} from the image and return it in JSON format."
SUBTITLES_ZH = "提取图片中的字幕。"
SUBTITLES_EN = "Extract the subtitles from the image."

_TASKS_1_0 = (
    TaskSpec(name="text", instruction_zh=TEXT_ZH, instruction_en="Extract the text in the image.",
             description="Plain text.", families=BOTH_FAMILIES),
    TaskSpec(name="spotting", instruction_zh=SPOTTING_ZH,
             instruction_en="Detect and recognize text in the image, and output the text coordinates in a formatted manner.",
             output="spotting", description="Text lines with boxes in the caller's pixel coordinates.",
             families=BOTH_FAMILIES),
    TaskSpec(name="document",
             instruction_zh="提取文档图片中正文的所有信息用 markdown 格式表示，其中页眉、页脚部分忽略，表格用 html 格式表达，"
             "文档中公式用 latex 格式表示，按照阅读顺序组织进行解析。",
             instruction_en="Extract all information from the main body of the document image and represent it in "
             "markdown format, ignoring headers and footers. Tables should be expressed in HTML format, formulas in "
             "the document should be represented using LaTeX format, and the parsing should be organized according "
             "to the reading order.",
             output="markdown", description="Markdown with HTML tables and LaTeX formulas."),
    TaskSpec(name="table", instruction_zh="把图中的表格解析为 HTML。", instruction_en="Parse the table in the image into HTML.",
             output="html", description="An HTML table."),
    TaskSpec(name="formula", instruction_zh="识别图片中的公式，用 LaTeX 格式表示。",
             instruction_en="Identify the formula in the image and represent it using LaTeX format.",
             output="latex", description="LaTeX."),
    TaskSpec(name="chart", instruction_zh="解析图中的图表，对于流程图使用 Mermaid 格式表示，其他图表使用 Markdown 格式表示。",
             instruction_en="Parse the chart in the image; use Mermaid format for flowcharts and Markdown for other charts.",
             output="markdown", description="Mermaid for flowcharts, Markdown otherwise."),
    TaskSpec(name="fields", instruction_zh=FIELDS_ZH, instruction_en=FIELDS_EN, output="fields",
             description="JSON with exactly the requested keys (needs `fields`)."),
    TaskSpec(name="subtitles", instruction_zh=SUBTITLES_ZH, instruction_en=SUBTITLES_EN, description="Subtitle text."),
    TaskSpec(name="translate",
             instruction_zh="先提取文字，再将文字内容翻译为{language}。若是文档，则其中页眉、页脚忽略。公式用latex格式表示，表格用html格式表示。",
             instruction_en="First extract the text, then translate the text content into {language}. If it is a "
             "document, ignore the header and footer. Formulas should be represented in LaTeX format, and tables "
             "should be represented in HTML format.",
             output="markdown", description="Translation (target_language, default English)."),
)

# HunyuanOCR 1.5: `inference/utils/tasks.py` (TASK_PROMPTS), Chinese only. Our name <- the official key.
_TASKS_1_5 = (
    TaskSpec(name="text", instruction_zh=TEXT_ZH, description="Plain text (structured_parse).",
             families=BOTH_FAMILIES),
    TaskSpec(name="spotting", instruction_zh=SPOTTING_ZH, output="spotting",
             description="Text lines with boxes in the caller's pixel coordinates (spotting_hunyuan).",
             families=BOTH_FAMILIES),
    TaskSpec(name="spotting_json",
             instruction_zh="检测并识别图中所有的文字行，请按从上到下、从左到右的阅读顺序进行识别。 "
             "输出格式为 JSON 数组，每个元素必须包含："
             '"box": [xmin, ymin, xmax, ymax]（坐标需归一化到 [0, 1000] 范围内）；'
             '"text": "识别出的文字内容"。 '
             "注意：请直接输出 JSON 数组，不要包含任何多余的描述性文字。",
             output="spotting", description="Text lines with boxes, the model answering in JSON (spotting_json)."),
    TaskSpec(name="document",
             instruction_zh="提取文档图片中正文的所有信息用markdown格式表示，其中页眉、页脚部分忽略，表格用html格式表达，"
             "文档中公式用latex格式表示，按照阅读顺序组织进行解析。",
             output="document",
             description="Markdown with HTML tables and LaTeX formulas (doc_parse), normalised as the official client does."),
    TaskSpec(name="table", instruction_zh="把图中的表格解析为HTML。", output="html", description="An HTML table."),
    TaskSpec(name="formula", instruction_zh="识别图片中的公式，用LaTeX格式表示。", output="latex", description="LaTeX."),
    TaskSpec(name="chart", instruction_zh="解析图中的图表，对于流程图使用Mermaid格式表示，其他图表使用Markdown格式表示。",
             output="markdown", description="Mermaid for flowcharts, Markdown otherwise (chart_parse)."),
    TaskSpec(name="layout", instruction_zh="按照阅读顺序解析图中的版式信息。", output="layout",
             description="Layout regions (category, polygon) in reading order."),
    TaskSpec(name="layout_parse",
             instruction_zh="提取文档图片中所有内容用markdown格式表示，表格用html格式表达，文档中公式用latex格式表示，"
             "请按照阅读顺序组织进行全文解析，并输出版式分析信息。",
             output="layout", description="Full-page markdown with layout regions (category, polygon, text)."),
    TaskSpec(name="translate",
             instruction_zh="按照阅读顺序，提取图中文字，公式用latex格式表示，表格用markdown格式表示，再将文字内容翻译为{language}。",
             output="markdown",
             description="Translation into English (trans_other2en, the default) or Chinese (trans_other2zh)."),
    TaskSpec(name="doc_translate",
             instruction_zh="先解析文档，再将文档内容翻译为中文，其中页眉、页脚忽略，公式用latex格式表示，表格用html格式表示。",
             output="markdown", description="An English document parsed and translated into Chinese (doc_trans_en2zh)."),
    # 1.5 publishes no prompt for these; 1.0's are kept, and the response says so.
    TaskSpec(name="fields", instruction_zh=FIELDS_ZH, instruction_en=FIELDS_EN, output="fields", official=False,
             description="JSON with exactly the requested keys (needs `fields`); 1.0's prompt, not an official 1.5 one."),
    TaskSpec(name="subtitles", instruction_zh=SUBTITLES_ZH, instruction_en=SUBTITLES_EN, official=False,
             description="Subtitle text; 1.0's prompt, not an official 1.5 one."),
)
# 1.5's translation targets: the official keys trans_other2en and trans_other2zh.
TRANSLATE_TARGETS_1_5 = {"english": "英文", "chinese": "中文"}

PROFILES: dict[str, ModelProfile] = {
    "1.5": ModelProfile(
        version="1.5",
        revision="main",
        # Tencent's own download excludes v1.0/; dflash/ is the speculative-decoding draft, not used here.
        ignore_patterns=("v1.0/*", "dflash/*"),
        min_pixels=512 * 512,
        max_pixels=4096 * 4096,  # "max_pixels ≈ 4096×4096" (vLLM.md): up to 16,514 image tokens a page
        default_max_tokens=4096,  # infer_vllm_client.py's default
        max_tokens_cap=32768,  # what the docs pass for whole documents
        decoding=Decoding(temperature=0.0, top_p=1.0, top_k=-1, repetition_penalty=1.08),
        cleanup_min_chars=2000,
        tasks={spec.name: spec for spec in _TASKS_1_5},
    ),
    "1.0": ModelProfile(
        version="1.0",
        revision=V1_0_COMMIT,
        ignore_patterns=("v1.0/*", "dflash/*"),  # not at that commit; harmless
        min_pixels=512 * 512,
        max_pixels=2048 * 2048,
        default_max_tokens=4096,
        max_tokens_cap=16384,  # the README's max_tokens
        decoding=Decoding(temperature=0.0, top_p=0.95, top_k=1, repetition_penalty=1.0),  # run_hy_ocr.py
        cleanup_min_chars=8000,
        tasks={spec.name: spec for spec in _TASKS_1_0},
    ),
}


def profile_for(version: str) -> ModelProfile:
    try:
        return PROFILES[version]
    except KeyError:
        raise ValueError(f"unknown HunyuanOCR version {version!r}; one of {sorted(PROFILES)}") from None


def chat_messages(instruction: str, system_message: str | None) -> list[dict]:
    """The message list the official clients send: an (empty) system message, then the image, then the text."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
    return [{"role": "system", "content": system_message}, user] if system_message is not None else [user]


# The image processor's largest aspect ratio (smart_resize refuses more) and the tokens a prompt adds around
# the image (template, instruction) that a context must leave room for.
MAX_ASPECT_RATIO = 200
PROMPT_RESERVE_TOKENS = 256


def max_image_tokens(max_pixels: int, factor: int = 32) -> int:
    """An upper bound of the image tokens of one page within `max_pixels`: (h/32) * (w/32 + 1) + 2 is
    h*w/1024 + h/32 + 2, with h*w <= max_pixels and h at most sqrt(max_pixels * 200) (the widest aspect)."""
    tallest = math.isqrt(max_pixels * MAX_ASPECT_RATIO) + factor
    return max_pixels // (factor * factor) + tallest // factor + 2
