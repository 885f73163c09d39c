"""Tests for :mod:`enrichlog.engine.registry`: enrichers of a container and their
execution levels."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from structlog.typing import EventDict, WrappedLogger

from enrichlog.engine.registry import EnricherRegistry
from enrichlog.enricher import AsyncEnricher, Enricher, register_enricher
from enrichlog.exceptions import EnricherConfigError, EnricherDependencyError


class Named(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def enricher(name: str, *dependencies: str, **kwargs: Any) -> Named:
    return Named(name=name, dependencies=dependencies, **kwargs)


# -- examples ----------------------------------------------------------------------


def test_enrichers_without_dependencies_share_level_zero() -> None:
    registry = EnricherRegistry([enricher("a"), enricher("b")])

    assert [["a", "b"]] == registry.resolve_dependencies()


def test_dependant_runs_one_level_after_its_latest_dependency() -> None:
    registry = EnricherRegistry(
        [
            enricher("d", "a", "c"),
            enricher("c", "b"),
            enricher("b", "a"),
            enricher("a"),
        ]
    )

    assert [["a"], ["b"], ["c"], ["d"]] == registry.resolve_dependencies()


def test_diamond_resolves_into_three_levels() -> None:
    registry = EnricherRegistry(
        [
            enricher("top"),
            enricher("left", "top"),
            enricher("right", "top"),
            enricher("bottom", "left", "right"),
        ]
    )

    assert [["top"], ["left", "right"], ["bottom"]] == registry.resolve_dependencies()


def test_level_is_ordered_by_priority_then_registration() -> None:
    registry = EnricherRegistry(
        [
            enricher("c", priority=100),
            enricher("a", priority=100),
            enricher("z", priority=1),
        ]
    )

    assert [["z", "c", "a"]] == registry.resolve_dependencies()


def test_empty_registry_has_no_levels() -> None:
    assert [] == EnricherRegistry().resolve_dependencies()


def test_register_accepts_processor_functions() -> None:
    def add_host(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict

    registry = EnricherRegistry()

    registered = registry.register(add_host)

    assert ("add_host", True, registered) == (
        registered.name,
        "add_host" in registry,
        registry.get("add_host"),
    )


def test_register_rejects_a_duplicate_name_naming_it() -> None:
    registry = EnricherRegistry([enricher("user")])

    with pytest.raises(EnricherConfigError, match="'user'"):
        registry.register(enricher("user"))


def test_register_rejects_the_same_instance_twice() -> None:
    user = enricher("user")
    registry = EnricherRegistry([user])

    with pytest.raises(EnricherConfigError, match="'user'"):
        registry.register(user)


def test_register_rejects_what_is_not_an_enricher() -> None:
    with pytest.raises(EnricherConfigError, match="'nope'"):
        EnricherRegistry().register("nope")


def test_failed_register_leaves_the_registry_unchanged() -> None:
    registry = EnricherRegistry([enricher("user")])

    with pytest.raises(EnricherConfigError):
        registry.register(enricher("user"))

    assert [["user"]] == registry.resolve_dependencies()


def test_unregister_removes_the_enricher_from_the_plan() -> None:
    registry = EnricherRegistry([enricher("a"), enricher("b")])

    removed = registry.unregister("a")

    assert ("a", [["b"]]) == (removed.name, registry.resolve_dependencies())


def test_unregister_unknown_name_raises_naming_it() -> None:
    with pytest.raises(EnricherConfigError, match="'ghost'"):
        EnricherRegistry().unregister("ghost")


def test_missing_dependency_names_both_enrichers() -> None:
    registry = EnricherRegistry([enricher("user", "tenant")])

    with pytest.raises(EnricherConfigError, match="'user' depends on 'tenant'"):
        registry.resolve_dependencies()


def test_unregistering_a_dependency_makes_the_dependant_unresolvable() -> None:
    registry = EnricherRegistry([enricher("tenant"), enricher("user", "tenant")])
    registry.resolve_dependencies()
    registry.unregister("tenant")

    with pytest.raises(EnricherConfigError, match=r"'user'.*'tenant'"):
        registry.resolve_dependencies()


def test_two_node_cycle_is_named() -> None:
    registry = EnricherRegistry([enricher("a", "b"), enricher("b", "a")])

    with pytest.raises(EnricherDependencyError, match="a -> b -> a"):
        registry.resolve_dependencies()


def test_longer_cycle_is_named_in_dependency_order() -> None:
    registry = EnricherRegistry(
        [enricher("root"), enricher("x", "z", "root"), enricher("y", "x"), enricher("z", "y")]
    )

    with pytest.raises(EnricherDependencyError, match="x -> z -> y -> x"):
        registry.resolve_dependencies()


def test_self_dependency_is_rejected_naming_the_enricher() -> None:
    with pytest.raises(EnricherConfigError, match=r"'loop'.*itself"):
        enricher("loop", "loop")


def test_same_level_enrichers_providing_one_key_are_rejected() -> None:
    registry = EnricherRegistry([enricher("a", provides="user"), enricher("b", provides="user")])

    with pytest.raises(EnricherConfigError, match=r"'a' and 'b'.*'user'"):
        registry.resolve_dependencies()


def test_enrichers_providing_one_key_in_different_levels_are_allowed() -> None:
    registry = EnricherRegistry(
        [enricher("a", provides="user"), enricher("b", "a", provides="user")]
    )

    assert [["a"], ["b"]] == registry.resolve_dependencies()


def test_plan_is_cached_until_the_enrichers_change() -> None:
    registry = EnricherRegistry([enricher("a")])
    first = registry.levels()

    again = registry.levels()
    registry.register(enricher("b"))
    after_register = registry.levels()
    registry.unregister("b")
    after_unregister = registry.levels()

    assert (True, False, False, [["a"]]) == (
        again is first,
        after_register is first,
        after_unregister is after_register,
        registry.resolve_dependencies(),
    )


def test_plan_is_computed_once_for_many_lookups() -> None:
    registry = EnricherRegistry([enricher("a"), enricher("b", "a")])
    first = registry.levels()

    lookups = {id(registry.levels()) for _ in range(100)}

    assert {id(first)} == lookups


def test_registry_iterates_in_registration_order() -> None:
    registry = EnricherRegistry([enricher("b"), register_enricher(enricher("a"))])

    assert (["b", "a"], 2) == ([e.name for e in registry], len(registry))


# -- properties of random graphs --------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Enricher], dict[str, set[str]]]:
    """Random acyclic graphs: node ``j`` may depend only on nodes ``i < j``.

    Registered in a random order, with random priorities.
    """
    size = draw(st.integers(min_value=1, max_value=9))
    names = [f"e{i}" for i in range(size)]
    deps: dict[str, set[str]] = {}
    for j in range(size):
        chosen = draw(st.lists(st.booleans(), min_size=j, max_size=j))
        deps[names[j]] = {names[i] for i, take in enumerate(chosen) if take}
    order = draw(st.permutations(names))
    priorities = draw(st.lists(st.integers(min_value=0, max_value=3), min_size=size, max_size=size))
    enrichers: list[Enricher] = [
        enricher(name, *sorted(deps[name]), priority=priority)
        for name, priority in zip(order, priorities, strict=True)
    ]
    return enrichers, deps


def longest_path_to(name: str, deps: dict[str, set[str]]) -> int:
    return 1 + max((longest_path_to(d, deps) for d in deps[name]), default=-1)


@given(dags())
def test_every_dependency_lies_in_an_earlier_level(
    graph: tuple[list[Enricher], dict[str, set[str]]],
) -> None:
    enrichers, deps = graph

    levels = EnricherRegistry(enrichers).resolve_dependencies()
    level_of = {name: index for index, level in enumerate(levels) for name in level}

    assert [] == [
        (name, dep)
        for name, names in deps.items()
        for dep in names
        if level_of[dep] >= level_of[name]
    ]


@given(dags())
def test_levels_are_as_few_as_the_longest_path_allows(
    graph: tuple[list[Enricher], dict[str, set[str]]],
) -> None:
    enrichers, deps = graph

    levels = EnricherRegistry(enrichers).resolve_dependencies()

    assert max(longest_path_to(name, deps) for name in deps) + 1 == len(levels)


@given(dags())
def test_each_enricher_runs_in_the_earliest_level_its_dependencies_allow(
    graph: tuple[list[Enricher], dict[str, set[str]]],
) -> None:
    enrichers, deps = graph

    levels = EnricherRegistry(enrichers).resolve_dependencies()

    assert {name: longest_path_to(name, deps) for name in deps} == {
        name: index for index, level in enumerate(levels) for name in level
    }


@given(dags())
def test_each_level_is_sorted_by_priority_then_registration(
    graph: tuple[list[Enricher], dict[str, set[str]]],
) -> None:
    enrichers, _ = graph
    position = {e.name: i for i, e in enumerate(enrichers)}
    priority = {e.name: e.priority for e in enrichers}

    levels = EnricherRegistry(enrichers).resolve_dependencies()

    assert [sorted(level, key=lambda n: (priority[n], position[n])) for level in levels] == levels


@given(dags())
def test_plan_holds_every_enricher_exactly_once(
    graph: tuple[list[Enricher], dict[str, set[str]]],
) -> None:
    enrichers, _ = graph

    levels = EnricherRegistry(enrichers).resolve_dependencies()

    assert sorted(e.name for e in enrichers) == sorted(n for lv in levels for n in lv)


@given(dags(), st.data())
def test_a_back_edge_raises_naming_a_real_cycle(
    graph: tuple[list[Enricher], dict[str, set[str]]], data: st.DataObject
) -> None:
    _, deps = graph
    dependants = sorted(name for name in deps if deps[name])
    assume(dependants)
    node = data.draw(st.sampled_from(dependants))
    ancestor = data.draw(st.sampled_from(sorted(ancestors_of(node, deps))))
    # ``node`` depends, maybe transitively, on ``ancestor``; make
    # ``ancestor`` depend on ``node`` as well.
    cyclic = {name: set(names) for name, names in deps.items()}
    cyclic[ancestor].add(node)
    registry = EnricherRegistry([enricher(name, *sorted(names)) for name, names in cyclic.items()])

    with pytest.raises(EnricherDependencyError) as raised:
        registry.resolve_dependencies()
    named = re.search(r"\w+(?: -> \w+)+", str(raised.value))
    cycle = named.group(0).split(" -> ") if named else []

    assert (True, True) == (
        len(cycle) > 2 and cycle[0] == cycle[-1],
        all(b in cyclic[a] for a, b in itertools.pairwise(cycle)),
    )


def ancestors_of(name: str, deps: dict[str, set[str]]) -> set[str]:
    """Every node ``name`` depends on, directly or not."""
    found: set[str] = set()
    stack = list(deps[name])
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(deps[current])
    return found
