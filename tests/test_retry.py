"""Tests for :mod:`enrichlog.resilience.retry`."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrichlog.resilience.retry import RetryPolicy, is_transient_error


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TopOfRange(random.Random):
    """Jitter that always picks the upper bound: backoffs of 1, 2, 4, ... x base."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """Replace ``asyncio.sleep``: record each delay and move the fake clock."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        clock.now += delay
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return delays


def failing(*errors: BaseException, result: str = "ok") -> Callable[[], Awaitable[str]]:
    """An attempt function that raises ``errors`` in turn, then returns ``result``."""
    pending = list(errors)

    async def attempt() -> str:
        if pending:
            raise pending.pop(0)
        return result

    return attempt


async def test_transient_failure_is_retried_until_success(slept: list[float]) -> None:
    policy = RetryPolicy(attempts=3)

    actual = await policy.run(failing(OSError("reset"), TimeoutError()), deadline=None)

    expected = ("ok", 2)
    assert expected == (actual, len(slept))


async def test_non_transient_failure_is_not_retried(slept: list[float]) -> None:
    policy = RetryPolicy(attempts=3)

    with pytest.raises(KeyError):
        await policy.run(failing(KeyError("user_id")), deadline=None)

    assert not slept


async def test_last_failure_is_raised_once_attempts_are_spent(
    slept: list[float],
) -> None:
    policy = RetryPolicy(attempts=2)
    last = OSError("second")

    with pytest.raises(OSError, match="second") as raised:
        await policy.run(failing(OSError("first"), last), deadline=None)

    expected = (last, 1)
    assert expected == (raised.value, len(slept))


async def test_single_attempt_policy_never_retries(slept: list[float]) -> None:
    policy = RetryPolicy()

    with pytest.raises(OSError, match="reset"):
        await policy.run(failing(OSError("reset")), deadline=None)

    assert not slept


async def test_sleep_that_would_end_past_the_deadline_is_not_started(
    clock: FakeClock, slept: list[float]
) -> None:
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=100.0, rng=TopOfRange())
    errors = [OSError(f"attempt {number}") for number in range(1, 11)]

    with pytest.raises(OSError, match="attempt 3"):
        await policy.run(failing(*errors), deadline=5.0, clock=clock)

    expected = ([1.0, 2.0], 3.0)
    assert expected == (slept, clock.now)


async def test_deadline_already_passed_stops_retries(clock: FakeClock, slept: list[float]) -> None:
    policy = RetryPolicy(attempts=5)
    clock.now = 10.0

    with pytest.raises(OSError, match="reset"):
        await policy.run(failing(OSError("reset")), deadline=9.0, clock=clock)

    assert not slept


async def test_on_retry_gets_attempt_number_exception_and_delay(
    slept: list[float],
) -> None:
    policy = RetryPolicy(attempts=3)
    first, second = OSError("first"), TimeoutError("second")
    calls: list[tuple[int, BaseException, float]] = []

    await policy.run(
        failing(first, second),
        deadline=None,
        on_retry=lambda attempt, exc, delay: calls.append((attempt, exc, delay)),
    )

    expected = [(1, first, slept[0]), (2, second, slept[1])]
    assert expected == calls


async def test_cancellation_is_never_retried(slept: list[float]) -> None:
    policy = RetryPolicy(attempts=5, is_transient=lambda exc: True)

    with pytest.raises(asyncio.CancelledError):
        await policy.run(failing(asyncio.CancelledError()), deadline=None)

    assert not slept


async def test_custom_is_transient_decides_what_is_retried(slept: list[float]) -> None:
    policy = RetryPolicy(attempts=2, is_transient=lambda exc: isinstance(exc, KeyError))

    actual = await policy.run(failing(KeyError("flaky")), deadline=None)

    expected = ("ok", 1)
    assert expected == (actual, len(slept))


async def test_retries_with_real_sleep_finish_promptly() -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
    loop = asyncio.get_running_loop()
    started = loop.time()

    actual = await policy.run(failing(OSError(), OSError()), deadline=None)

    # A generous bound: two sleeps of at most 2 ms each.
    expected = ("ok", True)
    assert expected == (actual, loop.time() - started < 1.0)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError("x"), True),
        (ConnectionResetError("x"), True),
        (TimeoutError(), True),
        (ValueError("x"), False),
        (KeyError("x"), False),
    ],
)
def test_default_transient_errors_are_os_and_timeout_errors(
    exc: BaseException, expected: bool
) -> None:
    actual = is_transient_error(exc)

    assert expected == actual


# -- backoff ------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=2000),
    base=st.floats(min_value=1e-6, max_value=10.0),
    cap=st.floats(min_value=1e-6, max_value=100.0),
    seed=st.integers(),
)
def test_backoff_stays_within_the_capped_exponential_bound(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap, rng=random.Random(seed))

    delay = policy.backoff(attempt)

    bound = cap if attempt > 1000 else min(cap, base * 2.0 ** (attempt - 1))
    expected = (True, True)
    assert expected == (delay >= 0.0, delay <= bound)


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = RetryPolicy(rng=random.Random(7))
    second = RetryPolicy(rng=random.Random(7))

    actual = [first.backoff(n) for n in range(1, 6)]

    expected = [second.backoff(n) for n in range(1, 6)]
    assert expected == actual


def test_backoff_rejects_attempt_zero() -> None:
    policy = RetryPolicy()

    with pytest.raises(ValueError, match="start at 1"):
        policy.backoff(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": 1.5},
        {"attempts": True},
        {"base_delay": 0.0},
        {"max_delay": -1.0},
        {"base_delay": float("nan")},
    ],
)
def test_invalid_policy_raises_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()

    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempts = 3  # type: ignore[misc]


def test_an_is_transient_that_raises_means_no_retry_and_the_failure_shows_as_itself() -> None:
    # Found by the twelfth round: the line showed the check's own exception.
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("is_transient blew up")

    policy = RetryPolicy(3, 0.001, 0.002, is_transient=broken)
    attempts = 0

    async def lookup() -> None:
        nonlocal attempts
        attempts += 1
        raise KeyError("user")

    with pytest.raises(KeyError):
        asyncio.run(policy.run(lookup))
    assert 1 == attempts
