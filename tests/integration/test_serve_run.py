"""`serve run configs/cpu.yaml` as a user runs it: comes up healthy, answers, shuts down cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import make_image, to_bytes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
URL = "http://127.0.0.1:8000"
STARTUP_TIMEOUT_S = 300


def wait_until_healthy(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if "Deploying app 'ocr' failed" in log.read_text():
            pytest.fail(f"the application failed to deploy:\n{log.read_text()[-6000:]}")
        try:
            if httpx.get(f"{URL}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"not healthy after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def test_serve_run_cpu_config_comes_up_answers_and_shuts_down_cleanly(tmp_path):
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "serve"), "run", "configs/cpu.yaml"],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so SIGINT reaches it like a Ctrl-C
        )
    try:
        wait_until_healthy(process, log)

        # Ray 2.60's CLI sends the cluster's auth token (~/.ray/auth_token) only in token mode.
        status = subprocess.run(
            [str(BIN / "serve"), "status"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
        assert status.returncode == 0, status.stderr
        application = yaml.safe_load(status.stdout)["applications"]["ocr"]
        assert application["status"] == "RUNNING"
        deployments = application["deployments"]
        assert set(deployments) == {"Preprocessor", "VisionEncoder", "Decoder", "OCRIngress"}
        assert all(info["status"] == "HEALTHY" for info in deployments.values()), deployments

        response = httpx.post(
            f"{URL}/ocr",
            content=to_bytes(make_image(320, 200), "JPEG"),
            headers={"Content-Type": "image/jpeg"},
            params={"max_tokens": 8},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] >= 1

        bad = httpx.post(f"{URL}/ocr", content=b"GIF89a, or so it claims", timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_image"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"serve run did not stop on SIGINT:\n{log.read_text()[-4000:]}")
    assert process.returncode == 0, log.read_text()[-4000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{URL}/healthz", timeout=5)
