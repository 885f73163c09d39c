"""``python -m enrichlog plan`` and ``check``: the plan the environment
configures, and whether the settings are valid."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Sequence
from typing import Annotated, Any, TextIO

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..engine.output import appending_problem
from ..engine.plan import check_provides
from ..engine.registry import EnricherRegistry
from ..enricher import AsyncEnricher, Enricher
from ..exceptions import EnrichlogError, did_you_mean
from ..options import ResolvedOptions, sync_enricher_options_error
from ..settings import LoggingSettings, resolve_settings, validation_problem
from ..transport import TransportConfig, spool_dir_problem
from ..uri.factory import EnricherFactory
from ..uri.masking import mask_secrets, mask_uri
from .plan import PlanFormat, describe_plan, render_plan

__all__ = ["check", "show_plan"]


def _problems_and_levels(
    settings: LoggingSettings,
) -> tuple[list[str], list[Enricher], Sequence[Sequence[Enricher]]]:
    """Build the settings' URI enrichers, arrange them and resolve their
    options; every problem found on the way, as messages."""
    problems: list[str] = []
    enrichers: list[Enricher] = []
    uris: list[tuple[int, str]] = []  # of each enricher: its position, its URI
    for position, uri in enumerate(settings.enrichers, 1):
        try:
            enrichers.append(EnricherFactory.build(uri))
            uris.append((position, uri))
        except EnrichlogError as exc:
            problems.append(str(exc))
    problems += _same_names(enrichers, uris)
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
        elif enricher.name in settings.enricher_options:
            # (A name no URI enricher has may be an enricher defined in code.)
            problems.append(str(sync_enricher_options_error(enricher.name)))
    return problems, enrichers, levels


def _same_names(enrichers: Sequence[Enricher], uris: Sequence[tuple[int, str]]) -> list[str]:
    """A problem for each name that several URIs give their enrichers,
    naming the URIs (masked) by their position in ENRICHLOG_ENRICHERS."""
    by_name: dict[str, list[tuple[int, str]]] = {}
    for enricher, uri in zip(enrichers, uris, strict=True):
        by_name.setdefault(enricher.name, []).append(uri)
    return [
        f"enrichers {', '.join(f'{position} ({_shown_uri(uri)})' for position, uri in clashing)}"
        f" of ENRICHLOG_ENRICHERS are all named {name!r}; give all but one another name "
        "with ?name="
        for name, clashing in by_name.items()
        if len(clashing) > 1
    ]


#: The most of a URI a problem about several URIs shows.
_SHOWN_URI = 80


def _shown_uri(uri: str) -> str:
    shown = mask_uri(uri)
    if len(shown) > _SHOWN_URI:
        shown = f"{shown[: _SHOWN_URI - 1]}…"
    return repr(shown)


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
    # (Not while a URI is refused: its enricher's name is not known; nor for
    # a producer whose workers enrich, which configure_logging does not check.)
    transport = None if settings.transport is None else TransportConfig.parse(settings.transport)
    remote = transport is not None and (transport.enrich or settings.enrich) == "remote"
    notes = [] if problems or remote else _options_for_others(settings, enrichers)
    output = settings.output
    if isinstance(output, str) and output not in ("stdout", "stderr"):
        # configure_logging refuses an output it cannot open: so does check.
        problem, note = _output_problem(output)
        if problem is not None:
            problems.append(mask_secrets(problem))
        if note is not None:
            notes.append(note)
    if transport is not None and settings.spool_dir is not None:
        # configure_logging refuses a spool that cannot be written: so does check.
        problem = spool_dir_problem(settings.spool_dir, transport.subject)
        if problem is not None:
            problems.append(mask_secrets(problem))
    for problem in problems:
        print(f"error: {problem}", file=err)
    if problems:
        print(f"{len(problems)} problem(s) found", file=err)
    else:
        print(
            f"ok: {len(enrichers)} enricher(s) from URIs, level={settings.level}, "
            f"format={settings.format}, delivery={settings.delivery}, "
            f"output={mask_secrets(settings.output_name)}",
            file=out,
        )
    for note in notes:
        print(f"note: {mask_secrets(note)}", file=err if problems else out)
    return 1 if problems else 0


def _options_for_others(settings: LoggingSettings, enrichers: Sequence[Enricher]) -> list[str]:
    """A note for each ``enricher_options`` entry that names no enricher of
    the URIs: ``configure_logging`` refuses it unless an enricher defined in
    code has that name, which ``check`` cannot see (so: a note, not an
    error; a mistyped name used to pass unremarked)."""
    names = sorted(enricher.name for enricher in enrichers)
    return [
        f"enricher_options names {name!r}, which no enricher of ENRICHLOG_ENRICHERS is "
        f"called{did_you_mean(name, names)}; configure_logging refuses it unless an "
        "enricher defined in code has that name"
        for name in settings.enricher_options
        if name not in names
    ]


def _output_problem(target: str) -> tuple[str | None, str | None]:
    """Why configure_logging could not open the output file ``target``
    (or ``None``), and a note about it (or ``None``).

    An existing FIFO, socket or device (``/dev/stdout``, ``/proc/self/fd/1``
    when they are a pipe, a named pipe) is opened as ``open(target, "ab")``
    opens it, but without waiting: opening a FIFO without a reader would
    block until one comes (as configure_logging does), so ``check`` only
    notes it. Any other path is probed by
    :func:`~enrichlog.engine.output.appending_problem`, which would create
    and remove it (no file to make of ``/proc/self/fd/1`` when it is a pipe).
    """
    path = os.path.expanduser(target)
    try:
        mode = os.stat(path).st_mode  # through symbolic links, as open() goes
    except OSError:
        mode = 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        return appending_problem(target), None
    if stat.S_ISFIFO(mode) and not os.path.realpath(path).startswith(("/proc/", "/dev/fd/")):
        # A named pipe is not opened: closing the only writer would end the
        # read of a collector already waiting on it.
        if not os.access(path, os.W_OK):
            return f"output {target!r} cannot be opened for appending: permission denied", None
        return None, (
            f"output {target!r} is a named pipe: not opened by check (configure_logging "
            "waits for a reader when it opens it)"
        )
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO and stat.S_ISFIFO(mode):
            return None, (
                f"output {target!r} is a named pipe with no reader yet: configure_logging "
                "waits for one when it opens it"
            )
        return f"output {target!r} cannot be opened for appending: {exc.strerror or exc}", None
    os.close(descriptor)
    return None, None
