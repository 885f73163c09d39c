"""Tests for :mod:`enrichlog.cli.plan`: describing and rendering the plan."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr
from structlog.typing import EventDict, WrappedLogger

from enrichlog.cli.plan import describe_plan, render_plan
from enrichlog.enricher import AsyncEnricher, Enricher, register_enricher
from enrichlog.enrichers import HostnameEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.options import ResolvedOptions
from enrichlog.settings import LoggingSettings
from enrichlog.uri.factory import EnricherFactory

SECRET = "hunter2-Sesame"


class TenantEnricher(AsyncEnricher):
    timeout = 0.5

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


class UserEnricher(AsyncEnricher):
    dependencies = ("tenant",)
    cache_ttl = 30.0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


class DatabaseEnricher(AsyncEnricher):
    scheme = "test-plan-db"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        host: str
        user: str | None = None
        password: SecretStr | None = None

    def __init__(self, *, params: DatabaseEnricher.Params, **options: Any) -> None:
        self.params = params
        super().__init__(**options)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def add_version(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["version"] = "1.0"
    return event_dict


def make_settings(**values: Any) -> LoggingSettings:
    return LoggingSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def levels() -> list[list[Enricher]]:
    tenant = TenantEnricher()
    database = EnricherFactory.build(
        f"test-plan-db://app:{SECRET}@db.internal?name=db&ttl=60&dependencies=tenant"
    )
    blocking = register_enricher(add_version, blocking=True)
    return [
        [HostnameEnricher(), tenant, blocking],
        [UserEnricher(), database],
    ]


def entries(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for level in description["levels"] for entry in level["enrichers"]}


def test_describe_plan_lists_levels_in_order(levels: list[list[Enricher]]) -> None:
    description = describe_plan(levels, make_settings())

    assert [[entry["name"] for entry in level["enrichers"]] for level in description["levels"]] == [
        ["hostname", "tenant", "add_version"],
        ["user", "db"],
    ]


def test_describe_plan_gives_kind_source_and_dependencies(
    levels: list[list[Enricher]],
) -> None:
    described = entries(describe_plan(levels, make_settings()))

    assert [
        (
            name,
            described[name]["kind"],
            described[name]["source"],
            described[name]["dependencies"],
        )
        for name in ("hostname", "add_version", "user", "db")
    ] == [
        ("hostname", "sync", "code", []),
        ("add_version", "blocking", "code", []),
        ("user", "async", "code", ["tenant"]),
        ("db", "async", "uri", ["tenant"]),
    ]


def test_describe_plan_shows_the_uri_with_the_password_masked(
    levels: list[list[Enricher]],
) -> None:
    described = entries(describe_plan(levels, make_settings()))

    assert (
        described["db"]["uri"]
        == "test-plan-db://app:***@db.internal?name=db&ttl=60&dependencies=tenant"
    )


def test_describe_plan_resolves_effective_options(levels: list[list[Enricher]]) -> None:
    settings = make_settings(
        enricher_timeout=2.0,
        enricher_options={"user": {"timeout": 0.2, "retry_attempts": 3}},
    )

    described = entries(describe_plan(levels, settings))

    assert [described[n]["timeout"] for n in ("tenant", "user", "db")] == [
        0.5,
        0.2,
        2.0,
    ]
    assert described["user"]["cache"] == {
        "enabled": True,
        "ttl": 30.0,
        "max_size": 1000,
        "error_ttl": 5.0,
    }
    assert described["user"]["retry"] == {"attempts": 3, "base_delay": 0.05, "max_delay": 1.0}
    assert described["db"]["cache"]["ttl"] == 60.0
    assert described["hostname"]["breaker"] is None


def test_effective_options_prefers_override_then_attribute_then_default() -> None:
    enricher = TenantEnricher(timeout=0.5, failure_threshold=9)
    settings = make_settings(
        enricher_options={"tenant": {"timeout": 0.1}}, breaker_recovery_timeout=7.0
    )

    options = ResolvedOptions.for_enricher(enricher, settings)

    assert (
        options.timeout,
        options.failure_threshold,
        options.recovery_timeout,
    ) == (0.1, 9, 7.0)


def test_describe_plan_resolves_auto_delivery(levels: list[list[Enricher]]) -> None:
    with_async = describe_plan(levels, make_settings(delivery="auto"))
    sync_only = describe_plan([[HostnameEnricher()]], make_settings(delivery="auto"))

    assert (
        with_async["effective_delivery"],
        sync_only["effective_delivery"],
    ) == ("background", "inline")


def test_render_json_parses_back_to_the_description(
    levels: list[list[Enricher]],
) -> None:
    description = describe_plan(levels, make_settings())

    rendered = render_plan(description, "json")

    assert description == json.loads(rendered)


def test_render_text_shows_each_level_and_enricher(
    levels: list[list[Enricher]],
) -> None:
    rendered = render_plan(describe_plan(levels, make_settings()), "text")

    lines = rendered.splitlines()
    assert "level 0 (3 enrichers, concurrently)" in lines
    assert "level 1 (2 enrichers, concurrently)" in lines
    assert any(line.split()[:3] == ["tenant", "async", "code"] for line in lines)


def test_render_text_of_an_empty_plan_says_so() -> None:
    rendered = render_plan(describe_plan([], make_settings()), "text")

    assert rendered.endswith("no enrichers configured")


def test_render_mermaid_has_a_subgraph_per_level_and_an_edge_per_dependency(
    levels: list[list[Enricher]],
) -> None:
    rendered = render_plan(describe_plan(levels, make_settings()), "mermaid")

    lines = [line.strip() for line in rendered.splitlines()]
    assert lines[0] == "flowchart TD"
    assert [line for line in lines if line.startswith("subgraph")] == [
        'subgraph level_0["level 0"]',
        'subgraph level_1["level 1"]',
    ]
    assert [line for line in lines if "-->" in line] == [
        "e_tenant --> e_user",
        "e_tenant --> e_db",
    ]


def test_render_mermaid_gives_safe_node_ids() -> None:
    enricher = TenantEnricher(name="end")
    rendered = render_plan(describe_plan([[enricher]], make_settings()), "mermaid")

    assert 'e_end["end<br/>async · code · timeout 0.5s"]' in rendered


@pytest.mark.parametrize("fmt", ["text", "json", "mermaid"])
def test_rendered_plan_never_shows_a_secret(levels: list[list[Enricher]], fmt: Any) -> None:
    rendered = render_plan(describe_plan(levels, make_settings()), fmt)

    assert SECRET not in rendered
    assert "***" in rendered


def test_render_plan_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown plan format 'yaml'"):
        render_plan({}, "yaml")  # type: ignore[arg-type]


class BatchingEnricher(AsyncEnricher):
    """Looks up every key of the events in flight in one call."""

    name = "accounts"

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("account_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        return {key: f"account {key}" for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["account"] = value
        return event_dict


def test_describe_plan_shows_batch_size_and_window_of_a_batching_enricher() -> None:
    settings = make_settings(enricher_options={"accounts": {"batch_size": 25}}, batch_window=0.01)

    described = entries(describe_plan([[BatchingEnricher(), TenantEnricher()]], settings))

    assert {"size": 25, "window": 0.01} == described["accounts"]["batch"]
    assert described["tenant"]["batch"] is None


def test_rendered_plan_shows_batching_in_text_and_mermaid() -> None:
    description = describe_plan([[BatchingEnricher()]], make_settings())

    text, mermaid = render_plan(description, "text"), render_plan(description, "mermaid")

    assert "batch" in text.splitlines()[2].split()
    assert "100, 0s" in text
    assert "batch 100" in mermaid


def test_describe_plan_shows_the_default_concurrency_limit() -> None:
    described = entries(describe_plan([[TenantEnricher()]], make_settings()))

    assert 64 == described["tenant"]["max_concurrency"]


def test_plan_values_are_the_runtime_values() -> None:
    settings = make_settings(enricher_options={"tenant": {"retry_attempts": 2}}, cache_ttl=9.0)
    enricher = TenantEnricher()

    described = entries(describe_plan([[enricher]], settings))["tenant"]
    runtime = ResolvedOptions.for_enricher(enricher, settings)

    assert (runtime.timeout, runtime.retry_attempts, runtime.cache_ttl) == (
        described["timeout"],
        described["retry"]["attempts"],
        described["cache"]["ttl"],
    )


def test_describe_plan_refuses_options_that_cannot_work() -> None:
    settings = make_settings(batch_window=2.0, enricher_timeout=1.0)

    with pytest.raises(EnricherConfigError, match="batch_window"):
        describe_plan([[BatchingEnricher()]], settings)
