"""The stages' glibc malloc bound (StageConfig.malloc_arena_max / malloc_mmap_threshold_kib).

Under 10 minutes of 4x overload the VisionEncoder's RSS grew 48 % and the Decoder's (its vLLM engine core) 17 %
after the first minute, and `malloc_trim(0)` in the encoder gave 715 MiB back at once: freed memory that glibc kept.
The workload below does what a stage does at the allocator's level (threads allocating buffers of varying size,
0.2-8 MB, keeping a few small ones) in a fresh process, with and without the stage's environment.
"""

from __future__ import annotations

import subprocess
import sys

from serve_app.config import StageConfig

WORKLOAD = """
import random, threading
import numpy as np

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def worker(seed):
    rng = random.Random(seed)
    held = []
    for _ in range(300):
        buffer = np.empty(rng.randint(200_000, 8_000_000), dtype=np.uint8)
        buffer.fill(1)
        held.append(buffer)
        held.append(np.ones(rng.randint(1000, 60000), dtype=np.uint8))
        if len(held) > 12:
            for _ in range(6):
                held.pop(rng.randrange(len(held)))
    kept.extend(array for array in held if array.nbytes < 100_000)

kept = []
start = rss_mib()
threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]  # 4 kept 22-72 MiB: too close to the bar
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(rss_mib() - start)
"""


def retained_mib(env: dict[str, str]) -> float:
    completed = subprocess.run(
        [sys.executable, "-c", WORKLOAD], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return float(completed.stdout)


def test_the_stage_environment_gives_freed_buffers_back():
    bounded = retained_mib(StageConfig().process_env())
    unbounded = retained_mib(StageConfig(malloc_arena_max=None, malloc_mmap_threshold_kib=None).process_env())
    assert bounded < 24, f"{bounded:.0f} MiB kept after every large buffer was freed"
    assert unbounded > bounded + 40, "the workload no longer shows glibc's default keeping freed memory"


def test_every_stage_starts_with_the_bound_in_its_runtime_env():
    from serve_app.config import OCRAppConfig
    from tests.unit.test_config_and_builder import ROOT

    config = OCRAppConfig.from_serve_config(ROOT / "serve_config.yaml")
    for stage in (config.preprocessor, config.encoder, config.decoder, config.ingress):
        env = stage.deployment_options(60)["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}
    unset = StageConfig(malloc_arena_max=None, malloc_mmap_threshold_kib=None)
    assert "runtime_env" not in unset.deployment_options(60)["ray_actor_options"]
