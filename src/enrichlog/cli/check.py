"""``python -m enrichlog plan`` and ``check``: the plan the environment
configures, and whether the settings are valid."""

from __future__ import annotations

import sys
from typing import Annotated, Any, TextIO

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..container import resolve_settings
from ..engine.registry import EnricherRegistry
from ..enricher import Enricher
from ..exceptions import EnrichlogError
from ..settings import LoggingSettings
from ..uri.factory import EnricherFactory
from ..uri.masking import mask_secrets
from .plan import PlanFormat, describe_plan, render_plan

__all__ = ["check", "show_plan"]


def _problems_and_enrichers(
    settings: LoggingSettings,
) -> tuple[list[str], list[Enricher]]:
    problems: list[str] = []
    enrichers: list[Enricher] = []
    for uri in settings.enrichers:
        try:
            enrichers.append(EnricherFactory.build(uri))
        except EnrichlogError as exc:
            problems.append(str(exc))
    if not problems:
        try:
            EnricherRegistry(enrichers).levels()
        except EnrichlogError as exc:
            problems.append(str(exc))
    return problems, enrichers


def show_plan(fmt: PlanFormat, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the execution plan of the environment's settings; 1 on errors."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = resolve_settings(None, {})
    except EnrichlogError as exc:
        print(f"error: {exc}", file=err)
        return 1
    problems, enrichers = _problems_and_enrichers(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=err)
        return 1
    levels = EnricherRegistry(enrichers).levels()
    print(render_plan(describe_plan(levels, settings), fmt), file=out)
    return 0


class _EnricherUris(BaseSettings):
    """Only ``ENRICHLOG_ENRICHERS``, read the way :class:`LoggingSettings`
    reads it: so ``check`` can validate the URIs when another setting is
    invalid, and list every problem in one run."""

    model_config = SettingsConfigDict(
        env_prefix="ENRICHLOG_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    enrichers: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("enrichers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return LoggingSettings.split_uri_list(value)


def check(out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate the environment's settings and enricher URIs.

    Prints every problem found and returns 1, or a one-line summary and 0.
    """
    out, err = out or sys.stdout, err or sys.stderr
    problems: list[str] = []
    try:
        settings = resolve_settings(None, {})
    except EnrichlogError as exc:
        problems.append(str(exc))
        try:
            uris = _EnricherUris().enrichers
        except ValueError as uri_error:  # the list itself does not parse
            uris = []
            problems.append(f"ENRICHLOG_ENRICHERS: {mask_secrets(str(uri_error))}")
        settings = LoggingSettings.model_construct(enrichers=uris)
    more, enrichers = _problems_and_enrichers(settings)
    problems.extend(more)
    for problem in problems:
        print(f"error: {problem}", file=err)
    if problems:
        print(f"{len(problems)} problem(s) found", file=err)
        return 1
    print(
        f"ok: {len(enrichers)} enricher(s) from URIs, level={settings.level}, "
        f"format={settings.format}, delivery={settings.delivery}, output={settings.output}",
        file=out,
    )
    return 0
