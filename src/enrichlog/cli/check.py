"""``python -m enrichlog plan`` and ``check``: the plan the environment
configures, and whether the settings are valid."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any, TextIO

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..engine.output import appending_problem
from ..engine.plan import check_provides
from ..engine.registry import EnricherRegistry
from ..enricher import AsyncEnricher, Enricher
from ..exceptions import EnrichlogError
from ..options import ResolvedOptions
from ..settings import LoggingSettings, resolve_settings, validation_problem
from ..uri.factory import EnricherFactory
from ..uri.masking import mask_secrets
from .plan import PlanFormat, describe_plan, render_plan

__all__ = ["check", "show_plan"]


def _problems_and_levels(
    settings: LoggingSettings,
) -> tuple[list[str], list[Enricher], Sequence[Sequence[Enricher]]]:
    """Build the settings' URI enrichers, arrange them and resolve their
    options; every problem found on the way, as messages."""
    problems: list[str] = []
    enrichers: list[Enricher] = []
    for uri in settings.enrichers:
        try:
            enrichers.append(EnricherFactory.build(uri))
        except EnrichlogError as exc:
            problems.append(str(exc))
    levels: Sequence[Sequence[Enricher]] = ()
    if not problems:
        try:
            levels = EnricherRegistry(enrichers).levels()
        except EnrichlogError as exc:
            problems.append(str(exc))
    for enricher in enrichers:
        try:
            check_provides(enricher, settings.error_field)
        except EnrichlogError as exc:
            problems.append(str(exc))
        if isinstance(enricher, AsyncEnricher):
            try:
                ResolvedOptions.for_enricher(enricher, settings)
            except EnrichlogError as exc:
                problems.append(str(exc))
    return problems, enrichers, levels


def show_plan(fmt: PlanFormat, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the execution plan of the environment's settings; 1 on errors."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = resolve_settings(None, {})
    except EnrichlogError as exc:
        print(f"error: {exc}", file=err)
        return 1
    problems, _, levels = _problems_and_levels(settings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=err)
        return 1
    print(render_plan(describe_plan(levels, settings), fmt), file=out)
    return 0


class _EnricherUris(BaseSettings):
    """Only ``ENRICHLOG_ENRICHERS``, read the way :class:`LoggingSettings`
    reads it: so ``check`` can validate the URIs when another setting is
    invalid, and list every problem in one run."""

    model_config = SettingsConfigDict(
        env_prefix="ENRICHLOG_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    # Any entries: the settings report one that is not a string already, and
    # the URIs beside it are still checked.
    enrichers: Annotated[list[Any], NoDecode] = Field(default_factory=list)

    @field_validator("enrichers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return LoggingSettings.split_uri_list(value)


def _uris_alone(problems: list[str]) -> list[str]:
    """The URIs of ``ENRICHLOG_ENRICHERS`` when the settings as a whole are
    invalid; a problem with the list itself is added to ``problems``."""
    try:
        return [uri for uri in _EnricherUris().enrichers if isinstance(uri, str)]
    except (OSError, UnicodeDecodeError):
        return []  # the .env file cannot be read: already reported
    except ValidationError as exc:
        # As the settings name them (enrichers.1: ...), so that one the
        # settings' own message reported already is not counted twice.
        details = [
            validation_problem(error)
            for error in exc.errors(include_url=False, include_input=False)
        ]
    except ValueError as exc:
        details = [f"ENRICHLOG_ENRICHERS: {mask_secrets(str(exc))}"]
    problems.extend(
        f"invalid logging settings: {detail}"
        for detail in details
        if not any(detail in problem for problem in problems)
    )
    return []


def check(out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate the environment's settings and enricher URIs.

    Prints every problem found and returns 1, or a one-line summary and 0.
    A configuration problem is never shown as a traceback.
    """
    out, err = out or sys.stdout, err or sys.stderr
    problems: list[str] = []
    try:
        settings = resolve_settings(None, {})
    except EnrichlogError as exc:
        problems.append(str(exc))
        settings = LoggingSettings.model_construct(enrichers=_uris_alone(problems))
    more, enrichers, _ = _problems_and_levels(settings)
    problems.extend(more)
    output = settings.output
    if isinstance(output, str) and output not in ("stdout", "stderr"):
        # configure_logging refuses an output it cannot open: so does check.
        problem = appending_problem(output)
        if problem is not None:
            problems.append(mask_secrets(problem))
    for problem in problems:
        print(f"error: {problem}", file=err)
    if problems:
        print(f"{len(problems)} problem(s) found", file=err)
        return 1
    print(
        f"ok: {len(enrichers)} enricher(s) from URIs, level={settings.level}, "
        f"format={settings.format}, delivery={settings.delivery}, "
        f"output={mask_secrets(settings.output_name)}",
        file=out,
    )
    return 0
