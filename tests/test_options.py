"""Tests for :mod:`enrichlog.options`: each resilience knob declared once,
validated the same way from code, URIs and settings, and resolved in one
place for the runtime and the plan."""

from __future__ import annotations

import typing
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from structlog.typing import EventDict, WrappedLogger

from enrichlog import EnricherOptions as ExportedOptions
from enrichlog.enricher import AsyncEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.options import (
    DEFAULT_SETTING,
    MAX_COUNT,
    MAX_TIMEOUT,
    EnricherOptions,
    ResolvedOptions,
)
from enrichlog.settings import EnricherOptions as SettingsOptions
from enrichlog.settings import LoggingSettings
from enrichlog.uri import EnricherFactory

KNOBS = list(EnricherOptions.model_fields)

# A valid value of each knob that differs from its settings default.
OWN = {
    "timeout": 0.3,
    "cache_ttl": 30.0,
    "cache_max_size": 10,
    "cache_error_ttl": 2.0,
    "max_concurrency": 8,
    "retry_attempts": 3,
    "retry_base_delay": 0.01,
    "retry_max_delay": 0.5,
    "failure_threshold": 9,
    "recovery_timeout": 7.0,
    "half_open_max_calls": 2,
    "batch_size": 50,
    "batch_window": 0.005,
}
OVERRIDE = {
    "timeout": 0.2,
    "cache_ttl": 20.0,
    "cache_max_size": 20,
    "cache_error_ttl": 3.0,
    "max_concurrency": 16,
    "retry_attempts": 4,
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.25,
    "failure_threshold": 11,
    "recovery_timeout": 8.0,
    "half_open_max_calls": 3,
    "batch_size": 25,
    "batch_window": 0.002,
}


