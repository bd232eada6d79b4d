"""matplotlib for the bench scripts' PNGs (a dev extra: without it a script still prints and saves its JSON),
and the plots more than one script draws."""

from __future__ import annotations

import sys
from pathlib import Path


def pyplot_or_none():
    """matplotlib.pyplot on the Agg backend (files only, no display), or None (said on stderr) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    return plt


def save_figure(figure, path: Path, dpi: int = 110) -> Path:
    """Lay the figure out, write it as `path` (its folder created) and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def plot_sweep(report: dict, path: Path, title: str | None = None) -> Path | None:
    """A concurrency sweep (bench.lib.sweep's report): throughput (left) and latency (right) vs concurrency."""
    plt = pyplot_or_none()
    if plt is None:
        return None
    levels = report["levels"]
    xs = [level["concurrency"] for level in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [level["requests_per_s"] for level in levels], "o-", label="requests/s")
    left.plot(xs, [level["pages_per_s"] for level in levels], "s--", label="pages/s")
    left.set_ylabel("requests/s, pages/s")
    tokens_axis = left.twinx()
    tokens_axis.plot(xs, [level["output_tokens_per_s"] for level in levels], "^:", color="tab:green", label="output tokens/s")
    tokens_axis.set_ylabel("output tokens/s")
    handles = left.get_legend_handles_labels()[0] + tokens_axis.get_legend_handles_labels()[0]
    left.legend(handles, [handle.get_label() for handle in handles], loc="upper left", fontsize=8)
    left.set_title("throughput")
    left.set_ylim(bottom=0)
    tokens_axis.set_ylim(bottom=0)
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "x:"), ("ttft_p50_ms", "^-.")):
        points = [(level["concurrency"], level[key]) for level in levels if level.get(key) is not None]
        if points:
            right.plot([x for x, _ in points], [y for _, y in points], style, label=key.replace("_ms", "").replace("_", " "))
    right.set_ylabel("latency (ms)")
    right.set_ylim(bottom=0)
    right.set_title("latency")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xlabel("concurrency")
        if len(set(xs)) > 1 and min(xs) > 0:
            axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [str(x) for x in xs])
        axis.grid(alpha=0.3)
    mix = ",".join(f"{name}={weight:g}" for name, weight in report["mix"].items())
    figure.suptitle(title or f"{report['url']}   mix {mix}   max_tokens {report['max_tokens']}", fontsize=9)
    return save_figure(figure, path)


def plot_memory(samples: list[dict], stages, path: Path, title: str, seconds_per_unit: float = 1.0,
                unit: str = "seconds") -> Path | None:
    """RSS per stage over time (samples: {"t": seconds, "rss_mib": {stage: MiB}}) as a PNG; None without matplotlib."""
    plt = pyplot_or_none()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for stage in stages:
        axis.plot([s["t"] / seconds_per_unit for s in samples], [s["rss_mib"].get(stage, 0) for s in samples], label=stage)
    axis.set_xlabel(unit)
    axis.set_ylabel("RSS (MiB, replicas + children)")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path, dpi=100)
