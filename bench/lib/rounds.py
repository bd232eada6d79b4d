"""Rounds of two or more sides, interleaved: the speed of a shared machine drifts, so only alternated runs compare."""

from __future__ import annotations

from collections.abc import Callable


def interleaved_rounds(runs: dict[str, Callable[[], dict]], rounds: int) -> dict[str, list[dict]]:
    """Each side's run `rounds` times, the order reversed every other round (A B, B A, A B, ...)."""
    results: dict[str, list[dict]] = {side: [] for side in runs}
    for index in range(rounds):
        for side in list(runs) if index % 2 == 0 else list(reversed(runs)):
            results[side].append(runs[side]())
    return results
