"""The web UI (Gradio) for people who are not programmers, mounted on the ingress at `config.ui.path`.

It calls the ingress's `recognize`, the in-process path `POST /ocr` uses, with the ORIGINAL file
bytes, so EXIF orientation and every limit apply exactly as for the API. No model code here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw, ImageFont

from serve_app.config import OCRAppConfig
from serve_app.errors import InvalidRequestError, OCRServiceError, PayloadTooLargeError, as_service_error
from serve_app.api.schemas import OCRResponse
from serve_app.model.tasks import available_tasks

logger = logging.getLogger("ray.serve")

Recognize = Callable[..., Awaitable[OCRResponse]]

TASK_LABELS = {
    "text": "Text", "spotting": "Text with positions (boxes)", "document": "Document (Markdown)",
    "table": "Table", "formula": "Formula (LaTeX)", "chart": "Chart", "fields": "Fields (key: value)",
    "subtitles": "Subtitles", "translate": "Translate", "spotting_json": "Text with positions (JSON)",
    "layout": "Layout regions", "layout_parse": "Document with layout", "doc_translate": "Document into Chinese",
}
# Shown as rendered Markdown/HTML.
RENDERED_TASKS = {"document", "table", "chart", "formula", "translate", "doc_translate", "layout_parse"}
ERROR_TITLES = {400: "Please check the image or the options", 413: "The file is too large",
                415: "This file type is not supported", 422: "The answer could not be structured",
                503: "The service is busy"}
EXPORT_ROOT = Path(tempfile.gettempdir()) / "ocr-ui-exports"
EXPORT_MAX_AGE_S = 3600
OVERLAY_MAX_SIDE = 1600
BOX_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080")

# EXIF orientation -> the Pillow transpose that shows the stored pixels upright, and where a stored
# point (x, y) of a w x h image lands after it (continuous pixel coordinates).
UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, lambda x, y, w, h: (w - x, y)),
    3: (Image.Transpose.ROTATE_180, lambda x, y, w, h: (w - x, h - y)),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, lambda x, y, w, h: (x, h - y)),
    5: (Image.Transpose.TRANSPOSE, lambda x, y, w, h: (y, x)),
    6: (Image.Transpose.ROTATE_270, lambda x, y, w, h: (h - y, x)),
    7: (Image.Transpose.TRANSVERSE, lambda x, y, w, h: (h - y, w - x)),
    8: (Image.Transpose.ROTATE_90, lambda x, y, w, h: (y, w - x)),
}


def upright_box(bbox, orientation: int, size: tuple[int, int]) -> list[float]:
    """A box in stored pixels ([x1, y1, x2, y2], as the API returns it) in the upright image's pixels."""
    if orientation not in UPRIGHT:
        return [float(v) for v in bbox]
    move = UPRIGHT[orientation][1]
    (ax, ay), (bx, by) = move(bbox[0], bbox[1], *size), move(bbox[2], bbox[3], *size)
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]


def upright_point(x: float, y: float, orientation: int, size: tuple[int, int]) -> tuple[float, float]:
    """A point in stored pixels (as the API returns region polygons) in the upright image's pixels."""
    if orientation not in UPRIGHT:
        return float(x), float(y)
    return UPRIGHT[orientation][1](x, y, *size)


def _draw_label(draw: ImageDraw.ImageDraw, x: float, y1: float, y2: float, label: str, color: str, font, width: int):
    """A filled label above y1 (below y2 when there is no room above), at x."""
    left, top, right, bottom = draw.textbbox((x, y1), label, font=font)
    ly = y1 - (bottom - top) - 2 * width if y1 > bottom - top + 2 * width else y2
    draw.rectangle((x, ly, x + right - left + 2 * width, ly + bottom - top + 2 * width), fill=color)
    draw.text((x + width, ly + width - (top - y1)), label, fill="white", font=font)


