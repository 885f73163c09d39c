"""Tests for :mod:`enrichlog.uri.factory` and the scheme registry: enrichers
built from URIs, and URIs written back."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator
from structlog.typing import EventDict, WrappedLogger

from enrichlog.enricher import AsyncEnricher, Enricher, SyncEnricher
from enrichlog.enrichers import (
    EnvEnricher,
    HostnameEnricher,
    ProcessEnricher,
    StaticEnricher,
)
from enrichlog.exceptions import EnricherConfigError
from enrichlog.uri import EnricherFactory, EnricherSpec, mask_uri, schemes

PLUGIN_DIST = Path(__file__).parent / "fixtures" / "plugin_dist"
SECRET = "hunter2-Sesame"


class LookupEnricher(AsyncEnricher):
    """A URI enricher with every kind of parameter."""

    scheme = "test-lookup"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        host: str | None = None
        port: int | None = None
        user: str | None = None
        password: SecretStr | None = None
        path: str | None = None
        retries: int = 3
        verify: bool = True
        tags: list[str] = []
        api_key: SecretStr | None = None

    def __init__(self, *, params: LookupEnricher.Params, **options: Any) -> None:
        self.params = params
        self.keywords = options  # what the factory passed (AsyncEnricher.options is the model)
        super().__init__(**options)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


class TalkativeEnricher(AsyncEnricher):
    """Its validator quotes the password it refuses, as careless code does."""

    scheme = "test-talkative"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        password: SecretStr

        @field_validator("password", mode="before")
        @classmethod
        def _long_enough(cls, value: Any) -> Any:
            if len(str(value)) < 20:
                raise ValueError(f"password {value!r} is shorter than 20")
            return value

    def __init__(self, *, params: TalkativeEnricher.Params, **options: Any) -> None:
        super().__init__(**options)


def spec(enricher: Enricher) -> EnricherSpec:
    found = EnricherFactory.spec_of(enricher)
    assert found is not None
    return found


# -- building ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "cls"),
    [
        ("hostname://", HostnameEnricher),
        ("process://", ProcessEnricher),
        ("static://?service=checkout", StaticEnricher),
        ("env://?fields=HOME", EnvEnricher),
    ],
)
def test_builds_each_builtin_from_its_uri(uri: str, cls: type) -> None:
    enricher = EnricherFactory.build(uri)

    assert type(enricher) is cls
    assert enricher.source == "uri"


def test_builtin_schemes_are_known() -> None:
    known = EnricherFactory.known_schemes()

    assert {"env", "hostname", "process", "static"} <= set(known)


def test_common_keys_reach_the_constructor_typed() -> None:
    uri = (
        "test-lookup://?name=users&timeout=0.5&dependencies=tenant,%20region"
        "&priority=7&ttl=60&max_concurrency=4"
    )

    enricher = EnricherFactory.build(uri)

    assert isinstance(enricher, LookupEnricher)
    assert enricher.keywords == {
        "name": "users",
        "timeout": 0.5,
        "dependencies": ("tenant", "region"),
        "priority": 7,
        "cache_ttl": 60.0,
        "max_concurrency": 4,
    }
    assert (enricher.timeout, enricher.cache_ttl) == (0.5, 60.0)


def test_common_keys_not_given_are_not_passed() -> None:
    enricher = EnricherFactory.build("test-lookup://db")

    assert isinstance(enricher, LookupEnricher)
    assert enricher.keywords == {}


def test_uri_parts_and_query_keys_fill_params() -> None:
    uri = "test-lookup://me:pw@db.internal:5432/users/%7Bid%7D?retries=5&tags=a&tags=b"

    enricher = EnricherFactory.build(uri)

    assert isinstance(enricher, LookupEnricher)
    assert (
        LookupEnricher.Params(
            host="db.internal",
            port=5432,
            user="me",
            password=SecretStr("pw"),
            path="/users/{id}",
            retries=5,
            tags=["a", "b"],
        )
        == enricher.params
    )


def test_underscore_is_an_alias_of_dash_in_schemes() -> None:
    enricher = EnricherFactory.build("TEST_lookup://db")

    assert isinstance(enricher, LookupEnricher)
    assert spec(enricher).scheme == "test-lookup"


def test_class_declaring_a_scheme_is_buildable() -> None:
    class GreetingEnricher(SyncEnricher):
        scheme = "test_greeting"

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["greeting"] = "hi"
            return event_dict

    try:
        enricher = EnricherFactory.build("test-greeting://?priority=3")

        assert isinstance(enricher, GreetingEnricher)
        assert enricher.priority == 3
    finally:
        EnricherFactory.unregister("test-greeting")


def test_register_refuses_an_invalid_scheme_name() -> None:
    with pytest.raises(EnricherConfigError, match="'bad scheme' is not valid"):
        EnricherFactory.register("bad scheme", LookupEnricher)


def test_register_refuses_a_scheme_taken_by_another_class() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.register("hostname", LookupEnricher)

    assert "HostnameEnricher" in str(caught.value)
    assert "test_factory.LookupEnricher" in str(caught.value)


def test_register_accepts_a_redefinition_of_the_same_class() -> None:
    first = type("Redefined", (SyncEnricher,), {"__module__": __name__})
    second = type("Redefined", (SyncEnricher,), {"__module__": __name__})
    try:
        EnricherFactory.register("test-redefined", first)
        EnricherFactory.register("test-redefined", second)

        assert second is EnricherFactory.lookup("test-redefined")[0]
    finally:
        EnricherFactory.unregister("test-redefined")


def test_register_refuses_params_named_like_a_common_key() -> None:
    class Params(BaseModel):
        timeout: float = 1.0

    cls = type("Clashing", (AsyncEnricher,), {"Params": Params})

    with pytest.raises(EnricherConfigError, match="may not declare timeout"):
        EnricherFactory.register("test-clashing", cls)


def test_class_with_params_but_no_params_argument_is_a_clear_error() -> None:
    class Params(BaseModel):
        colour: str = "red"

    cls = type("Forgetful", (SyncEnricher,), {"Params": Params})
    EnricherFactory.register("test-forgetful", cls)
    try:
        with pytest.raises(EnricherConfigError, match="must accept params="):
            EnricherFactory.build("test-forgetful://")
    finally:
        EnricherFactory.unregister("test-forgetful")


# -- bad URIs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (
            "hostnme",
            "unknown scheme 'hostnme'; did you mean 'hostname'? Known schemes: env, hostname, ",
        ),
        ("zzzzzz", "unknown scheme 'zzzzzz'; known schemes: env, hostname, "),
    ],
    ids=["with-a-suggestion", "without"],
)
def test_unknown_scheme_message_reads_as_sentences(scheme: str, message: str) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build(f"{scheme}://")

    assert f"enricher URI '{scheme}://': {message}" in str(caught.value)


def test_constructor_failing_with_any_exception_is_a_config_error_naming_the_uri() -> None:
    class Fragile(SyncEnricher):
        class Params(BaseModel):
            token: str

        def __init__(self, *, params: BaseModel, **options: Any) -> None:
            raise RuntimeError(f"cannot reach {SECRET}")

    EnricherFactory.register("test-fragile", Fragile)
    try:
        with pytest.raises(EnricherConfigError) as caught:
            EnricherFactory.build(f"test-fragile://?token={SECRET}")
    finally:
        EnricherFactory.unregister("test-fragile")

    assert "could not be constructed: RuntimeError: cannot reach ***" in str(caught.value)
    assert SECRET not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("uri", "fragments"),
    [
        ("", ["enricher URI is empty"]),
        ("hostname", ["'hostname'", "missing '://'"]),
        ("host name://", ["scheme 'host name' is not valid"]),
        (
            "hostnme://",
            ["unknown scheme 'hostnme'", "did you mean 'hostname'?", "env, hostname"],
        ),
        (
            "hostname://?colour=red",
            [
                "unknown query key 'colour'",
                "accepted keys: field, name, dependencies, priority",
            ],
        ),
        (
            "test-lookup://db/?timout=1&retires=2",
            [
                "unknown query keys 'retires' (did you mean 'retries'?), 'timout' "
                "(did you mean 'timeout'?)"
            ],
        ),
        (
            # A mistyped key is named with its missing twin: the user used to
            # hear only that 'table' and 'columns' were missing.
            "postgres-lookup://127.0.0.1/test?tabel=users&colums=plan",
            [
                "unknown query keys 'colums' (did you mean 'columns'?), 'tabel' "
                "(did you mean 'table'?) for postgres-lookup://",
                "accepted keys: table, key, from, columns",
            ],
        ),
        ("hostname://?timeout=1", ["'timeout' applies to async enrichers only"]),
        ("static://?ttl=60&a=b", ["'ttl' applies to async enrichers only"]),
        ("hostname://somehost", ["the host part is not accepted"]),
        ("test-lookup://db:http/", ["the port is not a number from 0 to 65535", "db:***"]),
        ("test-lookup://db:70000/", ["the port is not a number", "db:***"]),
        ("test-lookup://[::1/", ["host"]),
        ("test-lookup://db/#top", ["fragment"]),
        ("test-lookup://db/?verify", ["'verify' is not key=value"]),
        ("test-lookup://db/?a=1&&b=2", ["not key=value"]),
        (
            "test-lookup://db/?timeout=soon",
            ["query key 'timeout'", "valid number"],
        ),
        ("test-lookup://db/?timeout=0", ["query key 'timeout'", "greater than 0"]),
        ("test-lookup://db/?timeout=inf", ["query key 'timeout'", "finite"]),
        ("test-lookup://db/?ttl=-5", ["query key 'ttl'", "greater than 0"]),
        ("test-lookup://db/?max_concurrency=0", ["'max_concurrency'", "greater than"]),
        ("test-lookup://db/?priority=high", ["query key 'priority'", "valid integer"]),
        (
            "test-lookup://db/?retries=1&retries=2",
            ["'retries' is given more than once"],
        ),
        ("test-lookup://db/?name=a&name=b", ["'name' is given more than once"]),
        ("test-lookup://db/?host=other", ["host belongs in the URI's host part"]),
        ("test-lookup:///?verify=maybe", ["query key 'verify'", "valid boolean"]),
        ("env://", ["query key 'fields': Field required"]),
        ("static://", ["give at least one"]),
        ("test-lookup://db/?name=db&dependencies=db", ["'db' depends on itself"]),
    ],
)
def test_bad_uri_is_reported_with_the_part_at_fault(uri: str, fragments: list[str]) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build(uri)

    message = str(caught.value)
    assert [f for f in fragments if f not in message] == [], message


@pytest.mark.parametrize(
    "uri",
    [
        f"test-lookup://me:{SECRET}@db:bad/",
        f"test-lookup://me:{SECRET}@db/?colour=red",
        f"test-lookup://me:{SECRET}@db/?timeout=-1",
        f"test-lookup://me:{SECRET}@db/?name=db&dependencies=db",
        f"test-lookup://db/?api_key={SECRET}&retries=many",
        f"test-lookop://me:{SECRET}@db/",
        f"test-talkative://:{SECRET}@",
        f"hostname://me:{SECRET}@db/",
        f"test-lookup://me:{SECRET}@db/?flag",
    ],
)
def test_secrets_never_appear_in_errors(uri: str) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build(uri)

    shown = "".join(traceback.format_exception(caught.value))
    assert SECRET not in shown
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    "query",
    [
        "table=users&columns=name&ssl=Sup3rS3cretPW",  # the Params model's own keys
        "table=users&columns=name&min_size=Sup3rS3cretPW",
        "table=users&columns=name&timeout=Sup3rS3cretPW",  # a common key
    ],
)
def test_a_rejected_value_is_never_echoed(query: str) -> None:
    # A secret pasted into the wrong key is refused without being shown, in
    # the detail and in the URI the message quotes.
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build(f"postgres-lookup://app:pw@db/app?{query}")

    assert "Sup3rS3cretPW" not in "".join(traceback.format_exception(caught.value))
    assert "=***" in str(caught.value)


@pytest.mark.parametrize("separator", ["/", "?", "#"])
def test_unescaped_password_is_masked_and_explained(separator: str) -> None:
    uri = f"test-lookup://me:Xyzzy{separator}Qwerty-Sesame@db/"

    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build(uri)

    message = str(caught.value)
    assert [part for part in ("Xyzzy", "Qwerty") if part in message] == []
    assert "percent-encode" in message


def test_secrets_never_appear_in_reprs() -> None:
    enricher = EnricherFactory.build(f"test-lookup://me:{SECRET}@db/?api_key={SECRET}")

    assert isinstance(enricher, LookupEnricher)
    shown = [
        repr(enricher),
        repr(enricher.params),
        repr(EnricherFactory.spec_of(enricher)),
    ]
    assert [s for s in shown if SECRET in s] == []


# -- masking and writing URIs ------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("redis://u:pw@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("redis://u@host", "redis://u@host"),
        ("x://h/?token=abc&a=1", "x://h/?token=***&a=1"),
        ("x://h/?client_secret=abc#f", "x://h/?client_secret=***#***"),
        ("no-scheme:u:pw@host", "no-scheme:***@host"),
    ],
)
def test_mask_uri_hides_passwords_and_secret_keys(uri: str, masked: str) -> None:
    assert masked == mask_uri(uri)


def test_to_uri_masks_the_password_unless_told_to_reveal_it() -> None:
    enricher = EnricherFactory.build(f"test-lookup://me:{SECRET}@db:5432?retries=2")

    masked = EnricherFactory.to_uri(enricher)
    revealed = EnricherFactory.to_uri(enricher, reveal_secrets=True)

    assert masked == "test-lookup://me:***@db:5432?retries=2"
    assert f"test-lookup://me:{quote(SECRET)}@db:5432?retries=2" == revealed


def test_to_uri_refuses_an_enricher_built_in_code() -> None:
    with pytest.raises(EnricherConfigError, match="not built from a URI"):
        EnricherFactory.to_uri(HostnameEnricher())


@pytest.mark.parametrize(
    "uri",
    [
        "static://?host=web1",
        "static://?password=s7&other=1",
        "static://?user=bob&port=80&path=/x",
    ],
)
def test_to_uri_keeps_query_keys_named_like_uri_parts_in_the_query(uri: str) -> None:
    """Found by an outside tester: a static:// field called host, port,
    user, password or path was written into the URI's authority or path,
    which static:// refuses."""
    enricher = EnricherFactory.build(uri)

    written = EnricherFactory.to_uri(enricher, reveal_secrets=True)
    again = EnricherFactory.build(written)

    assert (written.startswith("static://?"), again.fields) == (True, enricher.fields)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)
