"""Resident memory of each Ray Serve stage on this machine, read from the processes themselves.

Ray names a replica's process `ray::ServeReplica:<app>:<deployment>`; a stage's memory is the RSS of
its replicas plus their children (vLLM's engine core and worker run as children of the Decoder).
"""

from __future__ import annotations

import re

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
