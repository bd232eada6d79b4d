"""OCR accuracy of a running deployment (over HTTP) on a folder of SROIE-style receipts.

Each image `NNN.jpg` comes with `NNN.csv`, one ground-truth (GT) text line a row:
`x1,y1,x2,y2,x3,y3,x4,y4,text` (the line's quadrilateral in pixels; the text may contain commas).
Every image is sent as `POST {url}/ocr?task=spotting` with the raw bytes as body; the reply is read as
`{"text": "...", "boxes": [{"text": "...", "bbox": [x1, y1, x2, y2]}, ...]}`, bbox in the image's pixels.

Metrics (all text compared after `normalize_text`: strip, collapse runs of whitespace to one space,
case-insensitive via casefold; SROIE's GT is upper-cased, so case is not held against a model):

- line recall / precision / F1: a predicted line matches a GT line when the IoU of their axis-aligned
  boxes is >= 0.5 AND their normalised texts are equal; one-to-one, greedy by IoU. recall = matches / GT lines,
  precision = matches / predicted lines (both 1.0 when there is nothing to find and nothing was predicted;
  0.0 when one side is empty and the other is not).
- line CER: predicted and GT lines paired by IoU >= 0.5 alone (one-to-one, greedy by IoU), then
  sum of edit distances / sum of GT lengths over those pairs (unpaired lines count in recall/precision only).
- end-to-end CER: all predicted text (the reply's `text`, in the deployment's reading order) against all GT
  lines joined in file order, both normalised: edit distance / GT length.

Line metrics need boxes; for a deployment that returns none they are reported as null and only the
end-to-end CER is computed. A request that fails counts as an empty prediction and is listed in `errors`.
Totals are micro-averaged (sums of counts / edits over all images); `e2e_cer_mean` is the mean per image.

    python bench/accuracy.py                                  # the service at http://127.0.0.1:8000
    python bench/accuracy.py --direct-rapidocr                # rapidocr.RapidOCR() in-process instead
    python bench/accuracy.py --compare-direct --url http://127.0.0.1:8000 --out bench/results/acc.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib.images import DEFAULT_IMAGES  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402

DEFAULT_DATA = DEFAULT_IMAGES.resolve()
DEFAULT_OUT = RESULTS / "accuracy.json"
IOU_THRESHOLD = 0.5

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass
class Line:
    text: str
    bbox: Box


# ---------------------------------------------------------------- pure metric functions


def normalize_text(text: str) -> str:
    """Strip, collapse every run of whitespace to one space, casefold."""
    return " ".join(text.split()).casefold()


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    # Common prefix and suffix cost nothing.
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(prediction: str, reference: str) -> float:
    """Character error rate of raw strings: edit distance / len(reference).
    An empty reference gives 0.0 for an empty prediction and 1.0 otherwise."""
    if not reference:
        return 0.0 if not prediction else 1.0
    return levenshtein(prediction, reference) / len(reference)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two axis-aligned boxes (x1, y1, x2, y2)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _greedy_pairs(pred: list[Line], gt: list[Line], threshold: float, same_text: bool) -> list[tuple[int, int]]:
    """One-to-one (pred index, gt index) pairs with IoU >= threshold, highest IoU first."""
    candidates = []
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            overlap = iou(p.bbox, g.bbox)
            if overlap >= threshold and (not same_text or normalize_text(p.text) == normalize_text(g.text)):
                candidates.append((overlap, i, j))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return pairs


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den else empty


def line_metrics(pred: list[Line] | None, gt: list[Line], iou_threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """Line-level recall/precision/F1 and line CER for one image (see the module docstring).
    `pred` None (a deployment without boxes) gives nulls. Raw counts are included for micro-averaging."""
    if pred is None:
        return {"gt_lines": len(gt), "pred_lines": None, "matched": None, "recall": None, "precision": None,
                "f1": None, "iou_pairs": None, "line_edits": None, "line_chars": None, "line_cer": None}
    matched = len(_greedy_pairs(pred, gt, iou_threshold, same_text=True))
    pairs = _greedy_pairs(pred, gt, iou_threshold, same_text=False)
    edits = sum(levenshtein(normalize_text(pred[i].text), normalize_text(gt[j].text)) for i, j in pairs)
    chars = sum(len(normalize_text(gt[j].text)) for _, j in pairs)
    return _with_rates({"gt_lines": len(gt), "pred_lines": len(pred), "matched": matched,
                        "iou_pairs": len(pairs), "line_edits": edits, "line_chars": chars})


def _with_rates(counts: dict[str, Any]) -> dict[str, Any]:
    gt_n, pred_n, matched = counts["gt_lines"], counts["pred_lines"], counts["matched"]
    both_empty = 1.0 if gt_n == 0 and pred_n == 0 else 0.0
    recall = _ratio(matched, gt_n, both_empty)
    precision = _ratio(matched, pred_n, both_empty)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    line_cer = counts["line_edits"] / counts["line_chars"] if counts["line_chars"] else None
    return {**counts, "recall": recall, "precision": precision, "f1": f1, "line_cer": line_cer}


def end_to_end(pred_text: str, gt: list[Line]) -> dict[str, Any]:
    """All predicted text vs all GT lines joined in order, normalised: edits, GT length, CER."""
    prediction = normalize_text(pred_text)
    reference = normalize_text(" ".join(line.text for line in gt))
    edits = levenshtein(prediction, reference)
    return {"e2e_edits": edits, "e2e_chars": len(reference), "e2e_cer": cer(prediction, reference)}


def evaluate_image(pred_text: str, pred_lines: list[Line] | None, gt: list[Line]) -> dict[str, Any]:
    return {**line_metrics(pred_lines, gt), **end_to_end(pred_text, gt)}


def aggregate(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro-averaged totals over images; line metrics null when any image lacked boxes."""
    total: dict[str, Any] = {"images": len(per_image), "gt_lines": sum(r["gt_lines"] for r in per_image)}
    if per_image and all(r["pred_lines"] is not None for r in per_image):
        for key in ("pred_lines", "matched", "iou_pairs", "line_edits", "line_chars"):
            total[key] = sum(r[key] for r in per_image)
        total = _with_rates(total)
    else:
        total.update({k: None for k in ("pred_lines", "matched", "iou_pairs", "line_edits", "line_chars",
                                        "recall", "precision", "f1", "line_cer")})
    edits, chars = sum(r["e2e_edits"] for r in per_image), sum(r["e2e_chars"] for r in per_image)
    total["e2e_edits"], total["e2e_chars"] = edits, chars
    total["e2e_cer"] = edits / chars if chars else 0.0
    total["e2e_cer_mean"] = sum(r["e2e_cer"] for r in per_image) / len(per_image) if per_image else None
    return total


