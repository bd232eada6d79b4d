"""The repetition guard: a weak or confused model can loop on hard layouts ("1. 1. 1. 1. ...").

Generation is stopped once the tail of the output is one block repeated several times, and the
final text keeps a single copy of the repeated tail.
"""

from __future__ import annotations

from collections.abc import Sequence


def repeated_tail(sequence: Sequence, min_repeats: int, max_period: int, min_span: int) -> tuple[int, int] | None:
    """(period, copies) if the sequence ends with >= min_repeats copies of one block spanning >= min_span
    items, trying the shortest period first; else None."""
    length = len(sequence)
    for period in range(1, min(max_period, length // min_repeats) + 1):
        block = sequence[length - period :]
        copies = 1
        while (copies + 1) * period <= length and sequence[length - (copies + 1) * period : length - copies * period] == block:
            copies += 1
        if copies >= min_repeats and copies * period >= min_span:
            return period, copies
    return None


def clean_repeated_tail(text: str, min_repeats: int, max_period: int, min_span: int) -> tuple[str, bool]:
    """Keep one copy of a repeated tail (also when the last copy was cut short). Returns (text, cleaned)."""
    for trim in range(0, max_period):
        # A loop cut by max_tokens ends mid-block: try dropping a partial block first.
        body = text[: len(text) - trim] if trim else text
        found = repeated_tail(body, min_repeats, max_period, min_span)
        if found is not None:
            period, copies = found
            return body[: len(body) - (copies - 1) * period], True
    return text, False
