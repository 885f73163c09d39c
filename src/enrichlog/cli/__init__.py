"""The command line (``python -m enrichlog``): demo, plan, check, stats, worker, dlq."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_seconds", "seconds"]


def seconds(text: str) -> float:
    """An argument of seconds, 0 or more (argparse ``type=``)."""
    return _seconds(text, zero=True)


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