class Lookup(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


class Batching(AsyncEnricher):
    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        return {key: key for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["user"] = value
        return event_dict


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def bounds(info: Any) -> list[Any]:
    """The constraints of a field, with ``| None`` looked through."""
    found = list(info.metadata)
    for arg in typing.get_args(info.annotation):
        found += getattr(arg, "__metadata__", ())
    # An Annotated inside a union keeps its Field(...) whole: open it.
    return [item for meta in found for item in getattr(meta, "metadata", [meta])]


# -- declared once -----------------------------------------------------------------


def test_every_knob_has_one_settings_default() -> None:
    assert KNOBS == list(DEFAULT_SETTING)
    assert set(DEFAULT_SETTING.values()) <= set(LoggingSettings.model_fields)


@pytest.mark.parametrize("knob", KNOBS)
def test_knob_and_its_settings_default_accept_the_same_values(knob: str) -> None:
    setting = LoggingSettings.model_fields[DEFAULT_SETTING[knob]]

    assert bounds(EnricherOptions.model_fields[knob]) == bounds(setting)


@pytest.mark.parametrize("knob", KNOBS)
def test_resolved_options_narrow_every_knob_with_the_same_bounds(knob: str) -> None:
    assert bounds(EnricherOptions.model_fields[knob]) == bounds(ResolvedOptions.model_fields[knob])
    assert ResolvedOptions.model_fields[knob].is_required()


def test_async_enricher_has_an_attribute_for_every_knob_and_no_other() -> None:
    declared = {
        name
        for name, hint in typing.get_type_hints(AsyncEnricher).items()
        if name not in typing.get_type_hints(AsyncEnricher.__mro__[1])
        and typing.get_origin(hint) is not typing.ClassVar  # keep_existing: no knob
    }

    assert set(KNOBS) == declared


def test_enricher_options_is_one_class_wherever_it_is_imported_from() -> None:
    assert ExportedOptions is EnricherOptions is SettingsOptions


# -- in code -------------------------------------------------------------------------


def test_class_attributes_and_keywords_set_every_knob() -> None:
    declared = type("Declared", (Lookup,), dict(OWN))

    from_class = declared()
    from_keywords = Lookup(**OVERRIDE)

    assert OWN == {knob: getattr(from_class, knob) for knob in KNOBS}
    assert OVERRIDE == {knob: getattr(from_keywords, knob) for knob in KNOBS}


def test_options_is_the_model_of_what_the_enricher_sets() -> None:
    enricher = Lookup(timeout=0.5, batch_size=7)

    assert EnricherOptions(timeout=0.5, batch_size=7) == enricher.options


def test_a_keyword_of_none_keeps_the_class_attribute() -> None:
    declared = type("Declared", (Lookup,), {"timeout": 0.4})

    assert 0.4 == declared(timeout=None).timeout


@pytest.mark.parametrize(
    ("knob", "value", "problem"),
    [
        ("timeout", MAX_TIMEOUT * 2, "less than or equal to 86400"),
        ("cache_ttl", 0, "greater than 0"),
        ("cache_max_size", MAX_COUNT + 1, "less than or equal to 1000000"),
        ("retry_attempts", 101, "less than or equal to 100"),
        ("batch_window", -0.1, "greater than or equal to 0"),
        ("batch_size", 2.5, "valid integer"),
        ("half_open_max_calls", True, "a number is expected, not True"),
        ("retry_base_delay", "0.1", "valid number"),
    ],
)
def test_invalid_knob_names_enricher_knob_and_value(knob: str, value: Any, problem: str) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        Lookup(name="users", **{knob: value})

    message = str(caught.value)
    assert message.startswith(f"enricher 'users': {knob}={value!r} is not valid: ")
    assert problem in message


def test_batch_window_accepts_zero() -> None:
    assert 0.0 == Lookup(batch_window=0).batch_window


def test_unknown_keyword_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(EnricherConfigError, match=r"'lookup': unknown option 'timeot' \(did you"):
        Lookup(timeot=0.5)


def test_invalid_attribute_set_after_construction_is_reported_when_resolved() -> None:
    enricher = Lookup()
    enricher.timeout = -1

    with pytest.raises(EnricherConfigError, match=r"'lookup': timeout=-1 is not valid"):
        ResolvedOptions.for_enricher(enricher, LoggingSettings())


# -- in URIs -------------------------------------------------------------------------


class UriLookup(Lookup):
    scheme = "test-options-lookup"


@pytest.mark.parametrize("knob", KNOBS)
def test_every_knob_is_a_query_key_of_an_async_scheme(knob: str) -> None:
    enricher = EnricherFactory.build(f"test-options-lookup://?{knob}={OWN[knob]}")

    assert OWN[knob] == getattr(enricher, knob)


def test_ttl_is_the_alias_of_cache_ttl() -> None:
    enricher = EnricherFactory.build("test-options-lookup://?ttl=42")

    assert 42.0 == enricher.cache_ttl  # type: ignore[attr-defined]


def test_ttl_and_cache_ttl_together_are_refused() -> None:
    with pytest.raises(EnricherConfigError, match="'cache_ttl' is given more than once"):
        EnricherFactory.build("test-options-lookup://?ttl=42&cache_ttl=7")


def test_invalid_query_knob_names_the_key_as_written() -> None:
    with pytest.raises(EnricherConfigError, match="query key 'ttl': Input should be greater"):
        EnricherFactory.build("test-options-lookup://?ttl=0")


@pytest.mark.parametrize("knob", [*KNOBS, "ttl"])
def test_sync_enricher_refuses_every_knob_as_a_query_key(knob: str) -> None:
    with pytest.raises(EnricherConfigError, match=f"'{knob}' applies to async enrichers only"):
        EnricherFactory.build(f"hostname://?{knob}=1")


def test_async_scheme_lists_the_knobs_among_its_accepted_keys() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build("test-options-lookup://?colour=red")

    assert "name, dependencies, priority, timeout, cache_ttl (or ttl), " in str(caught.value)
    assert "batch_window" in str(caught.value)


# -- resolution ------------------------------------------------------------------------


@pytest.mark.parametrize("knob", KNOBS)
def test_override_beats_own_value_beats_settings_default(knob: str) -> None:
    enricher = Lookup(name="users", **{knob: OWN[knob]})
    with_override = LoggingSettings(enricher_options={"users": {knob: OVERRIDE[knob]}})
    default = getattr(LoggingSettings(), DEFAULT_SETTING[knob])

    assert (OVERRIDE[knob], OWN[knob], default) == (
        getattr(ResolvedOptions.for_enricher(enricher, with_override), knob),
        getattr(ResolvedOptions.for_enricher(enricher, LoggingSettings()), knob),
        getattr(ResolvedOptions.for_enricher(Lookup(name="users"), LoggingSettings()), knob),
    )


@pytest.mark.parametrize("knob", KNOBS)
def test_settings_default_of_each_knob_reaches_the_resolution(knob: str) -> None:
    settings = LoggingSettings(**{DEFAULT_SETTING[knob]: OWN[knob]})

    assert OWN[knob] == getattr(ResolvedOptions.for_enricher(Lookup(), settings), knob)


def test_user_enrichers_get_a_finite_concurrency_by_default() -> None:
    resolved = ResolvedOptions.for_enricher(Lookup(), LoggingSettings())

    assert (64, 100, 0.0) == (resolved.max_concurrency, resolved.batch_size, resolved.batch_window)


def test_resolved_options_are_frozen() -> None:
    resolved = ResolvedOptions.for_enricher(Lookup(), LoggingSettings())

    with pytest.raises(ValidationError):
        resolved.timeout = 2.0  # type: ignore[misc]


def test_per_enricher_override_of_a_new_knob_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS__USERS__BATCH_SIZE", "5")
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS__USERS__CACHE_ERROR_TTL", "0.5")

    resolved = ResolvedOptions.for_enricher(Lookup(name="users"), LoggingSettings())

    assert (5, 0.5) == (resolved.batch_size, resolved.cache_error_ttl)


def test_batch_window_not_shorter_than_timeout_is_refused_for_a_batching_enricher() -> None:
    settings = LoggingSettings(batch_window=0.5, enricher_timeout=0.5)

    with pytest.raises(EnricherConfigError, match=r"'batching': batch_window \(0\.5s\) must be"):
        ResolvedOptions.for_enricher(Batching(), settings)
    assert 0.5 == ResolvedOptions.for_enricher(Lookup(), settings).batch_window


def test_model_is_a_pydantic_model_with_every_knob_optional() -> None:
    assert issubclass(EnricherOptions, BaseModel)
    assert all(value is None for value in EnricherOptions().model_dump().values())
