"""Tests for :mod:`enrichlog.enrichers.builtin`: the built-in schemes."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

from enrichlog.enricher import SyncEnricher
from enrichlog.enrichers import ProcessEnricher
from enrichlog.uri.factory import EnricherFactory


def enrich(uri: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    enricher = EnricherFactory.build(uri)
    assert isinstance(enricher, SyncEnricher)
    result = enricher.enrich(None, "info", dict(event or {}))
    assert result is not None
    return dict(result)


def test_hostname_adds_the_host_name() -> None:
    event = enrich("hostname://")

    assert {"hostname": socket.gethostname()} == event


def test_hostname_field_renames_the_key() -> None:
    enricher = EnricherFactory.build("hostname://?field=host")

    event = enrich("hostname://?field=host")

    assert {"host": socket.gethostname()} == event
    assert enricher.provides == ("host",)


def test_process_adds_pid_process_name_and_thread() -> None:
    event = enrich("process://")

    assert {
        "pid": os.getpid(),
        "process_name": "MainProcess",
        "thread": "MainThread",
    } == event


def test_process_thread_is_the_thread_that_ran_it() -> None:
    enricher = ProcessEnricher()
    seen: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: seen.update(enricher.enrich(None, "info", {}) or {}),
        name="worker-7",
    )

    worker.start()
    worker.join()

    assert seen["thread"] == "worker-7"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_process_reports_the_child_pid_after_fork() -> None:
    enricher = ProcessEnricher()
    enricher.enrich(None, "info", {})  # caches the parent's process name
    read_end, write_end = os.pipe()

    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        event = enricher.enrich(None, "info", {}) or {}
        os.write(write_end, str(event["pid"]).encode())
        os._exit(0)
    os.close(write_end)
    reported = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)

    assert str(pid) == reported


def test_static_adds_its_constant_fields() -> None:
    event = enrich("static://?service=checkout&env=prod&priority=5")

    assert event == {"service": "checkout", "env": "prod"}


def test_static_provides_its_field_names() -> None:
    enricher = EnricherFactory.build("static://?service=checkout&env=prod")

    assert enricher.provides == ("service", "env")


def test_env_adds_the_variables_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SHA", "abc123")
    monkeypatch.setenv("REGION", "eu-west-1")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)

    event = enrich("env://?fields=GIT_SHA,REGION,NOT_SET_HERE")

    assert event == {"GIT_SHA": "abc123", "REGION": "eu-west-1"}


def test_env_lower_lowercases_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SHA", "abc123")

    event = enrich("env://?fields=GIT_SHA&lower=true")

    assert event == {"git_sha": "abc123"}


def test_env_reads_the_variables_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SHA", "abc123")
    enricher = EnricherFactory.build("env://?fields=GIT_SHA")
    assert isinstance(enricher, SyncEnricher)
    monkeypatch.setenv("GIT_SHA", "changed")

    event = enricher.enrich(None, "info", {})

    assert event == {"GIT_SHA": "abc123"}


def test_env_provides_every_requested_key() -> None:
    enricher = EnricherFactory.build("env://?fields=A,B&lower=true")

    assert enricher.provides == ("a", "b")


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("hostname://", "hostname"),
        ("process://", "pid"),
        ("static://?service=checkout", "service"),
    ],
)
def test_builtins_keep_a_value_the_event_already_has(uri: str, key: str) -> None:
    event = enrich(uri, {key: "from the call site"})

    assert event[key] == "from the call site"


@pytest.mark.parametrize("uri", ["hostname://", "process://", "static://?a=b"])
def test_builtins_run_inline(uri: str) -> None:
    enricher = EnricherFactory.build(uri)

    assert isinstance(enricher, SyncEnricher)
    assert not enricher.blocking
