"""Batch OCR from the command line: files, folders and globs sent to a running deployment's `POST /ocr`.

    hunyuan-ocr scans/ 'invoices/*.pdf' -o out/ --task document --concurrency 4

Writes `out/results.jsonl` (one line per page), one Markdown or text file per document named after
its input path with the extension kept (`scans/a/page.png` -> `out/a/page.png.md`), and
`out/errors.jsonl` (this run's failures). A document whose output file exists is skipped, so a rerun
resumes an interrupted batch and retries only what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import glob
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from serve_app.model.tasks import TASK_NAMES

CONTENT_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif",
    ".pdf": "application/pdf",
}
RESULTS, ERRORS = "results.jsonl", "errors.jsonl"
PAGE_EXTRAS = ("boxes", "fields", "rows")
RETRY_AFTER_STATUSES = {429, 503}  # the server says when to come back
BACKOFF_STATUSES = {502, 504}  # a proxy in between: back off as for a lost connection
MAX_WAIT_S = 30.0
API_KEY_ENV = "HUNYUAN_OCR_API_KEY"


@dataclass(frozen=True)
class Document:
    path: str  # where to read it
    source: str  # the input path as given (normalized): recorded in the results
    name: str  # output name relative to the output folder, original extension kept

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[Path(self.path).suffix.lower()]

    @property
    def is_pdf(self) -> bool:
        return self.content_type == "application/pdf"


class DocumentError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message, self.status = message, status

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- pure logic: inputs, names, pages


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _supported(path: str) -> bool:
    return Path(path).suffix.lower() in CONTENT_TYPES


def _walk(folder: str) -> list[str]:
    found = []
    for parent, subfolders, names in os.walk(folder):
        subfolders.sort()
        found += [os.path.join(parent, name) for name in sorted(names) if _supported(name)]
    return found


def glob_root(pattern: str) -> str:
    """The literal folder a pattern starts from (`scans/*/p.png` -> `scans`): names mirror below it."""
    parts = []
    for part in Path(pattern).parts:
        if _has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Document], list[tuple[str, str]]]:
    """Files, folders (recursive) and glob patterns -> documents (images and PDFs, sorted, each file
    once) and (input, message) for each input that is missing or matches nothing."""
    found: list[tuple[str, str]] = []  # (file, the folder its output name is relative to)
    errors: list[tuple[str, str]] = []
    for given in inputs:
        if os.path.isdir(given):
            files = [(path, given) for path in _walk(given)]
            if not files:
                errors.append((given, "the folder holds no images or PDFs"))
        elif os.path.isfile(given):
            files = [(given, os.path.dirname(given) or ".")]
            if not _supported(given):  # named explicitly: say so rather than ignore it
                files = []
                errors.append((given, f"not an image or PDF (supported: {', '.join(CONTENT_TYPES)})"))
        elif _has_magic(given):
            root, files = glob_root(given), []
            for match in sorted(glob.glob(given, recursive=True)):
                if os.path.isdir(match):
                    files += [(path, root) for path in _walk(match)]
                elif _supported(match):
                    files.append((match, root))
            if not files:
                errors.append((given, "the pattern matches no images or PDFs"))
        else:
            files = []
            errors.append((given, "no such file or folder"))
        found += files
    return name_documents(found), errors


def name_documents(found: Sequence[tuple[str, str]]) -> list[Document]:
    """Output names relative to the common folder of the inputs' roots: one folder mirrors its own
    tree (scans/a/p.png -> a/p.png), several keep what tells them apart (x/p.png, y/p.png). Distinct
    files get distinct names, and the same command line gives the same names (resume relies on it)."""
    if not found:
        return []
    base = os.path.commonpath([os.path.abspath(root) for _, root in found])
    documents, seen = [], set()
    for path, _ in found:
        real = os.path.realpath(path)
        if real in seen:  # `a.png`, `./a.png` and a folder holding it: one document
            continue
        seen.add(real)
        name = Path(os.path.relpath(os.path.abspath(path), base)).as_posix()
        documents.append(Document(path=path, source=os.path.normpath(path), name=name))
    return sorted(documents, key=lambda document: document.source)


def output_file(out_dir: Path, document: Document, fmt: str) -> Path:
    return out_dir / f"{document.name}.{fmt}"


def pending(documents: Sequence[Document], out_dir: Path, fmt: str, overwrite: bool) -> tuple[list[Document], list[Document]]:
    """(to do, skipped). The output file is written last and atomically, so it marks a finished document."""
    if overwrite:
        return list(documents), []
    finished = {document for document in documents if output_file(out_dir, document, fmt).exists()}
    return [d for d in documents if d not in finished], [d for d in documents if d in finished]


def parse_retry_after(value: str | None, default: float = 1.0, cap: float = MAX_WAIT_S) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); the default when absent or
    unparseable, capped so that a misbehaving server cannot park the batch."""
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return default
    if not math.isfinite(seconds):
        return default
    return min(max(seconds, 0.0), cap)


