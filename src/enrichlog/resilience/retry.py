"""Retrying transient failures within an enricher's time budget.

:class:`RetryPolicy` retries a coroutine function after failures that look
transient (an ``OSError`` or a ``TimeoutError`` by default), sleeping an
exponentially growing, fully jittered delay between attempts, and never
sleeping past the deadline of the event being enriched.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["RetryPolicy", "is_transient_error"]

_T = TypeVar("_T")

#: ``2.0 ** 1024`` overflows a float; past it the delay cap applies anyway
#: for any sane base delay.
_MAX_EXPONENT = 1023


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying by default: an ``OSError`` or ``TimeoutError``.

    ``OSError`` covers connection refused, reset and unreachable errors.
    """
    return isinstance(exc, OSError | TimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed call.

    Args:
        attempts: calls in total, the first one included (>= 1; 1 means
            no retry).
        base_delay: seconds of the first backoff's upper bound (> 0).
        max_delay: seconds no backoff exceeds (> 0).
        is_transient: ``is_transient(exc)`` says whether a failure is worth
            retrying; defaults to :func:`is_transient_error`.
        rng: the source of jitter; defaults to the :mod:`random` module's.

    Raises:
        ValueError: ``attempts`` or a delay is out of range.
    """

    attempts: int = 1
    base_delay: float = 0.05
    max_delay: float = 1.0
    is_transient: Callable[[BaseException], bool] = field(
        default=is_transient_error, kw_only=True, compare=False
    )
    rng: random.Random | None = field(default=None, kw_only=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ValueError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("base_delay", "max_delay"):
            delay = getattr(self, name)
            # ``not delay > 0`` also rejects NaN.
            if isinstance(delay, bool) or not delay > 0:
                raise ValueError(f"{name} must be a positive number, got {delay!r}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Full jitter: uniform in ``[0, min(max_delay, base_delay * 2 **
        (attempt - 1))]``, so that clients that failed together do not
        retry together.

        Raises:
            ValueError: ``attempt`` is below 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt!r}")
        exponent = attempt - 1
        ceiling = (
            self.max_delay
            if exponent > _MAX_EXPONENT
            else min(self.max_delay, self.base_delay * 2.0**exponent)
        )
        uniform = random.uniform if self.rng is None else self.rng.uniform
        # uniform(a, b) may round to a hair above b; the bound is a promise.
        return min(uniform(0.0, ceiling), ceiling)

    def worth_retrying(self, exc: BaseException) -> bool:
        """``is_transient(exc)``; one that raises says no, so the failure
        shows as itself (not as the check's own exception)."""
        try:
            return bool(self.is_transient(exc))
        except Exception:
            return False

    async def run(
        self,
        fn: Callable[[], Awaitable[_T]],
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> _T:
        """Await ``fn()``, retrying transient failures; return its result.

        After a failure for which ``is_transient`` is true, and while
        attempts remain, sleeps :meth:`backoff` seconds and calls ``fn``
        again, unless that sleep would end after ``deadline`` (an absolute
        time on ``clock``, the event's time budget): then the failure is
        raised at once. Cancellation is never retried, nor is anything that
        is not an :class:`Exception`.

        Args:
            fn: makes one attempt; called afresh for each.
            deadline: no sleep ends after it; ``None`` for no limit.
            clock: the clock ``deadline`` is read against.
            on_retry: called as ``on_retry(attempt, exc, delay)`` before each
                sleep, with the number of the attempt that failed (1-based),
                its exception and the delay about to be slept.

        Raises:
            Exception: the last attempt's exception, when it is not
                transient, the attempts are spent or the deadline is near.
        """
        attempt = 1
        while True:
            try:
                return await fn()
            # CancelledError is a BaseException, so it is never caught here.
            except Exception as exc:
                if attempt >= self.attempts or not self.worth_retrying(exc):
                    raise
                delay = self.backoff(attempt)
                if deadline is not None and clock() + delay > deadline:
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
