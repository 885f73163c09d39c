"""Enrichers named by URI.

* :mod:`~enrichlog.uri.schemes`: which class a scheme names (registered
  classes, built-ins, entry-point plugins);
* :mod:`~enrichlog.uri.params`: the ``Params`` convention and the common
  query keys;
* :mod:`~enrichlog.uri.factory`: :class:`EnricherFactory`, which builds
  enrichers from URIs and writes their URIs back;
* :mod:`~enrichlog.uri.masking`: the one masking of secrets that every
  message, plan and report goes through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .masking import mask_secrets, mask_uri
from .params import CommaSeparated, CommonParams, NoParams
from .schemes import ENTRY_POINT_GROUP

if TYPE_CHECKING:
    from .factory import EnricherFactory, EnricherSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "CommaSeparated",
    "CommonParams",
    "EnricherFactory",
    "EnricherSpec",
    "NoParams",
    "mask_secrets",
    "mask_uri",
]

# enrichlog.enricher imports this package (for .schemes and .params), and the
# factory builds enrichers, so it imports enrichlog.enricher: importing the
# factory here would run it before the enricher classes exist. Its names are
# loaded on first use instead.
_FROM_FACTORY = frozenset({"EnricherFactory", "EnricherSpec"})


def __getattr__(name: str) -> Any:
    if name in _FROM_FACTORY:
        from . import factory  # noqa: PLC0415 - see _FROM_FACTORY

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
