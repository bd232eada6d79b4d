"""Stop the decoder's vLLM processes when the decoder dies without stopping them.

While Ray's raylet runs, it kills the child processes of a replica that died. When the raylet dies
too (`ray stop --force`, the raylet killed for memory), vLLM's engine core and its workers outlive
the decoder: vLLM's engine core does not watch its parent, and they keep their memory (GPU memory
on a GPU, where the next start then fails) and poll the CPU. A small guard process next to them
watches instead: once the decoder is gone it kills them, and once they are gone it exits.

    python -m serve_app.engines.engine_guard <decoder pid> <poll seconds> <pid>:<create time> ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

POLL_S = 1.0


def child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def guard_children(existing: set[int], poll_s: float = POLL_S) -> subprocess.Popen | None:
    """Start a guard over this process's children except `existing` (what ran before the engine started)."""
    children = [child for child in psutil.Process().children(recursive=True) if child.pid not in existing]
    if not children:
        return None
    # pid and start time: a pid that a new process reuses later is not the engine's.
    targets = [f"{child.pid}:{child.create_time()!r}" for child in children]
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.engines.engine_guard", str(os.getpid()), str(poll_s), *targets],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # not in the decoder's process group: a signal meant for it is not for us
    )


def _alive(process: psutil.Process) -> bool:
    try:  # is_running also checks the start time, so a reused pid is not ours
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(parent_pid: int, poll_s: float, targets: list[psutil.Process]) -> None:
    while True:
        alive = [process for process in targets if _alive(process)]
        if not alive:
            return  # the engine stopped as it should
        if os.getppid() != parent_pid:  # re-parented: the decoder is gone
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            return
        time.sleep(poll_s)


def _targets(specs: list[str]) -> list[psutil.Process]:
    targets = []
    for spec in specs:
        pid, created = spec.split(":", 1)
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(int(pid))
            if process.create_time() == float(created):
                targets.append(process)
    return targets


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), _targets(sys.argv[3:]))
