"""Tests for :mod:`enrichlog.resilience.breaker`."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from enrichlog.exceptions import CircuitBreakerOpenError
from enrichlog.resilience.breaker import CircuitBreaker, CircuitState, Permit


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_breaker(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """A breaker opened by one failure at ``clock.now``."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, clock=clock, **kwargs)
    permit = breaker.acquire()
    assert permit is not None
    breaker.record_failure(permit)
    return breaker


def acquired(breaker: CircuitBreaker) -> Permit:
    permit = breaker.acquire()
    assert permit is not None
    return permit


class Transitions:
    """A listener that records every state change."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        self.seen.append((old.value, new.value))


# -- closed -------------------------------------------------------------------


def test_new_breaker_is_closed_and_admits_calls() -> None:
    breaker = CircuitBreaker()

    permit = breaker.acquire()

    expected = (CircuitState.CLOSED, False, 0)
    assert expected == (
        breaker.state,
        permit is None,
        breaker.failure_count,
    )


def test_failures_below_threshold_keep_the_circuit_closed() -> None:
    breaker = CircuitBreaker(failure_threshold=3)

    for _ in range(2):
        breaker.record_failure(acquired(breaker))

    expected = (CircuitState.CLOSED, 2)
    assert expected == (breaker.state, breaker.failure_count)


def test_consecutive_failures_at_threshold_open_the_circuit() -> None:
    breaker = CircuitBreaker(failure_threshold=3)

    for _ in range(3):
        breaker.record_failure(acquired(breaker))

    expected = (CircuitState.OPEN, None)
    assert expected == (breaker.state, breaker.acquire())


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    for _ in range(2):
        breaker.record_failure(acquired(breaker))
    breaker.record_success(acquired(breaker))

    breaker.record_failure(acquired(breaker))

    expected = (CircuitState.CLOSED, 1)
    assert expected == (breaker.state, breaker.failure_count)


# -- open ---------------------------------------------------------------------


def test_open_circuit_rejects_calls_until_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 9.999

    actual = breaker.acquire()

    assert actual is None


def test_retry_in_counts_down_the_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 4.0

    actual = breaker.retry_in()

    expected = 6.0
    assert expected == actual


def test_retry_in_is_zero_when_not_open() -> None:
    breaker = CircuitBreaker()

    actual = breaker.retry_in()

    expected = 0.0
    assert expected == actual


def test_state_reads_open_until_the_next_acquire_after_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    before = (breaker.state, breaker.retry_in())

    permit = breaker.acquire()

    expected = ((CircuitState.OPEN, 0.0), CircuitState.HALF_OPEN, True)
    assert expected == (
        before,
        breaker.state,
        permit is not None and permit.is_probe,
    )


# -- half open ----------------------------------------------------------------


def test_probe_success_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0

    breaker.record_success(acquired(breaker))

    expected = (CircuitState.CLOSED, 0)
    assert expected == (breaker.state, breaker.failure_count)


def test_probe_failure_reopens_the_circuit_for_a_new_recovery_window() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0

    breaker.record_failure(acquired(breaker))

    expected = (CircuitState.OPEN, 10.0, None)
    assert expected == (
        breaker.state,
        breaker.retry_in(),
        breaker.acquire(),
    )


def test_probes_beyond_half_open_max_calls_are_rejected() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, half_open_max_calls=2)
    clock.now = 10.0

    permits = [breaker.acquire() for _ in range(3)]

    expected = [True, True, False]
    assert expected == [permit is not None for permit in permits]


def test_cancelled_probe_returns_its_permit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    probe = acquired(breaker)
    rejected = breaker.acquire()

    breaker.record_cancelled(probe)

    expected = (None, True, CircuitState.HALF_OPEN)
    assert expected == (
        rejected,
        breaker.acquire() is not None,
        breaker.state,
    )


def test_probe_that_never_reports_back_is_presumed_lost_after_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    lost = acquired(breaker)
    clock.now = 19.999
    still_rejected = breaker.acquire()
    clock.now = 20.0
    probe = acquired(breaker)
    breaker.record_failure(lost)

    breaker.record_success(probe)

    expected = (None, CircuitState.CLOSED)
    assert expected == (still_rejected, breaker.state)


def test_probe_reported_twice_gives_back_only_one_permit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, half_open_max_calls=2)
    clock.now = 10.0
    probe = acquired(breaker)
    acquired(breaker)
    breaker.record_cancelled(probe)
    breaker.record_cancelled(probe)

    permits = [breaker.acquire(), breaker.acquire()]

    expected = [True, False]
    assert expected == [permit is not None for permit in permits]


# -- generations --------------------------------------------------------------


def test_success_of_a_call_admitted_before_the_circuit_opened_is_ignored() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    slow = acquired(breaker)
    breaker.record_failure(acquired(breaker))

    breaker.record_success(slow)

    expected = CircuitState.OPEN
    assert expected == breaker.state


def test_failure_of_a_call_admitted_before_the_circuit_opened_is_ignored() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, clock=clock)
    slow = acquired(breaker)
    breaker.record_failure(acquired(breaker))
    clock.now = 5.0

    breaker.record_failure(slow)

    expected = (1, 5.0)
    assert expected == (breaker.failure_count, breaker.retry_in())


def test_report_of_a_stale_probe_does_not_close_a_reopened_circuit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, half_open_max_calls=2)
    clock.now = 10.0
    late_probe = acquired(breaker)
    breaker.record_failure(acquired(breaker))

    breaker.record_success(late_probe)

    expected = CircuitState.OPEN
    assert expected == breaker.state


# -- listeners, reset, snapshot -----------------------------------------------


def test_listeners_see_every_state_change() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, clock=clock)
    transitions = Transitions()
    breaker.add_listener(transitions)
    breaker.record_failure(acquired(breaker))
    clock.now = 10.0
    breaker.record_failure(acquired(breaker))
    clock.now = 20.0
    breaker.record_success(acquired(breaker))

    actual = transitions.seen

    expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert expected == actual


def test_raising_listener_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, name="user")
    transitions = Transitions()

    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(transitions)

    with caplog.at_level(logging.ERROR, logger="enrichlog"):
        breaker.record_failure(acquired(breaker))

    expected = ([("closed", "open")], True, CircuitState.OPEN)
    assert expected == (
        transitions.seen,
        any("listener" in record.getMessage() for record in caplog.records),
        breaker.state,
    )


def test_removed_listener_is_not_called() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    transitions = Transitions()
    breaker.add_listener(transitions)
    breaker.remove_listener(transitions)

    breaker.record_failure(acquired(breaker))

    assert not transitions.seen


def test_reset_closes_the_circuit_and_forgets_failures() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    transitions = Transitions()
    breaker.add_listener(transitions)

    breaker.reset()

    expected = (CircuitState.CLOSED, 0, [("open", "closed")])
    assert expected == (
        breaker.state,
        breaker.failure_count,
        transitions.seen,
    )


def test_reset_makes_outstanding_permits_stale() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    before_reset = acquired(breaker)
    breaker.reset()

    breaker.record_failure(before_reset)

    expected = CircuitState.CLOSED
    assert expected == breaker.state


def test_snapshot_describes_the_breaker() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, name="user")
    clock.now = 2.5

    actual = breaker.snapshot()

    expected = {
        "name": "user",
        "state": "open",
        "failure_count": 1,
        "retry_in": 7.5,
    }
    assert expected == actual


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": 1.5},
        {"half_open_max_calls": 0},
        {"recovery_timeout": -1.0},
        {"recovery_timeout": float("nan")},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(**kwargs)


# -- call() -------------------------------------------------------------------


async def test_call_returns_the_result_of_an_async_function() -> None:
    breaker = CircuitBreaker()

    async def lookup(user_id: int, *, suffix: str) -> str:
        return f"user-{user_id}{suffix}"

    actual = await breaker.call(lookup, 1, suffix="!")

    expected = "user-1!"
    assert expected == actual


async def test_call_returns_the_result_of_a_sync_function() -> None:
    breaker = CircuitBreaker()

    actual = await breaker.call(len, "four")

    expected = 4
    assert expected == actual


async def test_call_on_open_circuit_raises_without_calling_the_function() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, name="user")
    clock.now = 4.0
    calls: list[int] = []

    with pytest.raises(CircuitBreakerOpenError) as raised:
        await breaker.call(calls.append, 1)

    expected = (0, "user", 6.0)
    assert expected == (len(calls), raised.value.name, raised.value.retry_in)


async def test_call_counts_expected_exceptions_as_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=2, expected_exception=OSError)

    async def unreachable() -> None:
        raise ConnectionRefusedError("no route")

    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await breaker.call(unreachable)

    expected = CircuitState.OPEN
    assert expected == breaker.state


async def test_call_does_not_count_unexpected_exceptions() -> None:
    breaker = CircuitBreaker(failure_threshold=1, expected_exception=OSError)

    def buggy() -> None:
        raise KeyError("user_id")

    with pytest.raises(KeyError):
        await breaker.call(buggy)

    expected = (CircuitState.CLOSED, 0)
    assert expected == (breaker.state, breaker.failure_count)


async def test_call_does_not_count_cancellation_as_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=1, expected_exception=BaseException)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    expected = (CircuitState.CLOSED, 0)
    assert expected == (breaker.state, breaker.failure_count)


async def test_cancelled_probe_call_returns_its_permit() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    actual = await breaker.call(lambda: "probe")

    expected = ("probe", CircuitState.CLOSED)
    assert expected == (actual, breaker.state)


# -- threads ------------------------------------------------------------------


def test_concurrent_threads_never_exceed_probe_permits() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, half_open_max_calls=3)
    clock.now = 10.0
    granted: list[Permit] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def grab() -> None:
        start.wait()
        for _ in range(100):
            permit = breaker.acquire()
            if permit is not None:
                with lock:
                    granted.append(permit)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = 3
    assert expected == len(granted)


# -- stateful: the breaker against a model ------------------------------------


@dataclass(eq=False)
class Issued:
    """A permit the machine holds, with whether the model still honours it."""

    permit: Permit
    is_probe: bool
    honoured: bool = True


RECOVERY_TIMEOUT = 10.0


class BreakerAgainstModel(RuleBasedStateMachine):
    """The breaker behaves like a plain model of the circuit pattern.

    Unlike the breaker, the model has no generations: every state change
    explicitly withdraws the permits it had issued.
    """

    permits = Bundle("permits")

    @initialize(threshold=st.integers(1, 3), probes=st.integers(1, 2))
    def build(self, threshold: int, probes: int) -> None:
        self.clock = FakeClock()
        self.threshold = threshold
        self.max_probes = probes
        self.breaker = CircuitBreaker(
            threshold,
            RECOVERY_TIMEOUT,
            half_open_max_calls=probes,
            clock=self.clock,
        )
        self.seen = Transitions()
        self.breaker.add_listener(self.seen)
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probes_out = 0
        self.last_probe_at = 0.0
        self.outstanding: list[Issued] = []
        self.expected_transitions: list[tuple[str, str]] = []

    def _move_to(self, state: str) -> None:
        for issued in self.outstanding:
            issued.honoured = False
        self.outstanding = []
        self.probes_out = 0
        if state != self.state:
            self.expected_transitions.append((self.state, state))
        self.state = state
        if state == "open":
            self.opened_at = self.clock.now
        if state == "closed":
            self.failures = 0

    @rule(target=permits)
    def acquire(self) -> Any:
        now = self.clock.now
        if self.state == "open" and now - self.opened_at >= RECOVERY_TIMEOUT:
            self._move_to("half_open")
        if (
            self.state == "half_open"
            and self.probes_out == self.max_probes
            and now - self.last_probe_at >= RECOVERY_TIMEOUT
        ):
            self._move_to("half_open")  # the silent probes are presumed lost
        issued: Issued | None = None
        if self.state == "closed":
            issued = Issued(Permit(0, is_probe=False), is_probe=False)
        elif self.state == "half_open" and self.probes_out < self.max_probes:
            self.probes_out += 1
            self.last_probe_at = now
            issued = Issued(Permit(0, is_probe=True), is_probe=True)

        actual = self.breaker.acquire()

        expected = (issued is None, issued is not None and issued.is_probe)
        assert expected == (actual is None, actual is not None and actual.is_probe)
        if actual is None or issued is None:
            return multiple()
        issued.permit = actual
        self.outstanding.append(issued)
        return issued

    @rule(issued=consumes(permits))
    def succeed(self, issued: Issued) -> None:
        if issued.honoured:
            self.outstanding.remove(issued)
            if issued.is_probe:
                self._move_to("closed")
            else:
                self.failures = 0

        self.breaker.record_success(issued.permit)

    @rule(issued=consumes(permits))
    def fail(self, issued: Issued) -> None:
        if issued.honoured:
            self.outstanding.remove(issued)
            self.failures += 1
            if issued.is_probe or self.failures >= self.threshold:
                self._move_to("open")

        self.breaker.record_failure(issued.permit)

    @rule(issued=consumes(permits))
    def cancel(self, issued: Issued) -> None:
        if issued.honoured:
            self.outstanding.remove(issued)
            if issued.is_probe:
                self.probes_out -= 1

        self.breaker.record_cancelled(issued.permit)

    @rule()
    def reset(self) -> None:
        self._move_to("closed")

        self.breaker.reset()

    @rule(seconds=st.sampled_from([1.0, 5.0, 10.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def breaker_matches_the_model(self) -> None:
        expected_retry_in = (
            max(0.0, self.opened_at + RECOVERY_TIMEOUT - self.clock.now)
            if self.state == "open"
            else 0.0
        )
        expected = (
            self.state,
            self.failures,
            expected_retry_in,
            self.expected_transitions,
        )

        actual = (
            self.breaker.state.value,
            self.breaker.failure_count,
            self.breaker.retry_in(),
            self.seen.seen,
        )

        assert expected == actual


BreakerAgainstModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=100, deadline=None
)
test_breaker_behaves_like_its_model = BreakerAgainstModel.TestCase
test_breaker_behaves_like_its_model = pytest.mark.slow(test_breaker_behaves_like_its_model)
