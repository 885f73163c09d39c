"""A circuit breaker per enricher: stop calling a backend that keeps failing.

The breaker is CLOSED while calls succeed. ``failure_threshold`` failures in
a row open it: calls are then rejected at once, without reaching the
backend. After ``recovery_timeout`` seconds the next call is let through as
a probe (HALF_OPEN); its success closes the circuit, its failure opens it
for another ``recovery_timeout``.

The runtime drives the breaker through permits, which cost an attribute
read in the CLOSED state::

    permit = breaker.acquire()
    if permit is None:
        ...  # rejected: skip the enricher as "circuit_open"
    try:
        result = await call()
    except asyncio.CancelledError:
        breaker.record_cancelled(permit)
        raise
    except Exception:
        breaker.record_failure(permit)
        ...
    else:
        breaker.record_success(permit)

:meth:`CircuitBreaker.call` wraps that dance for one call.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar, overload

from ..exceptions import CircuitBreakerOpenError
from ..reporting import reporting_logger

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "ExceptionTypes",
    "Permit",
    "StateListener",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_report = reporting_logger("enrichlog")


class CircuitState(enum.Enum):
    """Where a :class:`CircuitBreaker` stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


ExceptionTypes: TypeAlias = type[BaseException] | tuple[type[BaseException], ...]
"""What ``except`` accepts: one exception class or a tuple of them."""

StateListener: TypeAlias = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
"""Called as ``listener(breaker, old_state, new_state)`` on every state change."""


class Permit:
    """Leave to make one call, handed out by :meth:`CircuitBreaker.acquire`.

    Report the outcome of the call with exactly one of
    :meth:`~CircuitBreaker.record_success`,
    :meth:`~CircuitBreaker.record_failure` or
    :meth:`~CircuitBreaker.record_cancelled`. A permit remembers the state
    generation that issued it, so a report that arrives after the breaker
    changed state (a slow call admitted while CLOSED that fails after the
    circuit opened) is ignored.

    Attributes:
        generation: the breaker's state generation when it was issued.
        is_probe: whether it is one of the HALF_OPEN state's probe permits.
    """

    __slots__ = ("_settled", "generation", "is_probe")

    def __init__(self, generation: int, *, is_probe: bool) -> None:
        self.generation = generation
        self.is_probe = is_probe
        # Probes only: set once reported, so a second report cannot give
        # back a probe slot twice.
        self._settled = False

    def __repr__(self) -> str:
        kind = "probe" if self.is_probe else "call"
        return f"<Permit {kind} generation={self.generation}>"


