"""The service's processes on this machine, read from the processes themselves (psutil).

Ray names a replica's process `ray::ServeReplica:<app>:<deployment>`; a stage's processes are its replicas
plus their children (vLLM's engine core and worker run as children of the Decoder).
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


def tree_rss(processes: list[psutil.Process], include_roots: bool = True) -> int:
    """Bytes resident in these processes (unless not `include_roots`) and all their children (processes gone
    meanwhile count 0)."""
    total = 0
    for process in processes:
        try:
            family = [*([process] if include_roots else []), *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass
    return total


def rss_mib_by_stage(app: str | None = None, children_only: bool = False) -> dict[str, float]:
    """Deployment name -> MiB resident in its replicas and their child processes (or in the children alone)."""
    return {
        deployment: round(tree_rss(processes, include_roots=not children_only) / 2**20, 1)
        for deployment, processes in stage_processes(app).items()
    }


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds these processes have used so far (a process gone since counts 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total
