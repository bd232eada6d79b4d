"""Preprocessing: a 12-megapixel JPEG to model input, transformers' reference path vs the Preprocessor's.

Times the Preprocessor stage's own code (ImagePreparer, no Ray) on a synthetic photo-like JPEG page
with text, for each pixel budget:

    old:   transformers' reference path: decode every pixel (decode_image without a target), then
           HunYuanVL's image processor (its bicubic resize, rescale, normalise, patchify)
    draft: the stage's path (ImagePreparer.prepare): decode_image with the model input size as target
           (libjpeg decodes at 1/2 or 1/4 scale when that still covers 1.5x the target in both sides)
           -> one bicubic resize -> 8-bit patches; a model input of 1 MP or more is resized in bands on
           `--image-threads` threads (default: the Preprocessor's default, 2), the same pixels as in one
           piece up to rounding. Timed up to the same float32 pixel_values as the old path: the patches'
           normalisation, which the VisionEncoder does in the service, is counted here too (numpy, 2 passes)

Runs alternate (old, draft, old, draft, ...: the machine's speed drifts) and the medians of wall time (the
latency; the speed-up the plot shows) and of CPU time (all threads: the cost) are compared, for the whole
preparation (bytes -> pixel_values) and for decode + resize alone. Quality: the two model inputs must have
the same size and grid; their difference is reported as mean/max abs difference of pixel_values (normalised
units) and of the resized RGB image (0..255), and PSNR of the latter; for scale, the PSNR between bicubic
and Lanczos resizes of the full decode (a change of filter nobody would call a loss of quality).

Budgets: "real" is the HunyuanOCR default (min/max_pixels 512*512 / 2048*2048), "cpu" is configs/cpu.yaml
(128*128 / 512*512). A JPEG is only drafted when 1.5x the model input (serve_app.inputs.images.DRAFT_GAP) is
at most half the image in both sides: at the real budget a 12 MP 4:3
photo (target 2336x1760) is decoded in full either way; at the cpu budget (576x416) it decodes at 1/4.

    python bench/preprocess.py                                  # 12 MP, both budgets, 7 runs each
    python bench/preprocess.py --runs 15 --megapixels 24 --out bench/results/preprocess-24mp.json
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib import ROOT  # noqa: E402
from bench.lib.plotting import pyplot_or_none, save_figure  # noqa: E402
from bench.lib.results import RESULTS, write_json  # noqa: E402
from serve_app.config import OCRAppConfig  # noqa: E402
from serve_app.profiles import TEXT_ZH  # noqa: E402
from serve_app.inputs.images import decode_image, fit_decoded  # noqa: E402

DEFAULT_OUT = RESULTS / "preprocess.json"
LINES = (
    "INVOICE No. 2026-11-28/0042        Date: 28 Nov 2026",
    "Qty  Description                          Unit      Total",
    "2    Ceramic mug, white, 350 ml            4.50      9.00",
    "1    Notebook A5, dotted, 120 pages        7.25      7.25",
    "3    Gel pen 0.5 mm, black                 1.10      3.30",
    "Subtotal 19.55   VAT 20% 3.91   TOTAL 23.46 EUR",
    "提取图中的文字 — 发票号码 0042 合计 23.46",
)


def budgets() -> dict[str, tuple[int, int]]:
    real = OCRAppConfig().model
    cpu = OCRAppConfig.from_serve_config(ROOT / "configs" / "cpu.yaml").model
    return {"real": (real.min_pixels, real.max_pixels), "cpu": (cpu.min_pixels, cpu.max_pixels)}


def image_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 landscape size of about `megapixels` (12 -> 4000x3000)."""
    height = max(8, round(math.sqrt(megapixels * 1e6 * 3 / 4)))
    return max(8, round(height * 4 / 3)), height


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where the system has it (Pillow looks a bare file name up in the system's font folders),
    Pillow's own default font otherwise."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def synthetic_photo(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG of a printed page: lit unevenly, sensor noise, lines of dark text."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 235 - 25 * ((x / width - 0.3) ** 2 + (y / height - 0.4) ** 2)
    base = np.stack([light, light * 0.98, light * 0.93], axis=-1) + rng.normal(0, 3, (height, width, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    font = _font(max(6, height // 60))
    step = max(8, height // 24)
    for row, top in enumerate(range(step, height - step, step)):
        draw.text((width // 20, top), LINES[row % len(LINES)], font=font, fill=(25, 25, 35))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _timed(function) -> tuple[float, float, object]:
    """Wall and CPU milliseconds (CPU time of all the process's threads)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    result = function()
    return (time.perf_counter() - started) * 1000, (time.process_time() - started_cpu) * 1000, result


def measure(data: bytes, budget: tuple[int, int], checkpoint: Path, runs: int, image_threads: int) -> dict:
    from serve_app.stages.preprocessor import ImagePreparer

    min_pixels, max_pixels = budget
    config = OCRAppConfig(
        model={"min_pixels": min_pixels, "max_pixels": max_pixels}, preprocessor={"image_threads": image_threads}
    )
    preparer = ImagePreparer(config, str(checkpoint))
    limits, instruction = config.limits, TEXT_ZH
    factor = preparer.resize_factor

    image_processor = preparer.processor.image_processor
    processor_size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}

    def old_prepare():
        features = image_processor(images=[decode_image(data, limits).image], size=processor_size, return_tensors="np")
        return features["pixel_values"], features["image_grid_thw"][0]

    def draft_prepare():
        prepared = preparer.prepare(data, instruction)
        return prepared, prepared.normalization.apply(prepared.pixels)

    def old_resize():
        return fit_decoded(decode_image(data, limits), factor, min_pixels, max_pixels)

    def draft_resize():
        decoded = decode_image(data, limits, target_size=preparer.model_size_for)
        return fit_decoded(decoded, factor, min_pixels, max_pixels, preparer.image_pool, preparer.image_threads)

    names = ("old_prepare", "draft_prepare", "old_resize", "draft_resize")
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    results = {}
    functions = (
        ("old_prepare", old_prepare),
        ("draft_prepare", draft_prepare),
        ("old_resize", old_resize),
        ("draft_resize", draft_resize),
    )
    for run in range(runs + 1):  # run 0 warms up and is not counted
        for name, function in functions if run % 2 else functions[::-1]:  # neither path always goes first
            elapsed, cpu, results[name] = _timed(function)
            if run:
                times[name].append(elapsed)
                cpu_times[name].append(cpu)

    (old_pixels, old_grid), (new, new_pixels) = results["old_prepare"], results["draft_prepare"]
    decoded = decode_image(data, limits, target_size=preparer.model_size_for)
    same_shape = old_pixels.shape == new_pixels.shape
    same_grid = bool(np.array_equal(old_grid, new.image_grid_thw))
    patch = image_processor.patch_size
    same_sizes = (int(old_grid[2]) * patch, int(old_grid[1]) * patch) == tuple(new.model_size) and (
        decoded.original_size == new.original_size
    )
    full_image = decode_image(data, limits).image
    lanczos = np.asarray(full_image.resize(results["old_resize"].size, Image.Resampling.LANCZOS), dtype=np.float64)
    old_rgb = np.asarray(results["old_resize"], dtype=np.float64)
    new_rgb = np.asarray(results["draft_resize"], dtype=np.float64)
    pixel_diff = np.abs(old_pixels - new_pixels) if same_shape else None
    rgb_diff = np.abs(old_rgb - new_rgb) if old_rgb.shape == new_rgb.shape else None
    mse = float(np.mean(rgb_diff**2)) if rgb_diff is not None else float("nan")
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    return {
        "budget": {"min_pixels": min_pixels, "max_pixels": max_pixels},
        "image_threads": image_threads,
        "model_size": list(new.model_size),
        "decoded_size": list(decoded.image.size),  # what the draft path decoded (oriented)
        "draft_scale": round(decoded.oriented_size[0] / decoded.image.size[0], 3),
        "median_ms": {
            "old_prepare": medians["old_prepare"],
            "draft_prepare": medians["draft_prepare"],
            "old_decode_resize": medians["old_resize"],
            "draft_decode_resize": medians["draft_resize"],
        },
        "median_cpu_ms": {
            "old_prepare": cpu_medians["old_prepare"],
            "draft_prepare": cpu_medians["draft_prepare"],
            "old_decode_resize": cpu_medians["old_resize"],
            "draft_decode_resize": cpu_medians["draft_resize"],
        },
        "speedup": {
            "prepare": medians["old_prepare"] / medians["draft_prepare"],
            "decode_resize": medians["old_resize"] / medians["draft_resize"],
        },
        "cpu_speedup": {
            "prepare": cpu_medians["old_prepare"] / max(cpu_medians["draft_prepare"], 1e-6),
            "decode_resize": cpu_medians["old_resize"] / max(cpu_medians["draft_resize"], 1e-6),
        },
        "quality": {
            "same_shape": same_shape,
            "same_grid": same_grid,
            "same_sizes": same_sizes,
            "pixel_values_mean_abs_diff": float(pixel_diff.mean()) if pixel_diff is not None else None,
            "pixel_values_max_abs_diff": float(pixel_diff.max()) if pixel_diff is not None else None,
            "rgb_mean_abs_diff": float(rgb_diff.mean()) if rgb_diff is not None else None,
            "rgb_max_abs_diff": float(rgb_diff.max()) if rgb_diff is not None else None,
            # Same resized pixels, and model inputs equal to float32 rounding (two paths of arithmetic).
            "identical": bool(rgb_diff is not None and mse == 0 and pixel_diff is not None and pixel_diff.max() < 1e-5),
            "rgb_psnr_db": 10 * math.log10(255**2 / mse) if rgb_diff is not None and mse > 0 else None,  # None: identical
            "bicubic_vs_lanczos_psnr_db": 10 * math.log10(255**2 / max(float(np.mean((lanczos - old_rgb) ** 2)), 1e-12)),
        },
        "runs_ms": times,
        "runs_cpu_ms": cpu_times,
    }


def plot(report: dict, path: Path) -> Path | None:
    plt = pyplot_or_none()
    if plt is None:
        return None
    names = list(report["budgets"])
    old = [report["budgets"][name]["median_ms"]["old_prepare"] for name in names]
    new = [report["budgets"][name]["median_ms"]["draft_prepare"] for name in names]
    positions = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    axes.bar(positions - 0.2, old, 0.4, label="full decode + image processor")
    axes.bar(positions + 0.2, new, 0.4, label="Preprocessor (draft decode, one resize, patches)")
    for position, name, value in zip(positions, names, new):
        entry = report["budgets"][name]
        label = f"{entry['speedup']['prepare']:.1f}x" + ("" if entry["draft_scale"] > 1 else " (not drafted)")
        axes.annotate(label, (position + 0.2, value), ha="center", va="bottom", fontsize=9)
    axes.set_xticks(positions, [f"{name}\n{'x'.join(map(str, report['budgets'][name]['model_size']))}" for name in names])
    width, height = report["image"]["size"]
    axes.set_ylabel(f"median ms to model input ({report['runs']} runs)")
    axes.set_title(f"{width}x{height} JPEG -> model input ({report['image_threads']} image threads)")
    axes.legend()
    return save_figure(figure, path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per path (after one warm-up)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the synthetic 4:3 JPEG")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report; the plot goes next to it (.png)")
    parser.add_argument("--budget", choices=("real", "cpu"), action="append", help="budget(s) to run (default: all)")
    parser.add_argument("--checkpoint", type=Path, help="a HunyuanOCR processor checkpoint (default: the tiny one)")
    parser.add_argument(
        "--image-threads",
        type=int,
        default=OCRAppConfig().preprocessor.image_threads,
        help="preprocessor.image_threads of the stage's path (1: one core per image)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    if args.checkpoint is None:
        from serve_app.model.tiny_checkpoint import ensure_tiny_checkpoint

        args.checkpoint = ensure_tiny_checkpoint()
    size = image_size(args.megapixels)
    data = synthetic_photo(size)
    report = {
        "image": {"size": list(size), "megapixels": size[0] * size[1] / 1e6, "jpeg_bytes": len(data)},
        "runs": args.runs,
        "image_threads": args.image_threads,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "budgets": {},
    }
    for name, budget in budgets().items():
        if args.budget and name not in args.budget:
            continue
        entry = measure(data, budget, args.checkpoint, args.runs, args.image_threads)
        report["budgets"][name] = entry
        medians, cpu, quality = entry["median_ms"], entry["median_cpu_ms"], entry["quality"]
        print(
            f"{name:>4} budget {budget[0]}..{budget[1]} px, {size[0]}x{size[1]} -> model {entry['model_size']} "
            f"(draft decodes {entry['decoded_size']}, 1/{entry['draft_scale']:g}):\n"
            f"     to model input  {medians['old_prepare']:7.1f} ms -> {medians['draft_prepare']:7.1f} ms "
            f"= {entry['speedup']['prepare']:.2f}x  (CPU {cpu['old_prepare']:.1f} -> {cpu['draft_prepare']:.1f} ms "
            f"= {entry['cpu_speedup']['prepare']:.2f}x)\n"
            f"     decode + resize {medians['old_decode_resize']:7.1f} ms -> {medians['draft_decode_resize']:7.1f} ms "
            f"= {entry['speedup']['decode_resize']:.2f}x  (CPU {cpu['old_decode_resize']:.1f} -> "
            f"{cpu['draft_decode_resize']:.1f} ms = {entry['cpu_speedup']['decode_resize']:.2f}x)\n"
            f"     same shape/grid/sizes {quality['same_shape']}/{quality['same_grid']}/{quality['same_sizes']}, "
            f"pixel_values mean|max abs diff {quality['pixel_values_mean_abs_diff']:.4f}|"
            f"{quality['pixel_values_max_abs_diff']:.3f}, RGB mean abs diff {quality['rgb_mean_abs_diff']:.3f}/255, "
            + ("identical" if quality["identical"] else f"PSNR {quality['rgb_psnr_db']:.1f} dB")
            + f" (bicubic vs Lanczos: {quality['bicubic_vs_lanczos_psnr_db']:.1f} dB)"
        )
    write_json(report, args.out, allow_nan=False)
    png = plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return report


if __name__ == "__main__":
    main()
