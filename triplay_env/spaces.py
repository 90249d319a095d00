"""Text spaces that accept any unicode string (Gymnasium's ``Text`` only accepts letters and digits)."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["UnicodeText"]

# What ``sample()`` draws from: printable ASCII plus a few multi-byte characters, so random tests exercise
# punctuation, whitespace and non-Latin text. ``contains`` does not look at the charset at all.
_SAMPLE_CHARSET = string.printable + "éüßçñ中文日本語한국어Ω≠→😀\u200b"


class UnicodeText(spaces.Text):
    """A ``Text`` space whose ``contains`` checks type and length only.

    LLM output can hold any unicode character; gymnasium's ``Text.contains`` rejects every character outside
    its charset (letters and digits by default), so an honest LLM answer would fall outside the space.

    >>> space = UnicodeText(max_length=16)
    >>> space.contains("Ünïcødé → ok!")
    True
    >>> space.contains("x" * 17)
    False
    """

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | np.random.Generator | None = None):
        super().__init__(max_length=max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )

    __hash__ = spaces.Text.__hash__ if spaces.Text.__hash__ is not None else object.__hash__
