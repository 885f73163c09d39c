"""Tests for :mod:`enrichlog.enricher`: enricher identity, validation,
``as_enricher`` and ``register_enricher``."""

from __future__ import annotations

import math
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog.enricher import (
    AsyncEnricher,
    Enricher,
    SyncEnricher,
    as_enricher,
    register_enricher,
)
from enrichlog.exceptions import EnricherConfigError


class UserLookupEnricher(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["user"] = "alice"
        return event_dict


class Declared(AsyncEnricher):
    name = "declared"
    dependencies = ("tenant",)
    priority = 7
    timeout = 0.3

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def add_host(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["host"] = "web-1"
    return event_dict


async def add_region(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["region"] = "eu"
    return event_dict


def identity(enricher: Enricher) -> tuple[str, tuple[str, ...], int]:
    return (enricher.name, enricher.dependencies, enricher.priority)


# -- identity --------------------------------------------------------------------


def test_default_name_is_the_class_name_in_snake_case_without_suffix() -> None:
    assert "user_lookup" == UserLookupEnricher().name


def test_defaults_are_no_dependencies_and_priority_100() -> None:
    assert ((), 100, None) == (
        UserLookupEnricher().dependencies,
        UserLookupEnricher().priority,
        UserLookupEnricher().timeout,
    )


def test_class_attributes_declare_the_identity() -> None:
    enricher = Declared()

    assert ("declared", ("tenant",), 7, 0.3) == (*identity(enricher), enricher.timeout)


def test_constructor_arguments_override_class_attributes() -> None:
    enricher = Declared(name="other", dependencies=["a", "b"], priority=1, timeout=2.0)

    assert ("other", ("a", "b"), 1, 2.0) == (*identity(enricher), enricher.timeout)


def test_constructor_override_does_not_change_the_class() -> None:
    Declared(name="other", priority=1)

    assert ("declared", 7) == (Declared.name, Declared.priority)


def test_a_single_dependency_string_is_one_name() -> None:
    assert ("tenant",) == UserLookupEnricher(dependencies="tenant").dependencies


@pytest.mark.parametrize("name", ["", 3])
def test_invalid_name_is_rejected(name: Any) -> None:
    with pytest.raises(EnricherConfigError, match="name"):
        UserLookupEnricher(name=name)


def test_empty_dependency_name_is_rejected_naming_the_enricher() -> None:
    with pytest.raises(EnricherConfigError, match=r"'user_lookup'.*dependencies"):
        UserLookupEnricher(dependencies=["tenant", ""])


def test_non_integer_priority_is_rejected_naming_the_enricher() -> None:
    with pytest.raises(EnricherConfigError, match=r"'user_lookup'.*priority"):
        UserLookupEnricher(priority="high")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, 0, -0.001, math.inf, math.nan, True, "1"])
def test_invalid_timeout_argument_is_rejected_naming_the_enricher(
    timeout: Any,
) -> None:
    with pytest.raises(EnricherConfigError, match=r"'user_lookup'.*timeout"):
        UserLookupEnricher(timeout=timeout)


def test_negative_timeout_class_attribute_is_rejected_at_construction() -> None:
    class Negative(UserLookupEnricher):
        timeout = -1.0

    with pytest.raises(EnricherConfigError, match=r"'negative'.*timeout"):
        Negative()


@pytest.mark.parametrize("option", ["max_concurrency", "retry_attempts", "failure_threshold"])
def test_counts_below_one_are_rejected_naming_the_option(option: str) -> None:
    with pytest.raises(EnricherConfigError, match=option):
        UserLookupEnricher(**{option: 0})


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("timeout", -1, "Input should be greater than 0"),
        ("timeout", math.inf, "Input should be a finite number"),
        ("timeout", "1", "Input should be a valid number"),
        ("max_concurrency", 0, "Input should be greater than or equal to 1"),
    ],
)
def test_invalid_option_message_names_enricher_option_and_value(
    option: str, value: Any, problem: str
) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        UserLookupEnricher(**{option: value})

    assert f"enricher 'user_lookup': {option}={value!r} is not valid: {problem}" == str(
        caught.value
    )


