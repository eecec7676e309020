"""Argument checks that used to be written in many places, written once.

They return the checked value (normalised to a Python int) or raise InvalidArgumentError (a ValueError) naming the
argument, so a domain entry point validates in one line and the message always says what to send.
"""

from __future__ import annotations

import numbers
from typing import Any

from common.errors import InvalidArgumentError, quote


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), and not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """value as an int in [1, maximum]; InvalidArgumentError naming `name` otherwise."""
    if not is_int(value) or value < 1 or (maximum is not None and value > maximum):
        bound = f"in 1..{maximum}" if maximum is not None else "a positive integer"
        raise InvalidArgumentError(f"{name} must be {bound}, got {quote(value)}")
    return int(value)


def optional_positive_int(value: Any, name: str, maximum: int | None = None) -> int | None:
    """None (meaning: the configured default) or a positive int, as positive_int."""
    return None if value is None else positive_int(value, name, maximum)


def non_negative_int(value: Any, name: str) -> int:
    if not is_int(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {quote(value)}")
    return int(value)
