"""Before `make` installs vLLM's CUDA build: does this machine's NVIDIA driver support its CUDA version?

    python3 serve_app/cuda_driver_check.py 13.0

The driver states the newest CUDA it supports in `nvidia-smi`'s header ("CUDA Version: 12.4"). A CUDA build
newer than that installs fine and then fails when the first replica starts ("The NVIDIA driver on your system
is too old" / CUDA error 803-804), so `make` stops here instead, saying what to do. Exit status 0: supported,
or nothing to check (no nvidia-smi, or a header without the version); 1: the driver is too old.

Standard library only: it runs with the system Python, before the virtual environment exists.
"""

from __future__ import annotations

import re
import subprocess
import sys

_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int]:
    """`"13.0"` -> `(13, 0)`."""
    major, minor = text.strip().split(".")[:2]
    return int(major), int(minor)


def driver_cuda_version(nvidia_smi_output: str) -> tuple[int, int] | None:
    """The newest CUDA version the driver supports, from nvidia-smi's header; None if it does not say."""
    found = _CUDA_VERSION.search(nvidia_smi_output)
    return (int(found.group(1)), int(found.group(2))) if found else None


def check(required: str, nvidia_smi_output: str) -> str | None:
    """None if the driver supports CUDA `required`; otherwise the message that says what to do."""
    need = parse_version(required)
    have = driver_cuda_version(nvidia_smi_output)
    if have is None or have >= need:
        return None
    have_text, need_text = f"{have[0]}.{have[1]}", f"{need[0]}.{need[1]}"
    return (
        f"The NVIDIA driver supports CUDA {have_text} at most (nvidia-smi), but the vLLM wheel this project pins "
        f"(and its torch) is built for CUDA {need_text}: vLLM would install and then fail to start on the GPU.\n"
        f"Either:\n"
        f"  - upgrade the NVIDIA driver to one that supports CUDA >= {need_text} (for CUDA 13.0: the R580 driver "
        f"series or newer), then run make again; or\n"
        f"  - install into .venv a build of the same vLLM version for CUDA {have_text} or older (vLLM's installation "
        f"guide: its CUDA-variant wheels, with torch from https://download.pytorch.org/whl/cu<version>), then run "
        f"make again with CUDA_DRIVER_CHECK=0."
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: cuda_driver_check.py <required CUDA version, e.g. 13.0>", file=sys.stderr)
        return 2
    try:
        output = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0  # no NVIDIA GPU here (or no usable nvidia-smi): nothing to check
    if driver_cuda_version(output) is None:
        print("cuda_driver_check: nvidia-smi does not state the driver's CUDA version; not checked", file=sys.stderr)
        return 0
    problem = check(argv[0], output)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