_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_seconds = st.floats(min_value=1e-3, max_value=86_400, allow_nan=False)  # timeouts: a day at most


@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "host": _hosts | st.just("::1"),
            "port": st.integers(0, 65535),
            "user": st.text(min_size=1),
            "password": st.text(),
            "path": st.text().map(lambda text: "/" + text),
            "retries": st.integers(),
            "verify": st.booleans(),
            "tags": st.lists(st.text(), max_size=3),
            "api_key": st.text(),
        },
    ),
    common=st.fixed_dictionaries(
        {},
        optional={
            "name": _names,
            "timeout": _seconds,
            "dependencies": st.lists(_names, max_size=3),
            "priority": st.integers(-1000, 1000),
            "ttl": _seconds,
            "max_concurrency": st.integers(1, 100),
        },
    ),
)
def test_any_valid_uri_survives_build_to_uri_build(
    params: dict[str, Any], common: dict[str, Any]
) -> None:
    assume(common.get("name", "lookup") not in common.get("dependencies", ()))
    uri = _write_lookup_uri(params, common)

    first = EnricherFactory.build(uri)
    again = EnricherFactory.build(EnricherFactory.to_uri(first, reveal_secrets=True))

    assert isinstance(first, LookupEnricher)
    assert isinstance(again, LookupEnricher)
    assert LookupEnricher.Params(**params) == first.params
    assert first.params == again.params
    assert first.keywords == again.keywords
    assert spec(first).common == spec(again).common