def draw_boxes(image_bytes: bytes, response: OCRResponse) -> Image.Image:
    """The image upright (as a browser shows it), each spotted box drawn and numbered like the table rows,
    and each layout region's polygon drawn and labelled with its category."""
    with Image.open(io.BytesIO(image_bytes)) as stored:
        image = stored.convert("RGB")
    orientation = response.image.exif_orientation
    stored_size = image.size
    if orientation in UPRIGHT:
        image = image.transpose(UPRIGHT[orientation][0])
    scale = min(1.0, OVERLAY_MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    font = ImageFont.load_default(size=max(12, width * 7))
    for number, box in enumerate(response.boxes or [], start=1):
        x1, y1, x2, y2 = (v * scale for v in upright_box(box.bbox, orientation, stored_size))
        color = BOX_COLORS[(number - 1) % len(BOX_COLORS)]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        _draw_label(draw, x1, y1, y2, str(number), color, font, width)
    for number, region in enumerate(response.regions or [], start=1):
        points = [tuple(v * scale for v in upright_point(x, y, orientation, stored_size)) for x, y in region.polygon]
        if len(points) < 2:
            continue
        color = BOX_COLORS[(number - 1) % len(BOX_COLORS)]
        draw.polygon(points, outline=color, width=width)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        _draw_label(draw, min(xs), min(ys), max(ys), region.category, color, font, width)
    return image


def read_upload(payload: dict | None, max_bytes: int) -> bytes:
    """The uploaded file's bytes as sent (Gradio's raw image payload: a path in its upload cache)."""
    if not payload:
        raise InvalidRequestError("Drop, paste or choose an image first (JPG, PNG or WebP).", "file")
    path, url = payload.get("path"), payload.get("url") or ""
    if path:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The file is {size:,} bytes; the limit is {max_bytes:,} bytes.")
        return Path(path).read_bytes()
    if url.startswith("data:"):  # a pasted image may arrive inline
        try:
            data = base64.b64decode(url.partition(",")[2], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("The pasted image could not be read.", "file") from None
        if len(data) > max_bytes:
            raise PayloadTooLargeError(f"The file is {len(data):,} bytes; the limit is {max_bytes:,} bytes.")
        return data
    raise InvalidRequestError("The upload could not be read; please try again.", "file")


def rendered_markdown(response: OCRResponse) -> str:
    text = response.text
    if response.task == "formula" and "$" not in text:
        return f"$$\n{text}\n$$"
    if response.task == "chart" and "```" not in text and text.lstrip().startswith(("graph", "flowchart")):
        return f"```mermaid\n{text}\n```"
    return text


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_report(response: OCRResponse) -> str:
    lines = [f"# OCR result: {response.task}", "", f"Model: {response.model}", ""]
    if response.fields is not None:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in response.fields.items()]
    elif response.boxes is not None:
        lines += ["| # | text | x1 | y1 | x2 | y2 |", "|---|---|---|---|---|---|"]
        for number, box in enumerate(response.boxes, start=1):
            lines.append(f"| {number} | {_cell(box.text)} | " + " | ".join(map(str, box.bbox)) + " |")
    elif response.pages is not None:
        for page in response.pages:
            lines += [f"## Page {page.page}", "", page.text, ""]
    else:
        lines.append(response.text)
    return "\n".join(lines) + "\n"


def details_markdown(response: OCRResponse) -> str:
    u, t, i = response.usage, response.timings_ms, response.image
    lines = [
        f"**Model** `{response.model}` · **task** `{response.task}` · **finished** `{response.finish_reason}`",
        f"**Tokens** prompt {u.prompt_tokens} · generated {u.completion_tokens} · total {u.total_tokens}"
        if u.total_tokens else "",  # models without tokens (PP-OCR) report none
        f"**Time (ms)** preprocess {t.preprocess:g} · encode {t.encode:g} · decode {t.decode:g} · "
        f"total {t.total:g} · encoder batch {t.encoder_batch_size}",
        f"**Image** {i.oriented_width}×{i.oriented_height} px (EXIF orientation {i.exif_orientation}), "
        f"model saw {i.model_width}×{i.model_height}" if i is not None else f"**Pages** {len(response.pages or [])}",
    ]
    lines += [f"⚠️ {html.escape(warning)}" for warning in response.warnings]
    return "  \n".join(line for line in lines if line)


def write_exports(response: OCRResponse) -> list[str]:
    """TXT, JSON and Markdown files of one result, in a fresh folder; folders over an hour old go."""
    EXPORT_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - EXPORT_MAX_AGE_S
    for old in EXPORT_ROOT.iterdir():
        if old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORT_ROOT))
    stem = f"ocr-{response.task}-{response.id[:8]}"
    files = {
        ".txt": response.text + "\n",
        ".json": json.dumps(response.model_dump(exclude_none=True), ensure_ascii=False, indent=2) + "\n",
        ".md": markdown_report(response),
    }
    paths = []
    for suffix, content in files.items():
        path = folder / f"{stem}{suffix}"
        path.write_text(content, encoding="utf-8")
        paths.append(str(path))
    return paths


