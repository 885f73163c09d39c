"""`EnricherRegistry`: the enrichers of one container and their levels.

Dependency resolution happens once, when the plan is first asked for, and
the result is cached until the set of enrichers changes. Nothing is resolved
per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..enricher import Enricher, as_enricher
from ..exceptions import EnricherConfigError, EnricherDependencyError

__all__ = ["EnricherRegistry"]


class EnricherRegistry:
    """The enrichers of one container, and the levels they run in.

    Each container owns one; there is no process-wide registry.
    """

    def __init__(self, enrichers: Iterable[object] = ()) -> None:
        self._enrichers: dict[str, Enricher] = {}
        self._levels: tuple[tuple[Enricher, ...], ...] | None = None
        for enricher in enrichers:
            self.register(enricher)

    def __len__(self) -> int:
        return len(self._enrichers)

    def __iter__(self) -> Iterator[Enricher]:
        return iter(self._enrichers.values())

    def __contains__(self, name: object) -> bool:
        return name in self._enrichers

    def get(self, name: str) -> Enricher:
        """The enricher named ``name``; ``KeyError`` if there is none."""
        return self._enrichers[name]

    def register(self, enricher: object) -> Enricher:
        """Add an enricher (or anything :func:`~enrichlog.enricher.as_enricher`
        accepts) and return it.

        Raises:
            EnricherDependencyError: another enricher already has its name.
            EnricherConfigError: ``enricher`` is not usable as one.
        """
        candidate = as_enricher(enricher)
        existing = self._enrichers.get(candidate.name)
        if existing is not None:
            if existing is candidate:
                raise EnricherDependencyError(f"enricher {candidate.name!r} was given twice")
            raise EnricherDependencyError(
                f"two enrichers are named {candidate.name!r}: {existing!r} and "
                f"{candidate!r}; give one of them another name"
            )
        self._enrichers[candidate.name] = candidate
        self._levels = None
        return candidate

    def unregister(self, name: str) -> Enricher:
        """Remove and return the enricher named ``name``."""
        try:
            enricher = self._enrichers.pop(name)
        except KeyError:
            raise EnricherConfigError(f"no enricher named {name!r} is registered") from None
        self._levels = None
        return enricher

    def resolve_dependencies(self) -> list[list[str]]:
        """The execution levels, as names.

        Level 0 holds the enrichers without dependencies; every other
        enricher sits one level after the latest of its dependencies, so the
        levels are as few as the graph allows. Within a level the order is
        ``priority`` (lower first), then registration order.

        Raises:
            EnricherDependencyError: a cycle (named ``a -> b -> a``) or a
                dependency on an enricher that is not registered.
            EnricherConfigError: two enrichers of one level declare that they
                provide the same event key.
        """
        return [[enricher.name for enricher in level] for level in self.levels()]

    def levels(self) -> tuple[tuple[Enricher, ...], ...]:
        """Like :meth:`resolve_dependencies`, with the enricher objects."""
        if self._levels is None:
            self._levels = self._compute_levels()
        return self._levels

    def _compute_levels(self) -> tuple[tuple[Enricher, ...], ...]:
        self._check_dependencies_exist()
        depth: dict[str, int] = {}
        for name in self._enrichers:
            self._depth_of(name, depth, [])
        order = {name: index for index, name in enumerate(self._enrichers)}
        grouped: list[list[Enricher]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name, level in depth.items():
            grouped[level].append(self._enrichers[name])
        for level_enrichers in grouped:
            level_enrichers.sort(key=lambda e: (e.priority, order[e.name]))
            _check_provides(level_enrichers)
        return tuple(tuple(level) for level in grouped)

    def _check_dependencies_exist(self) -> None:
        for enricher in self._enrichers.values():
            for dependency in enricher.dependencies:
                if dependency not in self._enrichers:
                    known = ", ".join(sorted(self._enrichers)) or "none"
                    raise EnricherDependencyError(
                        f"enricher {enricher.name!r} depends on {dependency!r}, "
                        f"which is not configured (configured: {known})"
                    )

    def _depth_of(self, name: str, depth: dict[str, int], path: list[str]) -> int:
        # Iterative deepening would be faster on huge graphs; enricher graphs
        # have a handful of nodes, and recursion keeps the cycle path at hand.
        if name in depth:
            return depth[name]
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise EnricherDependencyError(
                f"dependency cycle between enrichers: {' -> '.join(cycle)}"
            )
        path.append(name)
        dependencies = self._enrichers[name].dependencies
        level = 1 + max((self._depth_of(d, depth, path) for d in dependencies), default=-1)
        path.pop()
        depth[name] = level
        return level


def _check_provides(level: list[Enricher]) -> None:
    owner: dict[str, str] = {}
    for enricher in level:
        for key in enricher.provides:
            if key in owner:
                raise EnricherConfigError(
                    f"enrichers {owner[key]!r} and {enricher.name!r} both provide "
                    f"the key {key!r} and run in the same level, so which value "
                    "wins would be arbitrary; make one depend on the other"
                )
            owner[key] = enricher.name
