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

from serve_app.engines import engine_guard
from serve_app.engines.engine_guard import child_pids, engines_dir, record_engine, wait_for_orphaned_engines

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


# ---------------------------------------------------------------- a new engine waits for a dead decoder's engine

# A stand-in decoder that records its "engine" (a sleep) the way VLLMEngine.start does on a GPU, then waits.
RECORDING_DECODER = """
import json, subprocess, sys
from pathlib import Path
from serve_app.engines.engine_guard import child_pids, record_engine
existing = child_pids()
engine = subprocess.Popen(["sleep", "300"])
path = record_engine(Path(sys.argv[1]), existing, "app/Decoder")
print(json.dumps({"engine": engine.pid, "record": str(path)}), flush=True)
sys.stdin.readline()
"""


def write_record(directory: Path, decoder: list, processes: list[subprocess.Popen]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    specs = [[process.pid, psutil.Process(process.pid).create_time()] for process in processes]
    path = directory / f"{decoder[0]}.json"
    path.write_text(json.dumps({"name": "app/Decoder", "decoder": decoder, "processes": specs}))
    return path


def this_process() -> list:
    return [os.getpid(), psutil.Process().create_time()]


GONE_DECODER = [2**22 + 12345, 1.0]  # no such process (or not with that start time): a decoder that died


@pytest.fixture
def sleeps():
    started: list[subprocess.Popen] = []

    def start(seconds: float) -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", str(seconds)]))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_new_engine_kills_and_waits_for_a_dead_decoder_s_engine(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDING_DECODER, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    info: dict = {}
    try:
        info = json.loads(process.stdout.readline())
        record = json.loads(Path(info["record"]).read_text())
        assert record["decoder"][0] == process.pid and [spec[0] for spec in record["processes"]] == [info["engine"]]
        # While its decoder runs, the engine is in use (another replica on these GPUs): not waited for.
        assert wait_for_orphaned_engines(tmp_path, timeout_s=5) == []
        assert not gone(info["engine"]) and Path(info["record"]).exists()
        process.kill()  # the decoder dies; say its guard died too, so its engine lingers
        process.wait()
        started = time.monotonic()
        assert wait_for_orphaned_engines(tmp_path, timeout_s=10, poll_s=0.05) == []
        assert time.monotonic() - started < 5
        assert gone(info["engine"])
        assert not Path(info["record"]).exists()  # nothing left to wait for: the record is removed
    finally:
        process.kill()
        process.wait()
        if info and not gone(info["engine"]):
            os.kill(info["engine"], signal.SIGKILL)


def test_the_wait_lasts_until_the_processes_exit(tmp_path, sleeps, monkeypatch, caplog):
    monkeypatch.setattr(psutil.Process, "kill", lambda self: None)  # processes that take a while to go
    engine = sleeps(1)
    write_record(tmp_path, GONE_DECODER, [engine])
    started = time.monotonic()
    with caplog.at_level("INFO", logger=engine_guard.__name__):
        assert wait_for_orphaned_engines(tmp_path, timeout_s=20, poll_s=0.05) == []
    assert time.monotonic() - started > 0.5
    messages = [record.getMessage() for record in caplog.records]
    assert any(str(engine.pid) in message and "free the GPU" in message for message in messages)


def test_the_wait_is_bounded(tmp_path, sleeps, monkeypatch):
    monkeypatch.setattr(psutil.Process, "kill", lambda self: None)
    engine = sleeps(300)
    write_record(tmp_path, GONE_DECODER, [engine])
    started = time.monotonic()
    assert wait_for_orphaned_engines(tmp_path, timeout_s=0.5, poll_s=0.05) == [engine.pid]
    assert time.monotonic() - started < 5


def test_stale_and_foreign_records_are_not_waited_for(tmp_path, sleeps):
    # a pid reused by another process (start time differs) is not the recorded engine
    unrelated = sleeps(300)
    stale = write_record(tmp_path, GONE_DECODER, [])
    stale.write_text(json.dumps({"decoder": GONE_DECODER, "processes": [[unrelated.pid, 1.0]]}))
    (tmp_path / "broken.json").write_text("{not json")
    live = write_record(tmp_path, this_process(), [sleeps(300)])  # a live decoder's engine
    assert wait_for_orphaned_engines(tmp_path, timeout_s=5) == []
    assert not gone(unrelated.pid)
    assert not stale.exists() and not (tmp_path / "broken.json").exists() and live.exists()
    assert wait_for_orphaned_engines(tmp_path / "missing", timeout_s=5) == []


def test_record_engine_without_engine_processes_writes_nothing(tmp_path):
    assert record_engine(tmp_path, child_pids()) is None
    assert list(tmp_path.iterdir()) == []


def test_engines_are_recorded_per_gpu_set(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert engines_dir().name == "gpus-0,1"
    assert engines_dir("GPU-1a2b/3").name == "gpus-GPU-1a2b_3"
    assert engines_dir("2") != engines_dir("3")
