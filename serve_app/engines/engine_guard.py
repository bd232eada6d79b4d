"""Stop the decoder's vLLM processes when the decoder dies without stopping them.

While Ray's raylet runs, it kills the child processes of a replica that died. When the raylet dies
too (`ray stop --force`, the raylet killed for memory), vLLM's engine core and its workers outlive
the decoder: vLLM's engine core does not watch its parent, and they keep their memory (GPU memory
on a GPU, where the next start then fails) and poll the CPU. A small guard process next to them
watches instead: once the decoder is gone it kills them, and once they are gone it exits.

    python -m serve_app.engines.engine_guard <decoder pid> <poll seconds> <pid>:<create time> ...

A decoder that replaces a dead one on the same GPU must also wait for those processes to be gone (their GPU
memory is freed only when they exit), or vLLM's start fails for memory: `record_engine` writes each engine's
processes, with its decoder's, to a small file per GPU set on this node; `wait_for_orphaned_engines`, called
before the next engine starts, kills the recorded processes of decoders that are gone and waits until they
have exited.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

POLL_S = 1.0
# Longest a starting engine waits for a dead decoder's engine processes to exit.
ORPHAN_WAIT_S = 60.0

logger = logging.getLogger(__name__)


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


def engines_dir(visible_devices: str | None = None) -> Path:
    """This node's record of running engines on the GPUs in `visible_devices` (CUDA_VISIBLE_DEVICES by
    default): any engine of any deployment there holds memory that the next one on these GPUs needs."""
    if visible_devices is None:
        visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    key = re.sub(r"[^A-Za-z0-9,_-]", "_", visible_devices.strip() or "none")[:100]
    return Path(tempfile.gettempdir()) / "hunyuan-ocr-engines" / f"gpus-{key}"


def _process_spec(process: psutil.Process) -> list:
    return [process.pid, process.create_time()]


def record_engine(directory: Path, existing: set[int], name: str = "") -> Path | None:
    """Write this process's children except `existing` (the engine's processes), with this process as their
    decoder, to `directory`/<pid>.json; the file's path (None: no engine processes, or it cannot be written)."""
    engine = []
    for child in psutil.Process().children(recursive=True):
        if child.pid not in existing:
            with contextlib.suppress(psutil.Error):
                engine.append(_process_spec(child))
    if not engine:
        return None
    record = {"name": name, "decoder": _process_spec(psutil.Process()), "processes": engine}
    path = directory / f"{os.getpid()}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)  # whole or not at all for a reader
    except OSError as error:
        logger.warning("could not record the engine's processes in %s: %s", directory, error)
        return None
    return path


def _process(spec) -> psutil.Process | None:
    """The live process of a recorded [pid, create time] (not a later process that reuses the pid)."""
    try:
        process = psutil.Process(int(spec[0]))
        if process.create_time() == float(spec[1]) and _alive(process):
            return process
    except (psutil.Error, ValueError, TypeError, IndexError):
        pass
    return None


def _orphans(directory: Path) -> dict[Path, tuple[dict, list[psutil.Process]]]:
    """Records of decoders that are gone whose engine processes still run; records with none left are removed."""
    found = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            decoder_spec, specs = record["decoder"], record["processes"]
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if _process(decoder_spec) is not None:
            continue  # a live decoder (another replica on these GPUs): its engine is in use, not ours to wait for
        alive = [process for process in map(_process, specs) if process is not None]
        if alive:
            found[path] = (record, alive)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return found


def wait_for_orphaned_engines(
    directory: Path, timeout_s: float = ORPHAN_WAIT_S, poll_s: float = 0.2
) -> list[int]:
    """Kill the recorded engine processes of decoders that are gone and wait (at most `timeout_s`) until they
    have exited, so their GPU memory is free; the pids still alive at the timeout (empty: none)."""
    deadline = time.monotonic() + timeout_s
    announced: set[int] = set()
    while True:
        orphans = _orphans(directory)
        alive = [process for _, processes in orphans.values() for process in processes]
        if not alive:
            return []
        for record, processes in orphans.values():
            new = [process.pid for process in processes if process.pid not in announced]
            if new:
                logger.info(
                    "waiting for the engine processes %s of the stopped decoder %s (pid %s) to exit and free the GPU",
                    new, record.get("name") or "", record["decoder"][0],
                )
                announced.update(new)
            for process in processes:  # its guard does this too, unless it died with it
                with contextlib.suppress(psutil.Error):
                    process.kill()
        if time.monotonic() >= deadline:
            pids = sorted(process.pid for process in alive)
            logger.warning(
                "engine processes %s of a stopped decoder still run after %.0f s; starting anyway (the start may "
                "fail for GPU memory until they are gone)", pids, timeout_s,
            )
            return pids
        time.sleep(poll_s)


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), _targets(sys.argv[3:]))