def backoff(attempt: int, cap: float = MAX_WAIT_S) -> float:
    return min(cap, 0.5 * 2**attempt)


def split_pages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-page results: a PDF's answer lists `pages`; an image's answer is one page, numbered 1."""
    pages = response.get("pages")
    if not isinstance(pages, list):
        pages = [{**response, "page": 1}]
    result = []
    for index, page in enumerate(pages, 1):
        entry = {"page": page.get("page", index), "text": page.get("text") or ""}
        entry.update({key: page[key] for key in PAGE_EXTRAS if page.get(key) is not None})
        entry.update(warnings=page.get("warnings") or [], usage=page.get("usage"))
        if page.get("finish_reason") is not None:
            entry["finish_reason"] = page["finish_reason"]
        result.append(entry)
    return result


def page_records(source: str, task: str | None, pages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"source": source, "page": page["page"], "task": task, **page} for page in pages]  # keys in this order


def render_document(pages: Sequence[dict[str, Any]], fmt: str) -> str:
    """Markdown: each page after a `<!-- page N -->` line. Text: pages separated by form feeds."""
    if fmt == "md":
        return "\n\n".join(f"<!-- page {page['page']} -->\n\n{page['text'].strip(chr(10))}" for page in pages) + "\n"
    return "\f".join(page["text"].rstrip() + "\n" for page in pages)


def request_params(args: argparse.Namespace, is_pdf: bool) -> dict[str, str]:
    fields = ",".join(key.strip() for key in args.fields.split(",") if key.strip()) if args.fields else None
    params = {
        "task": args.task, "lang": args.lang, "fields": fields, "target_language": args.target_language,
        "prompt": args.prompt, "max_tokens": args.max_tokens, "pages": args.pages if is_pdf else None,
    }
    return {key: str(value) for key, value in params.items() if value is not None}


# ---------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def compact_results(path: Path, redo: set[str]) -> None:
    """Drop the lines of documents about to be redone (and any line cut by an interruption), so a
    rerun never duplicates pages."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("source") not in redo:
                kept.append(line + "\n")
        except (ValueError, AttributeError):
            continue
    write_atomic(path, "".join(kept))


def append_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as stream:
        stream.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def read_document(document: Document, max_bytes: int) -> bytes:
    try:
        size = os.path.getsize(document.path)
        if size > max_bytes:  # the server would refuse it with 413 after the whole upload
            raise DocumentError(f"the file is {size} bytes, over --max-bytes {max_bytes}; not sent")
        with open(document.path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise DocumentError(f"cannot read the file: {error.strerror or error}") from None


# ---------------------------------------------------------------- HTTP


def server_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:500] or response.reason_phrase


async def post_ocr(client: httpx.AsyncClient, url: str, document: Document, body: bytes,
                   params: dict[str, str], retries: int) -> dict[str, Any]:
    """One document's answer, retrying overload (503/429, after Retry-After), gateways and lost
    connections; any other 4xx or 5xx, and a request that timed out, is final for this document."""
    for attempt in range(retries + 1):
        try:
            response = await client.post(url, content=body, params=params, headers={"Content-Type": document.content_type})
        except (httpx.ReadTimeout, httpx.WriteTimeout):  # the server may still be working on it: do not pile on
            raise DocumentError("no answer within --timeout; not retried") from None
        except httpx.TransportError as error:
            problem, delay = DocumentError(f"cannot reach {url}: {type(error).__name__} {error}".strip()), backoff(attempt)
        else:
            if response.status_code == 200:
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                if not isinstance(answer, dict):
                    raise DocumentError("the server answered 200 without a JSON object", 200)
                return answer
            problem = DocumentError(f"HTTP {response.status_code}: {server_message(response)}", response.status_code)
            if response.status_code in RETRY_AFTER_STATUSES:
                delay = parse_retry_after(response.headers.get("Retry-After"))
            elif response.status_code in BACKOFF_STATUSES:
                delay = backoff(attempt)
            else:
                raise problem
        if attempt < retries:
            await asyncio.sleep(delay)
    if retries:
        problem.message += f" (gave up after {retries} retries)"
    raise problem


