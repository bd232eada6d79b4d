"""The official clients' repetition handling, on text: a model can loop on hard layouts ("1. 1. 1. ...").

Ported from Tencent-Hunyuan/HunyuanOCR `inference/utils/output_utils.py` (1.5; commit 4e70513f): the
streaming early stop (`has_tail_repetition`, checked from 4,000 characters on, every 1,000, over the
last 8,000) and the final cleanup (`clean_repeated_substrings`). Same thresholds, same results.
"""

from __future__ import annotations


def has_tail_repetition(text: str, min_repeats: int = 8, max_unit: int = 256) -> bool:
    """Whether `text` ends with one unit of at most `max_unit` characters repeated `min_repeats` times
    back to back (a unit of only whitespace does not count)."""
    n = len(text)
    if n < min_repeats * 2:
        return False
    for length in range(1, min(max_unit, n // min_repeats) + 1):
        unit = text[-length:]
        if not unit.strip():
            continue
        if all(text[-length * k : -length * (k - 1)] == unit for k in range(2, min_repeats + 1)):
            return True
    return False


def clean_repeated_substrings(text: str, min_chars: int = 2000, min_repeats: int = 10) -> str:
    """A text of at least `min_chars` whose tail is one unit (2+ characters) repeated `min_repeats` or more
    times keeps one copy of it; anything else is returned as it is."""
    n = len(text)
    if n < min_chars:
        return text
    for length in range(2, n // min_repeats + 1):
        candidate = text[-length:]
        count = 0
        i = n - length
        while i >= 0 and text[i : i + length] == candidate:
            count += 1
            i -= length
        if count >= min_repeats:
            return text[: n - length * (count - 1)]
    return text


class TailRepetitionCheck:
    """The streaming early stop: feed each new piece of text; True once generation should stop."""

    def __init__(self, start_chars: int, check_every_chars: int, window_chars: int, max_unit: int, min_repeats: int):
        self.parts: list[str] = []
        self.length = 0
        self.next_check_at = start_chars
        self.check_every_chars = check_every_chars
        self.window_chars = window_chars
        self.max_unit = max_unit
        self.min_repeats = min_repeats

    def add(self, piece: str) -> bool:
        if not piece:
            return False
        self.parts.append(piece)
        self.length += len(piece)
        if self.length < self.next_check_at:
            return False
        self.next_check_at = self.length + self.check_every_chars
        tail = "".join(self.parts)[-self.window_chars :]
        return has_tail_repetition(tail, self.min_repeats, self.max_unit)
