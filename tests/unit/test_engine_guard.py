"""The guard that stops vLLM's processes when the decoder dies without stopping them: real processes,
a `sleep` standing in for the engine core."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in decoder: one child it had before the engine, one "engine" child started after, then the
# guard over the new ones. It prints the pids and waits for a line on stdin: "stop" stops its engine
# the normal way (kill and reap), then it keeps running.
DECODER = """
import json, subprocess, sys
from serve_app.engines.engine_guard import child_pids, guard_children
before_engine = subprocess.Popen(["sleep", "300"])
existing = child_pids()
engine = subprocess.Popen(["sleep", "300"])
guard = guard_children(existing, poll_s=0.1)
print(json.dumps({"existing": before_engine.pid, "engine": engine.pid, "guard": guard.pid}), flush=True)
if sys.stdin.readline().strip() == "stop":
    engine.kill(); engine.wait()
    print(json.dumps({"guard_exit": guard.wait(timeout=10)}), flush=True)
sys.stdin.readline()
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


@pytest.fixture
def decoder():
    process = subprocess.Popen(
        [sys.executable, "-c", DECODER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    pids = json.loads(process.stdout.readline())
    yield process, pids
    process.kill()
    process.wait()
    for pid in pids.values():
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_decoder_takes_its_engine_processes_with_it(decoder):
    process, pids = decoder
    assert not gone(pids["engine"])
    process.kill()  # SIGKILL: no cleanup code of the decoder runs
    process.wait()
    assert wait_gone(pids["engine"]), "the engine process outlived its decoder"
    assert wait_gone(pids["guard"])
    assert not gone(pids["existing"])  # a process that ran before the engine started is not the guard's


def test_the_guard_leaves_when_the_engine_stops_normally(decoder):
    process, pids = decoder
    process.stdin.write("stop\n")
    process.stdin.flush()
    assert json.loads(process.stdout.readline()) == {"guard_exit": 0}
    assert process.poll() is None  # the decoder itself still runs