def error_html(error: OCRServiceError) -> str:
    title = ERROR_TITLES.get(error.status_code, "Something went wrong")
    return (
        '<div role="alert" style="border:1px solid #d33;background:#fff1f0;color:#8a1f11;'
        'padding:10px 14px;border-radius:8px">'
        f"<strong>{html.escape(title)}</strong><br>{html.escape(error.message)}</div>"
    )


def build_ui(recognize: Recognize, config: OCRAppConfig) -> gr.Blocks:
    family, limits = config.model.family, config.limits
    tasks = list(available_tasks(family, config.model.version))
    is_vlm = family == "hunyuan_vl"
    concurrency = config.ui.concurrency_limit

    with gr.Blocks(title="OCR", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            f"## Read the text in an image\nDrop a JPG, PNG or WebP image here (or paste one, or open a PDF), "
            f"choose what to "
            f"read, then press **Recognize**. Model: `{config.model.served_model_name}`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image (JPG, PNG, WebP)",
                                 elem_id="ocr-image", height=320)
                with gr.Accordion("…or a PDF document", open=False):
                    pdf = gr.File(file_types=[".pdf"], type="filepath", label="PDF", elem_id="ocr-pdf")
                    pages = gr.Textbox(label="Pages (e.g. 1-3,7; empty: all)", elem_id="ocr-pages")
                task = gr.Radio([(TASK_LABELS.get(n, n), n) for n in tasks], value="text", label="What to read",
                                elem_id="ocr-task")
                fields = gr.Textbox(label="Fields to extract (comma-separated)", placeholder="company, date, total",
                                    visible=False, elem_id="ocr-fields")
                target = gr.Textbox(label="Translate into", value="English", visible=False, elem_id="ocr-target")
                with gr.Accordion("More options", open=False, visible=is_vlm):  # PP-OCR takes no instruction
                    # 1.5 publishes Chinese instructions only (they read documents in any language).
                    lang = gr.Radio([("Chinese (recommended)", "zh"), ("English", "en")], value="zh",
                                    label="Language of the instruction", visible=config.model.version == "1.0")
                    prompt = gr.Textbox(label="Your own instruction (optional, replaces the task's)", lines=2,
                                        max_length=limits.max_prompt_chars)
                    max_tokens = gr.Number(value=limits.default_max_tokens, precision=0, minimum=1,
                                           maximum=limits.max_tokens_cap, label="Most tokens to generate")
                submit = gr.Button("Recognize", variant="primary", elem_id="ocr-submit")
            with gr.Column(scale=1):
                error = gr.HTML(visible=False, elem_id="ocr-error")
                text = gr.Textbox(label="Text", lines=8, max_lines=30, buttons=["copy"], interactive=False,
                                  elem_id="ocr-text")
                rendered = gr.Markdown(visible=False, label="Rendered", container=True, elem_id="ocr-rendered")
                fields_json = gr.JSON(visible=False, label="Fields", elem_id="ocr-fields-json")
                overlay = gr.Image(type="pil", format="png", interactive=False, visible=False,
                                   label="Boxes on the image", elem_id="ocr-overlay")
                table = gr.Dataframe(headers=["#", "text", "x1", "y1", "x2", "y2"], interactive=False,
                                     visible=False, label="Text lines and coordinates (pixels of the file as sent)",
                                     elem_id="ocr-boxes")
                details = gr.Markdown(elem_id="ocr-details")
                exports = gr.File(file_count="multiple", interactive=False, visible=False,
                                  label="Download (TXT, JSON, Markdown)", elem_id="ocr-exports")
        outputs = [error, text, rendered, fields_json, overlay, table, details, exports]

        def show_options(name: str):
            return gr.update(visible=name == "fields"), gr.update(visible=name == "translate")

        task.change(show_options, task, [fields, target], queue=False, api_visibility="private")

        async def run(upload, pdf_upload, page_selector, task_name, lang_code, field_list, target_language,
                      instruction, tokens, progress=gr.Progress()):
            try:
                progress(0.05, desc="Reading the file")
                # A PDF, when one is given, wins over the image.
                image_bytes = read_upload(pdf_upload or upload, limits.max_body_bytes)
                if not is_vlm or tokens in (None, ""):  # PP-OCR generates no tokens
                    token_limit = None
                elif isinstance(tokens, (int, float)) and float(tokens).is_integer():
                    token_limit = int(tokens)
                else:
                    raise InvalidRequestError("Most tokens to generate must be a whole number.", "max_tokens")
                progress(0.2, desc="Recognizing (a large page can take a while)")
                response = await recognize(
                    image_bytes,
                    task_name or "text",
                    lang_code if is_vlm else None,
                    [field_list] if task_name == "fields" and field_list else None,
                    target_language if task_name == "translate" else None,
                    (instruction or "").strip() or None if is_vlm else None,
                    token_limit,
                    **({"pages": (page_selector or "").strip() or None} if pdf_upload else {}),
                )
            except Exception as failure:  # every error reads as a message in the page, never a trace
                service_error = as_service_error(failure)
                if service_error.status_code >= 500 and service_error.status_code != 503:
                    logger.error("web UI request failed: %r", failure)
                gr.Warning(service_error.message)
                hidden = gr.update(visible=False, value=None)
                return (gr.update(visible=True, value=error_html(service_error)), "", hidden, hidden, hidden,
                        hidden, "", hidden)
            progress(0.9, desc="Preparing the results")
            spotting = response.boxes is not None
            if response.pages is not None:  # a PDF: the boxes of each page are in its table rows
                spotting = any(page.boxes is not None for page in response.pages)
            overlay_image = None
            if response.boxes is not None or response.regions:
                try:
                    overlay_image = await asyncio.to_thread(draw_boxes, image_bytes, response)  # off the event loop
                except Exception as failure:  # the table still shows the boxes
                    logger.warning("web UI could not draw the boxes: %r", failure)
            rows = [[n, box.text, *box.bbox] for n, box in enumerate(response.boxes or [], start=1)]
            for page in response.pages or []:
                rows += [[f"p{page.page}.{n}", box.text, *box.bbox] for n, box in enumerate(page.boxes or [], start=1)]
            return (
                gr.update(visible=False, value=""),
                response.text,
                gr.update(visible=response.task in RENDERED_TASKS, value=rendered_markdown(response)),
                gr.update(visible=response.fields is not None, value=response.fields),
                gr.update(visible=overlay_image is not None, value=overlay_image),
                gr.update(visible=spotting, value=rows),
                details_markdown(response),
                gr.update(visible=True, value=write_exports(response)),
            )

        # preprocess=False: the image arrives as Gradio's upload record, so `run` reads the file exactly
        # as sent (gr.Image would otherwise open it with Pillow first and fail on bad files its own way).
        # always_last: a click while a page is still being read runs once that finishes, with the inputs
        # as they are then (Gradio's default for clicks, "once", drops it without a word).
        submit.click(run, [image, pdf, pages, task, lang, fields, target, prompt, max_tokens], outputs, preprocess=False,
                     concurrency_limit=concurrency, api_name="recognize", trigger_mode="always_last")
    blocks.queue(max_size=max(16, 8 * concurrency), default_concurrency_limit=concurrency)
    return blocks
