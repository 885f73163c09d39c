"""Tests for :mod:`enrichlog.resilience.outcome`: what an enricher did to its
copy of an event, and the copy it gets."""

from __future__ import annotations

from collections import OrderedDict

from enrichlog.resilience.outcome import changes_of, isolated_copy


def test_changes_of_reports_added_replaced_and_removed_keys() -> None:
    before = {"kept": 1, "replaced": 2, "removed": 3}
    after = {"kept": 1, "replaced": 3, "added": 4}

    assert ({"replaced": 3, "added": 4}, ("removed",)) == changes_of(before, after)


def test_changes_of_unchanged_event_is_empty() -> None:
    event = {"a": 1, "b": "x"}

    assert ({}, ()) == changes_of(event, dict(event))


def test_changes_of_an_untouched_copied_container_is_no_change() -> None:
    before = {"ctx": {"a": [1, 2]}}

    assert ({}, ()) == changes_of(before, isolated_copy(before))


def test_changes_of_a_changed_nested_value_is_a_change_of_its_key() -> None:
    before = {"ctx": {"a": 1}}
    after = isolated_copy(before)
    after["ctx"]["b"] = 2

    assert ({"ctx": {"a": 1, "b": 2}}, ()) == changes_of(before, after)


def test_isolated_copy_never_shares_a_mutable_container() -> None:
    application_owned = {"roles": ["admin"], "tags": {"a"}, "meta": OrderedDict(x=1)}
    event = {"user": application_owned, "n": 1}

    copy = isolated_copy(event)
    copy["user"]["roles"].append("root")
    copy["user"]["tags"].add("b")
    copy["user"]["meta"]["y"] = 2

    assert {"roles": ["admin"], "tags": {"a"}, "meta": OrderedDict(x=1)} == application_owned
