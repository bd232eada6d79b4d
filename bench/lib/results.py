"""Where reports go: JSON under bench/results/ (a PNG beside it, same name)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.lib import ROOT

RESULTS = ROOT / "bench" / "results"


def timestamped(name: str) -> Path:
    """bench/results/<name>-<YYYYmmdd-HHMMSS>.json"""
    return RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(report, path: Path, allow_nan: bool = True) -> Path:
    """The report as indented JSON at `path` (its folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=allow_nan) + "\n")
    return path
