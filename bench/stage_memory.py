"""Resident memory of each Ray Serve stage on this machine, read from the processes themselves.

Ray names a replica's process `ray::ServeReplica:<app>:<deployment>`; a stage's memory is the RSS of
its replicas plus their children (vLLM's engine core and worker run as children of the Decoder).
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil

_REPLICA = re.compile(r"ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[A-Za-z0-9_]+)")


def stage_processes(app: str | None = None) -> dict[str, list[psutil.Process]]:
    """Deployment name -> its replica processes (of `app`, or of every app)."""
    stages: dict[str, list[psutil.Process]] = {}
    for process in psutil.process_iter(["cmdline"]):
        match = _REPLICA.search(" ".join(process.info["cmdline"] or []))
        if match and (app is None or match["app"] == app):
            stages.setdefault(match["deployment"], []).append(process)
    return stages


def rss_mib_by_stage(app: str | None = None) -> dict[str, float]:
    """Deployment name -> MiB resident in its replicas and their child processes."""
    usage: dict[str, float] = {}
    for deployment, processes in stage_processes(app).items():
        total = 0
        for process in processes:
            try:
                family = [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in family:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        usage[deployment] = round(total / 2**20, 1)
    return usage


def plot_memory(samples: list[dict], stages, path: Path, title: str, seconds_per_unit: float = 1.0,
                unit: str = "seconds") -> Path | None:
    """RSS per stage over time (samples: {"t": seconds, "rss_mib": {stage: MiB}}) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for stage in stages:
        axis.plot([s["t"] / seconds_per_unit for s in samples], [s["rss_mib"].get(stage, 0) for s in samples], label=stage)
    axis.set_xlabel(unit)
    axis.set_ylabel("RSS (MiB, replicas + children)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