# ---------------------------------------------------------------- data and predictions


def bbox_of(points: Sequence[float] | Sequence[Sequence[float]]) -> Box:
    """[x1, y1, x2, y2], a flat quad [x1, y1, ..., x4, y4] or [[x, y], ...] -> (x1, y1, x2, y2)."""
    flat = [float(v) for p in points for v in (p if isinstance(p, (list, tuple)) else [p])]
    if len(flat) == 4:
        x1, y1, x2, y2 = flat
        return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
    xs, ys = flat[0::2], flat[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def read_gt(csv_path: Path) -> list[Line]:
    lines = []
    for row in csv_path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        parts = row.split(",", 8)
        if len(parts) < 9 or not row.strip():
            continue
        lines.append(Line(parts[8], bbox_of([float(v) for v in parts[:8]])))
    return lines


def load_dataset(folder: Path) -> list[tuple[str, Path, list[Line]]]:
    items = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        csv_path = image.with_suffix(".csv")
        if csv_path.exists():
            items.append((image.stem, image, read_gt(csv_path)))
    if not items:
        raise SystemExit(f"No NNN.jpg + NNN.csv pairs in {folder}")
    return items


def parse_response(body: dict[str, Any]) -> tuple[str, list[Line] | None]:
    """The deployment's JSON -> (text, lines or None when it returned no boxes)."""
    boxes = body.get("boxes")
    lines = None
    if isinstance(boxes, list):
        lines = [Line(str(b.get("text", "")), bbox_of(b["bbox"])) for b in boxes if b.get("bbox") is not None]
    text = body.get("text")
    if text is None:
        text = "\n".join(line.text for line in lines or [])
    return str(text), lines


async def predict_http(url: str, items, concurrency: int, timeout: float) -> list[dict[str, Any]]:
    import httpx

    semaphore = asyncio.Semaphore(max(1, concurrency))
    endpoint = url.rstrip("/") + "/ocr"

    async def one(client, name: str, path: Path) -> dict[str, Any]:
        async with semaphore:
            started = time.perf_counter()
            try:
                reply = await client.post(endpoint, params={"task": "spotting"}, content=path.read_bytes(),
                                          headers={"content-type": "image/jpeg" if path.suffix.lower() != ".png"
                                                   else "image/png"})
                seconds = time.perf_counter() - started
                if reply.status_code != 200:
                    return {"name": name, "text": "", "lines": [], "seconds": seconds,
                            "error": f"HTTP {reply.status_code}: {reply.text[:300]}"}
                text, lines = parse_response(reply.json())
                return {"name": name, "text": text, "lines": lines, "seconds": seconds, "error": None}
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                return {"name": name, "text": "", "lines": [], "seconds": time.perf_counter() - started,
                        "error": f"{type(error).__name__}: {error}"}

    async with httpx.AsyncClient(timeout=timeout) as client:
        return await asyncio.gather(*(one(client, name, path) for name, path, _ in items))


def predict_direct(items) -> list[dict[str, Any]]:
    """rapidocr.RapidOCR() with its default configuration (the bundled PP-OCRv6 small models), in-process."""
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.log_level": "warning"})
    results = []
    for name, path, _ in items:
        started = time.perf_counter()
        output = engine(str(path))  # a path: rapidocr applies EXIF orientation and RGB->BGR itself
        texts = list(output.txts or [])
        boxes = [] if output.boxes is None else list(output.boxes)
        lines = [Line(str(t), bbox_of(b.tolist())) for t, b in zip(texts, boxes)]
        results.append({"name": name, "text": "\n".join(texts), "lines": lines,
                        "seconds": time.perf_counter() - started, "error": None})
    return results


def score_run(label: str, items, predictions) -> dict[str, Any]:
    gt_by_name = {name: gt for name, _, gt in items}
    per_image = []
    for p in predictions:
        metrics = evaluate_image(p["text"], p["lines"], gt_by_name[p["name"]])
        per_image.append({"name": p["name"], "seconds": round(p["seconds"], 3), "error": p["error"], **metrics})
    overall = aggregate(per_image)
    overall["seconds_mean"] = sum(r["seconds"] for r in per_image) / len(per_image)
    return {"label": label, "overall": overall, "per_image": per_image,
            "errors": [{"name": r["name"], "error": r["error"]} for r in per_image if r["error"]]}


# ---------------------------------------------------------------- report


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(runs: list[dict[str, Any]]) -> None:
    cols = ("recall", "precision", "line_cer", "e2e_cer", "seconds")
    head = f"{'image':<8}{'gt':>5}"
    for run in runs:
        head += " | " + f"{run['label'][:14]:<14}" + "".join(f"{c[:9]:>10}" for c in ("pred",) + cols)
    print(head)
    print("-" * len(head))
    rows = [[r["per_image"][i] for r in runs] for i in range(len(runs[0]["per_image"]))]
    rows.append([{**r["overall"], "name": "overall", "seconds": r["overall"]["seconds_mean"]} for r in runs])
    for row in rows:
        line = f"{row[0]['name']:<8}{row[0]['gt_lines']:>5}"
        for run, r in zip(runs, row):
            flag = " (error)" if r.get("error") else ""
            line += " | " + f"{flag:<14}" + "".join(f"{_fmt(r[c]):>10}" for c in ("pred_lines",) + cols)
        print(line)
    for run in runs:
        o = run["overall"]
        print(f"{run['label']}: line recall {_fmt(o['recall'])}, precision {_fmt(o['precision'])}, "
              f"F1 {_fmt(o['f1'])}, line CER {_fmt(o['line_cer'])}, end-to-end CER {_fmt(o['e2e_cer'])} "
              f"(mean per image {_fmt(o['e2e_cer_mean'])}), {len(run['errors'])} errors")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment's base URL")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of NNN.jpg + NNN.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--direct-rapidocr", action="store_true", help="run rapidocr.RapidOCR() in-process instead")
    mode.add_argument("--compare-direct", action="store_true", help="run the URL and rapidocr direct, side by side")
    args = parser.parse_args(argv)

    data = args.data.resolve()
    items = load_dataset(data)
    runs = []
    if not args.direct_rapidocr:
        predictions = asyncio.run(predict_http(args.url, items, args.concurrency, args.timeout))
        runs.append(score_run(args.url, items, predictions))
    if args.direct_rapidocr or args.compare_direct:
        runs.append(score_run("rapidocr-direct", items, predict_direct(items)))

    print_table(runs)
    report = {"data": str(data), "url": None if args.direct_rapidocr else args.url, "iou_threshold": IOU_THRESHOLD,
              "normalization": "strip, collapse whitespace, casefold", "runs": runs}
    print(f"wrote {write_json(report, args.out)}")
    return report


if __name__ == "__main__":
    # Exit status 1 when any request failed (the report is written either way).
    sys.exit(1 if any(run["errors"] for run in main()["runs"]) else 0)