def test_unknown_option_keyword_is_rejected_naming_it() -> None:
    with pytest.raises(EnricherConfigError, match=r"unknown option 'cache_tll' \(did you mean"):
        UserLookupEnricher(cache_tll=5)


class _Batching(AsyncEnricher):
    def cache_key(self, event_dict: EventDict) -> Any:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Any) -> Any:
        return {}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        return event_dict


class _AsyncApply(_Batching):
    async def apply(self, event_dict: EventDict, value: Any) -> EventDict:  # type: ignore[override]
        return event_dict


class _AsyncCacheKey(_Batching):
    async def cache_key(self, event_dict: EventDict) -> Any:  # type: ignore[override]
        return 1


class _SyncEnrichMany(_Batching):
    def enrich_many(self, keys: Any) -> Any:  # type: ignore[override]
        return {}


class _SyncEnrichAsync(AsyncEnricher):
    def enrich_async(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:  # type: ignore[override]
        return event_dict


class _SyncStartup(UserLookupEnricher):
    def _startup(self) -> None:  # type: ignore[override]
        pass


class _AsyncEnrich(SyncEnricher):
    async def enrich(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:  # type: ignore[override]
        return event_dict


# Found by an outside tester: `async def apply` was accepted and every event
# then failed with invalid_return and "coroutine was never awaited"; `async def
# cache_key` silently used coroutine objects as keys (no cache, no dedup).
@pytest.mark.parametrize(
    ("cls", "method", "needs"),
    [
        (_AsyncApply, "apply", "plain method"),
        (_AsyncCacheKey, "cache_key", "plain method"),
        (_AsyncEnrich, "enrich", "plain method"),
        (_SyncEnrichMany, "enrich_many", "async def"),
        (_SyncEnrichAsync, "enrich_async", "async def"),
        (_SyncStartup, "_startup", "async def"),
    ],
)
def test_a_method_of_the_wrong_kind_is_refused_at_construction(
    cls: type[Enricher], method: str, needs: str
) -> None:
    with pytest.raises(EnricherConfigError, match=rf"{method}\(\) must be .*{needs}"):
        cls(name="culprit")


def test_a_decorated_awaited_method_is_taken_as_it_is() -> None:
    import functools

    def traced(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)  # returns the coroutine

        return wrapper

    class Traced(UserLookupEnricher):
        enrich_async = traced(UserLookupEnricher.enrich_async)

    assert "traced" == Traced(name="traced").name


def test_options_holds_what_the_enricher_sets_itself() -> None:
    enricher = Declared(cache_ttl=60)

    assert {"timeout": 0.3, "cache_ttl": 60.0} == enricher.options.model_dump(exclude_none=True)


def test_repr_shows_class_and_name() -> None:
    assert "<UserLookupEnricher 'user_lookup'>" == repr(UserLookupEnricher())


async def test_base_enrich_async_must_be_overridden() -> None:
    class Forgot(AsyncEnricher):
        pass

    with pytest.raises(NotImplementedError, match="Forgot"):
        await Forgot().enrich_async(None, "info", {})


def test_is_started_and_is_healthy_start_false() -> None:
    enricher = UserLookupEnricher()

    assert (False, False) == (enricher.is_started, enricher.is_healthy)


async def test_startup_marks_started_and_healthy() -> None:
    enricher = UserLookupEnricher()

    await enricher.startup()

    assert (True, True) == (enricher.is_started, enricher.is_healthy)


# -- as_enricher -----------------------------------------------------------------


def test_as_enricher_returns_an_enricher_instance_unchanged() -> None:
    enricher = UserLookupEnricher()

    assert enricher is as_enricher(enricher)


def test_as_enricher_wraps_a_sync_processor_as_inline_sync_enricher() -> None:
    enricher = as_enricher(add_host)

    assert (True, False, "add_host") == (
        isinstance(enricher, SyncEnricher),
        enricher.blocking,  # type: ignore[attr-defined]
        enricher.name,
    )


def test_as_enricher_wraps_an_async_def_processor_as_async_enricher() -> None:
    enricher = as_enricher(add_region)

    assert (True, "add_region") == (isinstance(enricher, AsyncEnricher), enricher.name)


def test_as_enricher_accepts_a_callable_object_with_async_call() -> None:
    class Lookup:
        async def __call__(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    assert isinstance(as_enricher(Lookup()), AsyncEnricher)


def test_as_enricher_accepts_a_lambda_processor() -> None:
    enricher = as_enricher(lambda logger, method_name, event_dict: event_dict)

    assert "<lambda>" == enricher.name


def test_as_enricher_accepts_a_processor_with_extra_defaulted_parameters() -> None:
    def flexible(
        logger: WrappedLogger,
        method_name: str,
        event_dict: EventDict,
        extra: int = 1,
    ) -> EventDict:
        return event_dict

    assert "flexible" == as_enricher(flexible).name


async def test_wrapped_async_function_enriches_a_copy() -> None:
    enricher = as_enricher(add_region)
    assert isinstance(enricher, AsyncEnricher)

    result = await enricher.enrich_async(None, "info", {"event": "x"})

    assert {"event": "x", "region": "eu"} == result


def test_wrapped_sync_function_enriches() -> None:
    enricher = as_enricher(add_host)
    assert isinstance(enricher, SyncEnricher)

    result = enricher.enrich(None, "info", {"event": "x"})

    assert {"event": "x", "host": "web-1"} == result


@pytest.mark.parametrize("value", [42, 4.2, "user", None, ["a"]])
def test_as_enricher_rejects_non_enrichers_naming_value_and_type(value: Any) -> None:
    with pytest.raises(EnricherConfigError, match=type(value).__name__):
        as_enricher(value)


def test_as_enricher_rejects_an_enricher_class_suggesting_an_instance() -> None:
    with pytest.raises(EnricherConfigError, match=r"use UserLookupEnricher\(\)"):
        as_enricher(UserLookupEnricher)


def test_as_enricher_rejects_an_unrelated_class_naming_it() -> None:
    class Helper:
        pass

    with pytest.raises(EnricherConfigError, match="Helper is a class"):
        as_enricher(Helper)


@pytest.mark.parametrize("arity", [0, 1, 2, 4])
def test_as_enricher_rejects_functions_with_the_wrong_arity(arity: int) -> None:
    params = ", ".join(f"p{i}" for i in range(arity))
    namespace: dict[str, Any] = {}
    exec(f"def wrong_arity({params}):\n    return {{}}", namespace)

    with pytest.raises(EnricherConfigError, match=r"'wrong_arity'.*logger, method_name"):
        as_enricher(namespace["wrong_arity"])


def test_as_enricher_rejects_async_function_with_the_wrong_arity() -> None:
    async def two(logger: WrappedLogger, event_dict: EventDict) -> EventDict:
        return event_dict

    with pytest.raises(EnricherConfigError, match="'two'"):
        as_enricher(two)


# -- register_enricher ----------------------------------------------------------------


def test_register_enricher_function_form_applies_options() -> None:
    enricher = register_enricher(add_host, name="host", dependencies=["tenant"], priority=3)

    assert ("host", ("tenant",), 3) == identity(enricher)


def test_register_enricher_decorator_without_arguments() -> None:
    @register_enricher
    def add_pid(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict

    assert ("add_pid", (), 100, True) == (
        *identity(add_pid),
        isinstance(add_pid, SyncEnricher),
    )


def test_register_enricher_decorator_with_arguments() -> None:
    @register_enricher(name="pid", dependencies="host", priority=2)
    def add_pid(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict

    assert ("pid", ("host",), 2) == identity(add_pid)


def test_register_enricher_decorates_an_async_def_function() -> None:
    @register_enricher(name="region", priority=9)
    async def lookup_region(
        logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict

    assert ("region", (), 9, True) == (
        *identity(lookup_region),
        isinstance(lookup_region, AsyncEnricher),
    )


def test_register_enricher_bare_decorator_on_async_def_function() -> None:
    @register_enricher
    async def lookup_region(
        logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict

    assert ("lookup_region", True) == (
        lookup_region.name,
        isinstance(lookup_region, AsyncEnricher),
    )


def test_register_enricher_blocking_makes_a_blocking_sync_enricher() -> None:
    enricher = register_enricher(add_host, blocking=True)

    assert (True, True) == (isinstance(enricher, SyncEnricher), enricher.blocking)  # type: ignore[attr-defined]


def test_register_enricher_rejects_blocking_for_async_def() -> None:
    with pytest.raises(EnricherConfigError, match=r"'add_region'.*blocking"):
        register_enricher(add_region, blocking=True)


def test_register_enricher_on_an_instance_returns_it_with_options() -> None:
    original = UserLookupEnricher()

    registered = register_enricher(original, name="user", priority=5)

    assert (True, "user", 5) == (registered is original, original.name, original.priority)


def test_register_enricher_rejects_blocking_for_an_async_enricher_instance() -> None:
    with pytest.raises(EnricherConfigError, match=r"'user_lookup'.*blocking"):
        register_enricher(UserLookupEnricher(), blocking=True)


def test_register_enricher_rejects_a_non_enricher() -> None:
    with pytest.raises(EnricherConfigError, match="42"):
        register_enricher(42)


def test_register_enricher_rejects_a_class() -> None:
    with pytest.raises(EnricherConfigError, match=r"use UserLookupEnricher\(\)"):
        register_enricher(UserLookupEnricher)


def test_register_enricher_registers_nothing_globally() -> None:
    first = register_enricher(add_host, name="host")
    second = register_enricher(add_host, name="host")

    assert first is not second


def _async_decorator(fn: Any) -> Any:
    """A decorator of an async def, written as one should be: async too."""
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        return await fn(*args)

    return wrapper


def _run_to_the_end(fn: Any) -> Any:
    """A sync wrapper of an async def that runs it and returns its value
    (as asgiref's async_to_sync does); it keeps ``__wrapped__`` too."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return asyncio.run(fn(*args))

    return wrapper


async def _adds_flags(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["flags"] = 1
    return event_dict


def test_a_processor_decorated_by_an_async_decorator_is_awaited() -> None:
    assert isinstance(as_enricher(_async_decorator(_adds_flags)), AsyncEnricher)


def test_a_sync_wrapper_of_an_async_def_is_a_sync_processor() -> None:
    # A review found the first fix for decorated processors (judging them by
    # the function they wrap) awaiting such a wrapper on the loop, where
    # asyncio.run() fails: it is called as the sync function it is.
    enricher = as_enricher(_run_to_the_end(_adds_flags))

    assert isinstance(enricher, SyncEnricher)
    assert {"flags": 1} == enricher.enrich(None, "info", {})


def test_an_async_generator_processor_is_refused() -> None:
    async def flags(logger: Any, method_name: str, event_dict: EventDict) -> Any:
        yield event_dict

    with pytest.raises(EnricherConfigError, match="'flags': an async generator function"):
        as_enricher(flags)


def _passes(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    return event_dict


class _Plain(SyncEnricher):
    def enrich(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict


# Found by an outside tester: a bare TypeError naming nothing, or "yes"
# taken as True.
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: register_enricher(_passes, name="x", dependencies=5), "'x': dependencies must be"),
        (lambda: _Plain(name="x", dependencies=5), "'x': dependencies must be a name or a list"),
        (lambda: _Plain(name="x", provides=5), "'x': provides must be a name or a list"),
        (lambda: _Plain(name="x", blocking="yes"), "'x': blocking must be True or False"),
        (lambda: register_enricher(_passes, name="x", blocking="yes"), "'x': blocking must be"),
        (lambda: register_enricher(_Plain(name="x"), priority=1.5), "'x': priority must be"),
    ],
)
def test_a_bad_argument_is_a_config_error_naming_the_enricher(make: Any, message: str) -> None:
    with pytest.raises(EnricherConfigError, match=message):
        make()
