"""The built-in enricher schemes: ``hostname``, ``process``, ``static``, ``env``.

Each is a :class:`~enrichlog.enricher.SyncEnricher`: its fields cost a
dictionary write, so it runs inline on the thread that runs the chain, with
no hop to the runtime loop. None of them overwrites a key the event already
has: a value given at the call site wins.

They follow the ``Params`` convention of :mod:`enrichlog.factory`: the
validated URI parameters arrive as the keyword argument ``params``, and
every class also works in code (``HostnameEnricher()``,
``StaticEnricher(params=StaticEnricher.Params(service="checkout"))``).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from structlog.typing import EventDict, WrappedLogger

from ..enricher import SyncEnricher
from ..uri.params import CommaSeparated

__all__ = ["EnvEnricher", "HostnameEnricher", "ProcessEnricher", "StaticEnricher"]

FieldName = Annotated[str, Field(min_length=1)]


class HostnameEnricher(SyncEnricher):
    """Adds the machine's host name: ``hostname://`` (``?field=host`` renames
    the key).

    The name is read once, when the enricher is built.
    """

    scheme = "hostname"

    class Params(BaseModel):
        """Parameters of ``hostname://``."""

        model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

        field: FieldName = "hostname"

    def __init__(
        self,
        *,
        params: HostnameEnricher.Params | None = None,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
    ) -> None:
        self.params = params or self.Params()
        self._hostname = socket.gethostname()
        super().__init__(
            name=name,
            dependencies=dependencies,
            priority=priority,
            provides=(self.params.field,),
        )

    def enrich(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Add the host name under ``params.field``."""
        event_dict.setdefault(self.params.field, self._hostname)
        return event_dict


class ProcessEnricher(SyncEnricher):
    """Adds ``pid``, ``process_name`` and ``thread``: ``process://``.

    ``pid`` is read per event, so a forked child reports its own.
    ``process_name`` is multiprocessing's name of the process, read again
    whenever the pid changes (a multiprocessing child names itself after the
    fork). ``thread`` is the name of the thread that ran this enricher: the
    logging thread when sync enrichers run inline, which is the usual case.
    """

    scheme = "process"
    provides = ("pid", "process_name", "thread")

    def __init__(
        self,
        *,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
    ) -> None:
        super().__init__(name=name, dependencies=dependencies, priority=priority)
        self._pid = -1
        self._process_name = ""

    def _current_process_name(self, pid: int) -> str:
        if pid != self._pid:
            # Imported here: most configurations never build this enricher.
            import multiprocessing  # noqa: PLC0415

            self._process_name = multiprocessing.current_process().name
            self._pid = pid
        return self._process_name

    def enrich(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Add the pid, the process name and the current thread's name."""
        pid = os.getpid()
        event_dict.setdefault("pid", pid)
        event_dict.setdefault("process_name", self._current_process_name(pid))
        event_dict.setdefault("thread", threading.current_thread().name)
        return event_dict


class StaticEnricher(SyncEnricher):
    """Adds constant fields: ``static://?service=checkout&env=prod``.

    Every query key becomes a field with its value as a string, except the
    common keys every scheme accepts (``name``, ``dependencies``,
    ``priority``), which keep their meaning; ``timeout``, ``ttl`` and
    ``max_concurrency`` are refused, as for every sync enricher. So a static
    field cannot be called by any of those names. Two ``static://`` URIs in
    one configuration need distinct ``?name=``.
    """

    scheme = "static"

    class Params(BaseModel):
        """Parameters of ``static://``: any keys, each a field to add."""

        model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True)

        @model_validator(mode="after")
        def _at_least_one_field(self) -> StaticEnricher.Params:
            fields = self.model_extra or {}
            if not fields:
                raise ValueError(
                    "static:// adds the query's key=value pairs as fields; "
                    "give at least one, e.g. static://?service=checkout"
                )
            if "" in fields:
                raise ValueError("a static field needs a name: '=value' has none")
            return self

    def __init__(
        self,
        *,
        params: StaticEnricher.Params,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
    ) -> None:
        self.params = params
        self.fields: dict[str, Any] = dict(params.model_extra or {})
        super().__init__(
            name=name,
            dependencies=dependencies,
            priority=priority,
            provides=tuple(self.fields),
        )

    def enrich(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Add each constant field the event does not already have."""
        for key, value in self.fields.items():
            event_dict.setdefault(key, value)
        return event_dict


class EnvEnricher(SyncEnricher):
    """Adds environment variables: ``env://?fields=GIT_SHA,REGION``.

    The variables are read once, when the enricher is built; missing ones
    are left out of the event. Keys are the variable names as given, or
    lower case with ``?lower=true``.
    """

    scheme = "env"

    class Params(BaseModel):
        """Parameters of ``env://``."""

        model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

        fields: Annotated[CommaSeparated, Field(min_length=1)]
        lower: bool = False

    def __init__(
        self,
        *,
        params: EnvEnricher.Params,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
    ) -> None:
        self.params = params
        keys = {
            variable: variable.lower() if params.lower else variable for variable in params.fields
        }
        self.values = {
            key: os.environ[variable] for variable, key in keys.items() if variable in os.environ
        }
        super().__init__(
            name=name,
            dependencies=dependencies,
            priority=priority,
            provides=tuple(keys.values()),
        )

    def enrich(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Add each variable that was set, unless the event has the key."""
        for key, value in self.values.items():
            event_dict.setdefault(key, value)
        return event_dict