def _write_lookup_uri(params: dict[str, Any], common: dict[str, Any]) -> str:
    """An encoder independent of the factory's, for the round-trip test."""
    netloc = ""
    if "user" in params or "password" in params:
        netloc = quote(params.get("user", ""), safe="")
        if "password" in params:
            netloc += ":" + quote(params["password"], safe="")
        netloc += "@"
    host = params.get("host")
    if host is not None:
        netloc += f"[{host}]" if ":" in host else host
    if "port" in params:
        netloc += f":{params['port']}"
    path = quote(params.get("path", ""), safe="/")
    query: list[tuple[str, str]] = []
    for key in ("retries", "verify", "api_key"):
        if key in params:
            value = params[key]
            query.append((key, str(value).lower() if key == "verify" else str(value)))
    query += [("tags", tag) for tag in params.get("tags", [])]
    for key, value in common.items():
        text = ",".join(value) if key == "dependencies" else repr(value)
        query.append((key, text.strip("'")))
    return f"test-lookup://{netloc}{path}?{urlencode(query)}"


# -- plugins -----------------------------------------------------------------


@pytest.fixture
def plugin_dist(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Puts the fake distribution ``enrichlog-test-plugin`` on sys.path."""
    monkeypatch.syspath_prepend(str(PLUGIN_DIST))
    importlib.invalidate_caches()
    yield
    for scheme in ("plugin-demo", "plugin-broken", "plugin-not-enricher"):
        EnricherFactory.unregister(scheme)
    sys.modules.pop("enrichlog_test_plugin", None)


@pytest.mark.usefixtures("plugin_dist")
def test_entry_point_plugin_is_buildable_with_source_plugin() -> None:
    enricher = EnricherFactory.build("plugin-demo://?greeting=hey&timeout=2")

    assert type(enricher).__name__ == "DemoEnricher"
    assert enricher.source == "plugin"
    assert (enricher.params.greeting, enricher.timeout) == ("hey", 2.0)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("plugin_dist")
def test_installed_plugin_schemes_are_known_before_loading() -> None:
    known = EnricherFactory.known_schemes()

    assert {"plugin-demo", "plugin-broken"} <= set(known)
    assert "enrichlog_test_plugin" not in sys.modules


@pytest.mark.usefixtures("plugin_dist")
def test_broken_plugin_error_names_its_distribution() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build("plugin-broken://")

    message = str(caught.value)
    assert "'plugin_broken'" in message
    assert "distribution 'enrichlog-test-plugin'" in message
    assert "ModuleNotFoundError" in message


@pytest.mark.usefixtures("plugin_dist")
def test_plugin_that_is_not_an_enricher_class_is_an_error() -> None:
    with pytest.raises(EnricherConfigError, match="not a subclass of AsyncEnricher"):
        EnricherFactory.build("plugin-not-enricher://")


def test_plugin_schemes_are_unknown_without_the_distribution() -> None:
    with pytest.raises(EnricherConfigError, match="unknown scheme 'plugin-demo'"):
        EnricherFactory.build("plugin-demo://")


def test_builtin_scheme_whose_module_cannot_be_imported_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = {**schemes.BUILTIN_SCHEMES, "test-missing": "enrichlog_no_such_module:LookupEnricher"}
    monkeypatch.setattr(schemes, "BUILTIN_SCHEMES", table)

    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build("test-missing://")

    assert "built-in enricher scheme 'test-missing'" in str(caught.value)
    assert "ModuleNotFoundError" in str(caught.value)
    assert "test-missing" in EnricherFactory.known_schemes()


def test_the_list_of_accepted_keys_is_shown_whole() -> None:
    # Found by an outside tester: the message was cut at 300 characters,
    # mid-list ("..., failure_… (373 characters)").
    with pytest.raises(EnricherConfigError) as raised:
        EnricherFactory.build("redis-lookup://h?key=a:{b}&colour=x")

    assert str(raised.value).endswith(", half_open_max_calls, batch_size, batch_window")


def test_a_long_unknown_key_is_still_shortened() -> None:
    with pytest.raises(EnricherConfigError) as raised:
        EnricherFactory.build("redis-lookup://h?key=a:{b}&" + "c" * 10_000 + "=x")

    assert len(str(raised.value)) < 1_500
    assert "characters)" in str(raised.value)
