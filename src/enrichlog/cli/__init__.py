"""The command line (``python -m enrichlog``): demo, plan, check, stats, worker, dlq."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_count", "positive_seconds", "printable", "seconds"]


def seconds(text: str) -> float:
    """An argument of seconds, 0 or more (argparse ``type=``)."""
    return _seconds(text, zero=True)


def printable(text: str) -> str:
    """``text`` with each character a terminal would act on (an escape
    sequence, a line break, a tab) escaped as in a Python string (``\\x1b``,
    ``\\n``): what a command prints from its input (a URI, a label) must
    neither move the cursor nor break a table's lines."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def positive_count(text: str) -> int:
    """An argument that counts something, 1 or more (argparse ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argument of seconds, more than 0 (argparse ``type=``)."""
    return _seconds(text, zero=False)


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = ">= 0" if zero else "> 0"
        raise argparse.ArgumentTypeError(f"expected a number of seconds {bound}, not {text!r}")
    return value