class CircuitBreaker:
    """Rejects calls to a backend while it keeps failing.

    Thread-safe: the breaker may be read on logging threads and updated on
    the runtime's loop. State changes happen under a lock, which is never
    held while a call runs or a listener is notified; in the CLOSED state
    :meth:`acquire` and a successful report take no lock at all.

    Args:
        failure_threshold: consecutive failures that open the circuit (>= 1).
        recovery_timeout: seconds the circuit stays open before a probe is
            let through (>= 0).
        expected_exception: the exception type(s) that count as failures in
            :meth:`call`; anything else propagates without counting.
        half_open_max_calls: probes allowed at once while HALF_OPEN (>= 1);
            further calls are rejected, not queued.
        name: shown in errors and logs, usually the enricher's name.
        clock: monotonic seconds; replaceable in tests.

    Raises:
        ValueError: a count or the timeout is out of range.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        expected_exception: ExceptionTypes = Exception,
        half_open_max_calls: int = 1,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_count("failure_threshold", failure_threshold)
        _check_count("half_open_max_calls", half_open_max_calls)
        if isinstance(recovery_timeout, bool) or not recovery_timeout >= 0:
            raise ValueError(
                f"recovery_timeout must be a number of seconds >= 0, got {recovery_timeout!r}"
            )
        self._failure_threshold = failure_threshold
        self._recovery_timeout = float(recovery_timeout)
        self._expected_exception = expected_exception
        self._half_open_max_calls = half_open_max_calls
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: tuple[StateListener, ...] = ()
        #: The stored state (read it, never set it). An OPEN circuit whose
        #: ``recovery_timeout`` has passed still reads OPEN: it turns
        #: HALF_OPEN on the next :meth:`acquire`; :meth:`retry_in` tells
        #: whether a probe would be let through. A plain attribute: it is
        #: read for every event of every enricher.
        self.state = CircuitState.CLOSED
        self._generation = 0
        # The permit every call gets while CLOSED, shared to spare an
        # allocation per call; None in any other state.
        self._closed_permit: Permit | None = Permit(0, is_probe=False)
        self._failure_count = 0
        self._opened_at = 0.0
        self._entered_at = clock()
        self._probes_out = 0
        self._last_probe_at = 0.0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._name!r} {self.state.value} failures={self._failure_count}>"

    @property
    def name(self) -> str:
        """The name given at construction, usually the enricher's."""
        return self._name

    @property
    def failure_count(self) -> int:
        """Consecutive failures so far; 0 once the circuit closes."""
        return self._failure_count

    def seconds_in_state(self) -> float:
        """How long the circuit has been in its current state."""
        return max(0.0, self._clock() - self._entered_at)

    def retry_in(self) -> float:
        """Seconds until a probe is let through; 0.0 when the circuit is not OPEN."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._recovery_timeout - self._clock())

    def snapshot(self) -> dict[str, Any]:
        """The breaker at a glance, for health views.

        Keys: ``name``, ``state`` (the :class:`CircuitState` value, a string),
        ``failure_count`` and ``retry_in``.
        """
        return {
            "name": self._name,
            "state": self.state.value,
            "failure_count": self._failure_count,
            "retry_in": self.retry_in(),
        }

    # -- listeners ---------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` on every state change.

        Listeners run on the thread that caused the change, after the
        breaker's lock is released. One that raises is logged to the
        ``enrichlog`` stdlib logger and otherwise ignored.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; a listener not added is ignored."""
        with self._lock:
            self._listeners = tuple(known for known in self._listeners if known != listener)

    # -- permits -------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """Ask leave to make one call; ``None`` means it is rejected.

        Rejected while OPEN, and while HALF_OPEN once every probe permit is
        taken. An OPEN circuit whose ``recovery_timeout`` has passed turns
        HALF_OPEN here and hands out a probe permit. Probe permits that none
        of their holders reported back within ``recovery_timeout`` of the
        last one handed out are presumed lost and handed out again.
        """
        # Hot path, once per call: a single attribute read while CLOSED.
        permit = self._closed_permit
        if permit is not None:
            return permit
        change = None
        with self._lock:
            now = self._clock()
            if self.state is CircuitState.OPEN:
                if now - self._opened_at < self._recovery_timeout:
                    return None
                change = self._enter_locked(CircuitState.HALF_OPEN, now)
            if self.state is CircuitState.HALF_OPEN:
                permit = self._probe_locked(now)
            else:  # closed by another thread since the first read
                permit = self._closed_permit
        self._notify(change)
        return permit

    def record_success(self, permit: Permit) -> None:
        """Report that the call made under ``permit`` succeeded.

        Closes a HALF_OPEN circuit; resets the failure count of a CLOSED one.
        """
        # Hot path: nothing to reset after a success in a healthy circuit.
        if self._failure_count == 0 and not permit.is_probe:
            return
        change = None
        with self._lock:
            if not self._is_current_locked(permit):
                return
            if permit.is_probe:
                change = self._enter_locked(CircuitState.CLOSED, self._clock())
            else:
                self._failure_count = 0
        self._notify(change)

    def record_failure(self, permit: Permit) -> None:
        """Report that the call made under ``permit`` failed.

        Opens a CLOSED circuit at ``failure_threshold`` consecutive failures
        and reopens a HALF_OPEN one, for a new ``recovery_timeout``.
        """
        change = None
        with self._lock:
            if not self._is_current_locked(permit):
                return
            self._failure_count += 1
            if permit.is_probe or self._failure_count >= self._failure_threshold:
                change = self._enter_locked(CircuitState.OPEN, self._clock())
        self._notify(change)

    def record_cancelled(self, permit: Permit) -> None:
        """Report that the call made under ``permit`` ended without an outcome.

        Cancellation is not a failure: a probe permit is given back for
        another call to take, and nothing else changes.
        """
        if not permit.is_probe:
            return
        with self._lock:
            if self._is_current_locked(permit):
                self._probes_out -= 1

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock (another thread may have held the
        parent's at fork time)."""
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Close the circuit and forget failures; outstanding permits go stale."""
        with self._lock:
            change = self._enter_locked(CircuitState.CLOSED, self._clock())
        self._notify(change)

    # -- high level ------------------------------------------------------------

    # Two overloads so that an ``async def`` function gives its awaited type
    # and a plain one its return type.
    @overload
    async def call(
        self, fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T: ...
    @overload
    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` (awaiting it if it is async), guarded.

        Exceptions that are instances of ``expected_exception`` count as
        failures and propagate. Others propagate without counting either
        way, as does :class:`asyncio.CancelledError`, which is never a
        failure: the call's permit is simply given back.

        Raises:
            CircuitBreakerOpenError: the call was rejected; ``fn`` was not
                called. Its ``retry_in`` says when a probe is next allowed.
        """
        permit = self.acquire()
        if permit is None:
            raise CircuitBreakerOpenError(self._name, self.retry_in())
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            self.record_cancelled(permit)
            raise
        except self._expected_exception:
            self.record_failure(permit)
            raise
        except BaseException:
            self.record_cancelled(permit)
            raise
        self.record_success(permit)
        return result

    # -- internals -------------------------------------------------------------

    def _is_current_locked(self, permit: Permit) -> bool:
        if permit.generation != self._generation:
            return False
        if permit.is_probe:
            if permit._settled:
                return False
            permit._settled = True
        return True

    def _probe_locked(self, now: float) -> Permit | None:
        if (
            self._probes_out >= self._half_open_max_calls
            and now - self._last_probe_at >= self._recovery_timeout
        ):
            # No probe has reported back for a whole recovery window: presume
            # them lost (a caller that crashed without reporting), or the
            # circuit would stay half open, rejecting everything, for good.
            # A new generation makes their late reports, if any, stale.
            self._enter_locked(CircuitState.HALF_OPEN, now)
        if self._probes_out >= self._half_open_max_calls:
            return None
        self._probes_out += 1
        self._last_probe_at = now
        return Permit(self._generation, is_probe=True)

    def _enter_locked(
        self, state: CircuitState, now: float
    ) -> tuple[CircuitState, CircuitState] | None:
        # Every entry starts a new generation, even CLOSED -> CLOSED on
        # reset(), so that reports from earlier permits are ignored.
        old = self.state
        self._generation += 1
        self.state = state
        self._probes_out = 0
        if state is CircuitState.CLOSED:
            self._failure_count = 0
            self._closed_permit = Permit(self._generation, is_probe=False)
        else:
            self._closed_permit = None
        if state is CircuitState.OPEN:
            self._opened_at = now
        if old is not state:
            self._entered_at = now
        return None if old is state else (old, state)

    def _notify(self, change: tuple[CircuitState, CircuitState] | None) -> None:
        if change is None:
            return
        old, new = change
        for listener in self._listeners:
            try:
                listener(self, old, new)
            except Exception:
                _report.exception(
                    "circuit breaker %r: state listener %r failed on %s -> %s",
                    self._name,
                    listener,
                    old.value,
                    new.value,
                )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
