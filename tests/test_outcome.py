"""Tests for :mod:`enrichlog.resilience.outcome`: what an enricher did to its
copy of an event, and the copy it gets."""

from __future__ import annotations

from collections import OrderedDict

from enrichlog.resilience.outcome import changes_of, isolated_copy, written_copy


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


def test_a_flat_written_copy_counts_a_value_set_to_what_it_was_as_a_change() -> None:
    before = {"event": "e", "tier": "gold", "seats": 5}
    after = written_copy(before)
    after["tier"] = "gold"
    after.update(seats=5)

    assert ({"tier": "gold", "seats": 5}, ()) == changes_of(before, after)


def test_a_flat_written_copy_keeps_the_events_order_of_the_fields_it_set() -> None:
    # Its changes are read from the keys it recorded (a set): the line still
    # shows them in the order the event has them, whatever the hash seed.
    before = {"event": "e"}
    after = written_copy(before)
    names = [f"field_{i}" for i in range(12)]
    for name in names:
        after[name] = 1

    assert names == list(changes_of(before, after)[0])


def test_a_flat_written_copy_records_removals_even_of_keys_it_lacks() -> None:
    before = {"event": "e", "token": "t", "kept": 1}
    after = written_copy(before)
    del after["token"]
    after.pop("password", None)
    after["set_then_removed"] = 1
    del after["set_then_removed"]
    after.pop("kept")
    after["kept"] = 2

    updated, removed = changes_of(before, after)

    assert {"kept": 2} == updated
    assert {"token", "password", "set_then_removed"} == set(removed)


def test_a_flat_written_copy_never_reports_the_reserved_field() -> None:
    flat = {"event": "e", "enrichment_errors": "x"}
    after = written_copy(flat)
    after["enrichment_errors"] = "mine"
    after["user"] = "u"
    cleared = written_copy(flat)
    cleared.clear()

    assert ({"user": "u"}, ()) == changes_of(flat, after, "enrichment_errors")
    assert ({}, ("event",)) == changes_of(flat, cleared, "enrichment_errors")


def test_a_flat_written_copy_changed_through_dicts_own_methods_is_compared() -> None:
    # Found by the twelfth round's re-test: changes made with dict's own
    # methods (as C or Cython code typed as dict makes them) are not
    # recorded, and were lost.
    before = {"event": "e", "password": "pw", "tier": "free"}
    after = written_copy(before)
    dict.__setitem__(after, "tier", "gold")
    dict.pop(after, "password")
    dict.update(after, {"user": "ann"})

    updated, removed = changes_of(before, after)

    assert {"tier": "gold", "user": "ann"} == updated
    assert ("password",) == removed


def test_a_flat_written_copy_changed_both_ways_keeps_what_it_recorded() -> None:
    # Found by the twelfth round's second re-test: once a change made with
    # dict's own methods sent the copy to the comparison, the removal it had
    # recorded (of a key this event lacks) was forgotten.
    before = {"event": "e"}
    after = written_copy(before)
    dict.__setitem__(after, "tier", "gold")
    after.pop("password", None)

    assert ({"tier": "gold"}, ("password",)) == changes_of(before, after)