@dataclass
class Batch:
    args: argparse.Namespace
    out_dir: Path
    done: int = 0
    failed: int = 0
    pages: int = 0
    started: float = field(default_factory=time.perf_counter)

    def fail(self, source: str, message: str, status: int | None = None) -> None:
        self.failed += 1
        append_jsonl(self.out_dir / ERRORS, [{"source": source, "error": message, "status": status}])
        tqdm.write(f"error: {source}: {message}", file=sys.stderr)

    def rate(self) -> float:
        return self.pages / max(time.perf_counter() - self.started, 1e-9)

    async def run(self, todo: Sequence[Document]) -> None:
        args, url = self.args, self.args.url.rstrip("/") + "/ocr"
        api_key = args.api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        bar = tqdm(total=len(todo), unit="doc", disable=args.quiet or not sys.stderr.isatty())
        queue = iter(todo)  # shared by the workers: each document is taken once
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(args.timeout, connect=10.0),
                                     limits=httpx.Limits(max_connections=args.concurrency)) as client:

            async def worker() -> None:
                for document in queue:
                    await self.one(client, url, document)
                    bar.set_postfix_str(f"{self.pages} pages, {self.rate():.2f} pages/s", refresh=False)
                    bar.update(1)

            await asyncio.gather(*(worker() for _ in range(min(args.concurrency, len(todo)))))
        bar.close()

    async def one(self, client: httpx.AsyncClient, url: str, document: Document) -> None:
        try:
            body = read_document(document, self.args.max_bytes)
            response = await post_ocr(client, url, document, body, request_params(self.args, document.is_pdf), self.args.retries)
            pages = split_pages(response)
        except DocumentError as error:
            self.fail(document.source, error.message, error.status)
            return
        # No await from here on: the lines and the file land together, as far as other workers see.
        append_jsonl(self.out_dir / RESULTS, page_records(document.source, response.get("task"), pages))
        write_atomic(output_file(self.out_dir, document, self.args.format), render_document(pages, self.args.format))
        self.done += 1
        self.pages += len(pages)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hunyuan-ocr", description="OCR images and PDFs in batch with a running HunyuanOCR / PP-OCR deployment.",
        epilog=f"The API key may also come from ${API_KEY_ENV}. Exit status: 0 all done, 1 some documents failed, 2 usage error.")
    parser.add_argument("inputs", nargs="+", help="files, folders (recursive) or glob patterns (quote them: '**/*.pdf')")
    parser.add_argument("-o", "--output", required=True, help="output folder (results.jsonl, errors.jsonl, one file per document)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment (default %(default)s)")
    parser.add_argument("--task", default="text", choices=list(TASK_NAMES), help="default %(default)s")
    parser.add_argument("--lang", choices=["zh", "en"], help="language of the official instruction")
    parser.add_argument("--fields", help="keys for --task fields, comma-separated")
    parser.add_argument("--target-language", help="target of --task translate")
    parser.add_argument("--prompt", help="a free instruction instead of the task's")
    parser.add_argument("--max-tokens", type=int, help="most tokens to generate per page")
    parser.add_argument("--pages", help="PDF pages to read, e.g. 1-3,7 (default all)")
    parser.add_argument("--format", choices=["md", "txt"], default="md", help="per-document file format (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="documents in flight (default %(default)s)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries on 503/429/502/504 and connection errors (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default %(default)s)")
    parser.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024,
                        help="larger files fail without being sent (default 20 MiB)")
    parser.add_argument("--api-key", help=f"sent as 'Authorization: Bearer ...' (default ${API_KEY_ENV})")
    parser.add_argument("--overwrite", action="store_true", help="redo documents whose output file exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("concurrency", "max_bytes", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, not {args.url!r}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--output {args.output} exists and is not a folder")

    documents, input_errors = expand_inputs(args.inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = pending(documents, out_dir, args.format, args.overwrite)
    compact_results(out_dir / RESULTS, {document.source for document in todo})
    (out_dir / ERRORS).write_text("", encoding="utf-8")  # this run's failures only
    batch = Batch(args, out_dir)
    for given, message in input_errors:
        batch.fail(given, message)
    try:
        asyncio.run(batch.run(todo))
    except KeyboardInterrupt:
        print("interrupted; finished documents are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - batch.started
    print(f"documents: {batch.done} done, {len(skipped)} skipped, {batch.failed} failed; "
          f"pages: {batch.pages} in {seconds:.1f} s ({batch.rate():.2f} pages/s); output in {out_dir}"
          + (f", failures in {out_dir / ERRORS}" if batch.failed else ""))
    return 1 if batch.failed else 0


if __name__ == "__main__":
    sys.exit(main())
