"""The batch command line against the real PP-OCR deployment: rendered pages read back, a corrupt
file reported with the server's message, and a rerun that skips every finished document."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from serve_app import cli
from tests.conftest import render_text_page, to_bytes
from tests.integration.conftest import BASE_URL, LITE_ROUTE

pytestmark = pytest.mark.integration

URL = f"{BASE_URL}{LITE_ROUTE}"
PAGES = {  # same file name in two folders, and two formats
    "a/page.png": ("HELLO 101",),
    "b/page.png": ("WORLD 202",),
    "invoice.jpg": ("INVOICE 12345", "TOTAL 42.50"),
}
BROKEN = b"\x89PNG\r\n\x1a\n this is not an image"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_reads_a_folder_reports_the_broken_file_and_resumes(served, tmp_path, capsys):
    scans, out = tmp_path / "scans", tmp_path / "out"
    for name, lines in PAGES.items():
        (scans / name).parent.mkdir(parents=True, exist_ok=True)
        image = render_text_page(lines, size=(520, 220))
        (scans / name).write_bytes(to_bytes(image, "JPEG", quality=95) if name.endswith(".jpg") else to_bytes(image))
    (scans / "broken.png").write_bytes(BROKEN)
    (scans / "notes.txt").write_text("not a document")  # ignored inside a folder
    server_message = httpx.post(f"{URL}/ocr", content=BROKEN, timeout=60).json()["error"]["message"]

    argv = [str(scans), "-o", str(out), "--url", URL, "--concurrency", "2", "--quiet"]
    assert cli.main(argv) == 1
    summary = capsys.readouterr()
    assert "3 done, 0 skipped, 1 failed" in summary.out and "pages: 3" in summary.out
    assert "broken.png" in summary.err and server_message in summary.err

    records = read_jsonl(out / "results.jsonl")
    by_source = {os.path.relpath(r["source"], scans): r for r in records}
    assert set(by_source) == set(PAGES) and len(records) == 3
    for name, lines in PAGES.items():
        record = by_source[name]
        assert record["page"] == 1 and record["task"] == "text" and record["warnings"] == []
        assert record["text"].splitlines() == list(lines)  # PP-OCR really read the rendered page
        markdown = (out / f"{name}.md").read_text(encoding="utf-8")
        assert markdown.startswith("<!-- page 1 -->") and all(line in markdown for line in lines)
    assert not (out / "broken.png.md").exists()

    error, = read_jsonl(out / "errors.jsonl")
    assert error["source"].endswith("broken.png") and error["status"] == 400
    assert server_message in error["error"]

    # Second run: finished documents are not sent again (outputs untouched), only the broken one is retried.
    finished = {name: (out / f"{name}.md").stat().st_mtime_ns for name in PAGES}
    results_before = (out / "results.jsonl").read_bytes()
    assert cli.main(argv) == 1
    summary = capsys.readouterr()
    assert "0 done, 3 skipped, 1 failed" in summary.out and "pages: 0" in summary.out
    assert {name: (out / f"{name}.md").stat().st_mtime_ns for name in PAGES} == finished
    assert (out / "results.jsonl").read_bytes() == results_before
    error, = read_jsonl(out / "errors.jsonl")
    assert error["source"].endswith("broken.png") and server_message in error["error"]

    # Once the file is fixed, the rerun does just that one.
    (scans / "broken.png").write_bytes(to_bytes(render_text_page(("FIXED 7",), size=(520, 220))))
    assert cli.main(argv) == 0
    assert "1 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "broken.png.md").read_text(encoding="utf-8") == "<!-- page 1 -->\n\nFIXED 7\n"
    assert len(read_jsonl(out / "results.jsonl")) == 4 and read_jsonl(out / "errors.jsonl") == []


def test_spotting_to_text_files_with_a_single_file_and_a_glob(served, tmp_path, capsys):
    (tmp_path / "one.png").write_bytes(to_bytes(render_text_page(("SPOT 99",), size=(520, 220))))
    out = tmp_path / "out"
    argv = [str(tmp_path / "one.png"), str(tmp_path / "*.webp"), "-o", str(out), "--url", URL, "--task", "spotting",
            "--format", "txt", "--quiet"]
    assert cli.main(argv) == 1  # the glob matches nothing: an error for that input, the file is still read
    assert "1 done, 0 skipped, 1 failed" in capsys.readouterr().out
    record, = read_jsonl(out / "results.jsonl")
    assert record["task"] == "spotting" and [box["text"] for box in record["boxes"]] == ["SPOT 99"]
    assert (out / "one.png.txt").read_text(encoding="utf-8") == "SPOT 99\n"
    assert "matches no images" in read_jsonl(out / "errors.jsonl")[0]["error"]
