"""matplotlib for the bench scripts' PNGs: a dev extra, so a script without it still prints and saves its JSON."""

from __future__ import annotations

import sys


def pyplot_or_none():
    """matplotlib.pyplot on the Agg backend (files only, no display), or None (said on stderr) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    return plt
