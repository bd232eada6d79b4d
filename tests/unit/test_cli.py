"""The batch command line's logic: inputs, output names, resume, Retry-After, page assembly, retries.

No server: HTTP goes to an in-process httpx.MockTransport where a test needs answers.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from serve_app import cli
from serve_app.cli import (
    Document,
    DocumentError,
    compact_results,
    expand_inputs,
    glob_root,
    output_file,
    page_records,
    parse_retry_after,
    pending,
    post_ocr,
    render_document,
    request_params,
    split_pages,
)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """scans/ with nested images, a PDF, same names in two folders and files that are not documents."""
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "scans/a/page.png", "scans/b/page.png", "scans/b/page.jpg", "scans/doc.PDF",
          "scans/notes.txt", "scans/a/.keep", "scans/c/deep/er/x.tiff", "other/page.png", "other/readme.md")
    return tmp_path


# ---------------------------------------------------------------- inputs and names


def test_a_folder_is_walked_recursively_keeping_images_and_pdfs(tree):
    documents, errors = expand_inputs(["scans"])
    assert errors == []
    assert [d.source for d in documents] == ["scans/a/page.png", "scans/b/page.jpg", "scans/b/page.png",
                                              "scans/c/deep/er/x.tiff", "scans/doc.PDF"]
    # One folder mirrors its own tree; the extension stays in the name, so page.jpg/page.png differ.
    assert [d.name for d in documents] == ["a/page.png", "b/page.jpg", "b/page.png", "c/deep/er/x.tiff", "doc.PDF"]
    assert output_file(Path("out"), documents[0], "md") == Path("out/a/page.png.md")
    assert documents[4].content_type == "application/pdf" and documents[4].is_pdf
    assert documents[1].content_type == "image/jpeg" and not documents[1].is_pdf


def test_same_names_from_different_inputs_do_not_collide(tree):
    documents, errors = expand_inputs(["scans/a/page.png", "scans/b/page.png", "other"])
    assert errors == []
    names = [d.name for d in documents]
    assert names == ["other/page.png", "scans/a/page.png", "scans/b/page.png"]
    assert len(set(names)) == len(names)


def test_a_single_file_is_named_after_its_file_name(tree):
    documents, _ = expand_inputs([str(tree / "scans" / "a" / "page.png")])
    assert [d.name for d in documents] == ["page.png"]


def test_globs_mirror_below_their_literal_folder_and_ignore_other_files(tree):
    assert glob_root("scans/*/page.png") == "scans"
    assert glob_root("**/*.png") == "."
    documents, errors = expand_inputs(["scans/*/page.*", "scans/c*"])
    assert errors == []
    assert [d.name for d in documents] == ["a/page.png", "b/page.jpg", "b/page.png", "c/deep/er/x.tiff"]
    documents, _ = expand_inputs(["**/*.png"])
    assert [d.source for d in documents] == ["other/page.png", "scans/a/page.png", "scans/b/page.png"]


def test_each_file_is_sent_once_however_often_it_is_named(tree):
    documents, _ = expand_inputs(["scans/a/page.png", "./scans/a/page.png", "scans/a", "scans/*/page.png"])
    assert [d.source for d in documents] == ["scans/a/page.png", "scans/b/page.png"]


def test_missing_paths_and_empty_patterns_are_errors_for_that_input_only(tree):
    (tree / "empty").mkdir()
    documents, errors = expand_inputs(["missing.png", "nothing/*.pdf", "scans/notes.txt", "empty", "other"])
    assert [d.source for d in documents] == ["other/page.png"]
    assert [given for given, _ in errors] == ["missing.png", "nothing/*.pdf", "scans/notes.txt", "empty"]
    assert "no such file" in errors[0][1] and "matches no" in errors[1][1] and "not an image or PDF" in errors[2][1]


# ---------------------------------------------------------------- resume


def test_documents_with_an_output_file_are_skipped_unless_overwrite(tree):
    documents, _ = expand_inputs(["scans"])
    out = tree / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "page.png.md").write_text("done")
    (out / "b").mkdir()
    (out / "b" / "page.png.md.part").write_text("interrupted")  # a half-written file does not count
    todo, skipped = pending(documents, out, "md", overwrite=False)
    assert [d.name for d in skipped] == ["a/page.png"]
    assert len(todo) == 4
    todo, skipped = pending(documents, out, "txt", overwrite=False)  # another format: its own files
    assert skipped == []
    todo, skipped = pending(documents, out, "md", overwrite=True)
    assert len(todo) == 5 and skipped == []


def test_results_of_documents_to_redo_and_cut_lines_are_dropped(tmp_path):
    results = tmp_path / "results.jsonl"
    lines = [{"source": "a.png", "page": 1}, {"source": "b.pdf", "page": 1}, {"source": "b.pdf", "page": 2}]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"source": "c.p')
    compact_results(results, {"b.pdf"})
    assert [json.loads(line) for line in results.read_text().splitlines()] == [{"source": "a.png", "page": 1}]


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), (" 0.5 ", 0.5), ("0", 0.0), (None, 1.0), ("", 1.0), ("soon", 1.0), ("nan", 1.0),
     ("-4", 0.0), ("86400", 30.0)],
)
def test_retry_after_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_retry_after_http_date():
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= parse_retry_after(in_ten) <= 10
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2026 25:00:00 GMT") == 1.0


# ---------------------------------------------------------------- pages, JSONL and documents

IMAGE_RESPONSE = {
    "id": "x", "model": "PP-OCRv6-small", "task": "spotting", "text": "HELLO\nWORLD",
    "boxes": [{"text": "HELLO", "bbox": [1, 2, 3, 4]}], "finish_reason": "stop", "warnings": [],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "timings_ms": {"total": 5.0},
}
PDF_RESPONSE = {
    "task": "text", "text": "first\n\nsecond", "usage": {"total_tokens": 9}, "warnings": [], "timings_ms": {},
    "pages": [
        {"page": 2, "text": "first\n", "warnings": [], "usage": {"total_tokens": 4}, "finish_reason": "stop"},
        {"page": 5, "text": "second", "warnings": ["cut"], "usage": {"total_tokens": 5}, "finish_reason": "length"},
    ],
}


def test_an_image_answer_is_one_page_numbered_1():
    pages = split_pages(IMAGE_RESPONSE)
    assert pages == [{"page": 1, "text": "HELLO\nWORLD", "boxes": [{"text": "HELLO", "bbox": [1, 2, 3, 4]}],
                      "warnings": [], "usage": IMAGE_RESPONSE["usage"], "finish_reason": "stop"}]
    record, = page_records("scans/a.png", "spotting", pages)
    assert list(record)[:4] == ["source", "page", "task", "text"]
    assert record["source"] == "scans/a.png" and record["boxes"] and "fields" not in record and "timings_ms" not in record


def test_a_pdf_answer_gives_one_record_per_page_with_its_number():
    records = page_records("doc.pdf", PDF_RESPONSE["task"], split_pages(PDF_RESPONSE))
    assert [(r["page"], r["text"], r["warnings"], r["usage"]["total_tokens"]) for r in records] == [
        (2, "first\n", [], 4), (5, "second", ["cut"], 5)]
    assert all(r["task"] == "text" for r in records)


def test_markdown_marks_every_page_and_text_separates_them_with_form_feeds():
    pages = split_pages(PDF_RESPONSE)
    assert render_document(pages, "md") == "<!-- page 2 -->\n\nfirst\n\n<!-- page 5 -->\n\nsecond\n"
    assert render_document(pages, "txt") == "first\n\fsecond\n"
    assert render_document(split_pages(IMAGE_RESPONSE), "md") == "<!-- page 1 -->\n\nHELLO\nWORLD\n"


def test_query_parameters_only_what_was_given_and_pages_only_for_pdfs():
    args = cli.build_parser().parse_args(["x", "-o", "out", "--task", "fields", "--fields", " company, total ,",
                                          "--pages", "1-3,7", "--max-tokens", "64"])
    assert request_params(args, is_pdf=False) == {"task": "fields", "fields": "company,total", "max_tokens": "64"}
    assert request_params(args, is_pdf=True)["pages"] == "1-3,7"


# ---------------------------------------------------------------- retries (in-process mock transport)

DOCUMENT = Document(path="a.png", source="a.png", name="a.png")


def answers(*responses: httpx.Response):
    calls: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handler), calls


def post(transport, retries=3):
    async def go():
        async with httpx.AsyncClient(transport=transport) as client:
            return await post_ocr(client, "http://server/ocr", DOCUMENT, b"img", {"task": "text"}, retries)
    return asyncio.run(go())


def error(status: int, message: str, **headers) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "t", "param": None, "code": status}},
                          headers=headers)


def test_503_and_429_are_retried_after_retry_after():
    transport, calls = answers(error(503, "busy", **{"Retry-After": "0"}), error(429, "slow down", **{"Retry-After": "0"}),
                               httpx.Response(200, json=IMAGE_RESPONSE))
    assert post(transport)["text"] == "HELLO\nWORLD"
    assert len(calls) == 3
    assert calls[0].headers["content-type"] == "image/png" and calls[0].url.params["task"] == "text"


def test_other_4xx_is_final_with_the_servers_message():
    transport, calls = answers(error(400, "The image could not be decoded."))
    with pytest.raises(DocumentError) as caught:
        post(transport)
    assert caught.value.status == 400 and "The image could not be decoded." in caught.value.message
    assert len(calls) == 1


def test_retries_run_out():
    transport, calls = answers(*[error(503, "busy", **{"Retry-After": "0"})] * 3)
    with pytest.raises(DocumentError, match="busy .gave up after 2 retries"):
        post(transport, retries=2)
    assert len(calls) == 3


def test_batch_end_to_end_with_resume_and_a_secret_key(tree, monkeypatch, capsys):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer s3cret"
        if request.url.path.endswith("/ocr") and request.content == b"x":
            return httpx.Response(200, json={**IMAGE_RESPONSE, "text": "ok"})
        return error(400, "bad")

    monkeypatch.setattr(cli.httpx, "AsyncClient", functools.partial(httpx.AsyncClient, transport=httpx.MockTransport(handler)))
    monkeypatch.setenv(cli.API_KEY_ENV, "s3cret")
    (tree / "scans" / "b" / "page.jpg").write_bytes(b"broken")
    (tree / "scans" / "huge.png").write_bytes(b"x" * 100)
    argv = ["scans", "missing", "-o", "out", "--url", "http://server/", "--max-bytes", "50", "-q"]
    assert cli.main(argv) == 1
    out = capsys.readouterr()
    assert "4 done, 0 skipped, 3 failed" in out.out
    errors = {e["source"]: e for e in map(json.loads, (tree / "out" / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"missing", "scans/b/page.jpg", "scans/huge.png"}
    assert errors["scans/b/page.jpg"]["status"] == 400 and "bad" in errors["scans/b/page.jpg"]["error"]
    assert "over --max-bytes 50" in errors["scans/huge.png"]["error"]
    assert (tree / "out" / "c" / "deep" / "er" / "x.tiff.md").read_text() == "<!-- page 1 -->\n\nok\n"
    assert len((tree / "out" / "results.jsonl").read_text().splitlines()) == 4
    assert "s3cret" not in out.out + out.err + (tree / "out" / "errors.jsonl").read_text()
    # The rerun redoes only what failed, and never duplicates finished pages.
    (tree / "scans" / "b" / "page.jpg").write_bytes(b"x")
    assert cli.main(argv) == 1
    assert "1 done, 4 skipped, 2 failed" in capsys.readouterr().out
    assert len((tree / "out" / "results.jsonl").read_text().splitlines()) == 5
    assert cli.main([*argv, "--overwrite"]) == 1
    assert len((tree / "out" / "results.jsonl").read_text().splitlines()) == 5
    assert not any(name.endswith(".part") for _, _, names in os.walk(tree / "out") for name in names)


def test_usage_errors_exit_2(tmp_path):
    for argv in (["a.png"], ["a.png", "-o", str(tmp_path), "--concurrency", "0"], ["a.png", "-o", str(tmp_path), "--task", "nope"],
                 ["a.png", "-o", str(tmp_path), "--url", "localhost:8000"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2


def test_lost_connections_are_retried_but_a_timeout_is_final(monkeypatch):
    monkeypatch.setattr(cli, "backoff", lambda attempt: 0.0)
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(502, text="Bad Gateway")
        return httpx.Response(200, json=IMAGE_RESPONSE)

    assert post(httpx.MockTransport(flaky))["task"] == "spotting" and len(calls) == 3

    def slow(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("slow")

    calls.clear()
    with pytest.raises(DocumentError, match="timeout"):
        post(httpx.MockTransport(slow))
    assert len(calls) == 1
