"""Tests for :mod:`enrichlog.uri.masking`, and the guarantee it backs: no secret
from the configuration appears in any repr, string, plan, ``check`` output or
error message enrichlog writes."""

from __future__ import annotations

import io
import json
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, SecretStr
from structlog.typing import EventDict, WrappedLogger

from enrichlog import configure_logging
from enrichlog.cli.check import check, show_plan
from enrichlog.cli.plan import describe_plan, render_plan
from enrichlog.enricher import AsyncEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.settings import LoggingSettings
from enrichlog.uri import EnricherFactory, mask_secrets, mask_uri
from enrichlog.uri.masking import is_secret_name, mask_mapping, scrub, secrets_in

SECRET = "s3cret-Hunter2"


class VaultEnricher(AsyncEnricher):
    """An async URI enricher with secret and plain parameters."""

    scheme = "test-mask-vault"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        host: str | None = None
        port: int | None = None
        user: str | None = None
        password: SecretStr | None = None
        path: str | None = None
        api_key: SecretStr | None = None
        token: str | None = None  # a plain str, but named like a secret
        upstream: str | None = None
        retries: int = 3

    def __init__(self, *, params: VaultEnricher.Params, **options: Any) -> None:
        self.params = params
        super().__init__(**options)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


# -- is_secret_name ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWORD",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "token",
        "auth",
        "Authorization",
        "api_key",
        "API-Key",
        "apiKey",
        "apikey",
        "access_key",
        "private_key",
        "privateKey",
        "passphrase",
        "credentials",
        "client_secret",
        "Client-Secret",
        "x-auth-token",
        "db_password",
        "db.password",
        "aws_secret_access_key",
        "signing_key",
        "token_2",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key", "monkey", "service", "passthrough", "bypass", "oauth", "tokens_count", "user"]
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


# -- mask_uri ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("redis://u:pw@host:6379/0", "redis://u:***@host:6379/0"),
        ("x://h/?auth=abc&passphrase=def&a=1", "x://h/?auth=***&passphrase=***&a=1"),
        ("x://h/?Authorization=abc", "x://h/?Authorization=***"),
        ("x://h/?api%5Fkey=abc", "x://h/?api%5Fkey=***"),
        (
            "static://?upstream=postgres://app:s3cret@db/x",
            "static://?upstream=postgres://app:***@db/x",
        ),
        (
            "static://?upstream=postgres%3A%2F%2Fapp%3As3cret%40db%2Fx&a=1",
            "static://?upstream=postgres://app:***@db/x&a=1",
        ),
        (
            "static://?upstream=postgres://db/x?password=s3cret",
            "static://?upstream=postgres://db/x?password=***",
        ),
        ("x://h/?key=visible&sort_key=hidden", "x://h/?key=visible&sort_key=***"),
        ("x://u:pa/ss@h/db", "x://u:***@h/db"),
        # Found by an outside tester: an unescaped '#' or '&' in a secret.
        (
            # (SEK alone reads as a port that is no number: masked, and the
            # rest after '#' with it, the host included: too much, not too little)
            "static://?upstream=postgres://app:SEK#RET@db/x",
            "static://?upstream=postgres://app:***#***",
        ),
        ("static://?api_key=SEK#RET", "static://?api_key=***#***"),
        ("static://?api_key=SEK&RET&a=1", "static://?api_key=***&a=1"),
        (  # nested, found by the re-test of the fix
            "static://?upstream=postgres://app:pa&ss@db/x",
            "static://?upstream=postgres://app:***@db/x",
        ),
        (
            "static://?upstream=http://h/x?password=pa&ss",
            "static://?upstream=http://h/x?password=***",
        ),
        (
            "static://?upstream=http://h/x?token=pa#ss",
            "static://?upstream=http://h/x?token=***#***",
        ),
        ("static://?service=a&b", "static://?service=a&b"),
        ("http://api:8443/v1?a=1#frag@x", "http://api:8443/v1?a=1#frag@x"),  # a port, no password
        (  # the nested URI with a query of its own: found by a second re-test
            "static://?upstream=postgres://app:pa&ss@db/x?sslmode=require",
            "static://?upstream=postgres://app:***@db/x?sslmode=require",
        ),
        ("static://?a=1#fragment", "static://?a=1#fragment"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert masked == mask_uri(uri)


def test_mask_uri_masks_the_keys_it_is_told_are_secret() -> None:
    assert "x://h/?pin=***&a=1" == mask_uri("x://h/?pin=1234&a=1", secret_keys={"pin"})


def test_mask_uri_leaves_a_uri_without_secrets_unchanged() -> None:
    uri = "env://?fields=GIT_SHA,REGION&lower=true"

    assert uri == mask_uri(uri)


# -- mask_secrets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("connect to redis://u:pw@h:1/0 failed", "connect to redis://u:***@h:1/0 failed"),
        (
            "enricher URI 'x://?authorization=s3cret': bad",
            "enricher URI 'x://?authorization=***': bad",
        ),
        ("password=abc, user=bob", "password=***, user=bob"),
        ("token: abc", "token: ***"),
        ('{"api_key": "a\\"b", "n": 1}', '{"api_key": "***", "n": 1}'),
        ("{'secret': 'x y', 'n': 1}", "{'secret': '***', 'n': 1}"),
        ('{"token": 12345}', '{"token": ***}'),
        ("Authorization: Bearer abc.def", "Authorization: ***"),
        ("sent Bearer abc.def", "sent Bearer ***"),
        ("see postgres%3A%2F%2Fapp%3As3cret%40db here", "see postgres://app:***@db here"),
        ("x://u:pa'ss@h/db", "x://u:***@h/db"),
        ("failed: {'token': b'SEKRET', 'n': 1}", "failed: {'token': b'***', 'n': 1}"),
        # A pair inside another pair's value: the outer key is not a secret,
        # the inner one is (a third-party message's shape).
        ("connect failed: password=hunter2 host=x", "connect failed: password=*** host=x"),
        ("error: password: hunter2", "error: password: ***"),
        ("a=b=c=password=zz", "a=b=c=password=***"),
        ("msg: 'password=x'", "msg: 'password=***'"),
        # Found by the eleventh round's re-test.
        ("mysql -u root --password=hunter2 db", "mysql -u root --password=*** db"),
        ("-password=hunter2", "-password=***"),
        ("PassWord=hunter2", "PassWord=***"),
        ("passWORD: hunter2", "passWORD: ***"),
        ("password='hunter2", "password='***'"),
        ('error: password="hunter2 (cut)', 'error: password="***" (cut)'),
        ('{"msg": "{\\"password\\": \\"hunter2\\"}"}', '{"msg": "{\\"password\\": \\"***\\"}"}'),
        ("Driver={x};PWD={hunter2;x};UID=sa", "Driver={x};PWD={***};UID=sa"),
        ("credentials={'user': 'a', 'pw': 'hunter2'}", "credentials={***}"),
        ("token=['hunter2']", "token=[***]"),
        ("[('password', 'hunter2')]", "[('password', '***')]"),
        ('{"password":\n  "hunter2"}', '{"password":\n  "***"}'),
        ("password\u00a0=hunter2", "password\u00a0=***"),
        ("mysql --password hunter2 db", "mysql --password *** db"),
        ("SESSIONTOKEN=abc", "SESSIONTOKEN=***"),
        ("password := hunter2", "password := ***"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----\n***\n-----END RSA PRIVATE KEY-----",
        ),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert masked == mask_secrets(text)


@pytest.mark.parametrize(
    "text",
    [
        "query key 'api_key': Input should be a valid string",
        "unknown query key 'token'; accepted keys: fields, name",
        "db.internal:5432 at 12:30",
        "static:// adds the query's key=value pairs as fields",
    ],
)
def test_mask_secrets_leaves_messages_about_keys_alone(text: str) -> None:
    assert text == mask_secrets(text)


def test_mask_mapping_masks_secret_keys_and_nested_strings() -> None:
    values = {
        "password": "pw",
        "uris": ["x://u:pw@h"],
        "nested": {"api-key": "k", "note": "token=abc"},
        "count": 3,
    }

    assert {
        "password": "***",
        "uris": ["x://u:***@h"],
        "nested": {"api-key": "***", "note": "token=***"},
        "count": 3,
    } == mask_mapping(values)


def test_secrets_in_finds_passwords_and_secret_values_in_every_form() -> None:
    found = secrets_in("x://?upstream=postgres%3A%2F%2Fapp%3Ahunter22%40db&token=tk-1&a=b")

    assert {"hunter22", "tk-1"} <= set(found)


def test_secrets_in_finds_a_pair_inside_another_pairs_value() -> None:
    assert ["hunter2"] == secrets_in("connect failed: password=hunter2 host=x")


def test_scrub_replaces_long_secrets_and_quoted_short_ones() -> None:
    text = "got 'ab' and s3cret-value and ab"

    assert "got '***' and *** and ab" == scrub(text, ["s3cret-value", "ab"])


# -- the adversary's findings ----------------------------------------------------------


def test_settings_repr_and_str_mask_enricher_uris() -> None:
    settings = LoggingSettings(enrichers=["userdb://app:s3cret@db/app"], _env_file=None)  # type: ignore[call-arg]

    shown = [repr(settings), str(settings), settings.model_dump_json()]

    assert [text for text in shown if "s3cret" in text] == []
    assert all("userdb://app:***@db/app" in text for text in shown)
    assert ["userdb://app:s3cret@db/app"] == settings.model_dump()["enrichers"]
    assert ["userdb://app:s3cret@db/app"] == settings.enrichers


def test_to_uri_masks_a_parameter_named_client_secret() -> None:
    enricher = EnricherFactory.build("static://?service=x&client_secret=s3cret")

    assert "static://?service=x&client_secret=***" == EnricherFactory.to_uri(enricher)


def test_plan_masks_nested_uris_and_secret_named_parameters() -> None:
    enricher = EnricherFactory.build(
        "static://?upstream=postgres://app:s3cret@db/x&auth=s3cret&passphrase=s3cret"
    )
    description = describe_plan([[enricher]], LoggingSettings(_env_file=None))  # type: ignore[call-arg]

    shown = [render_plan(description, fmt) for fmt in ("text", "json", "mermaid")]

    assert [text for text in shown if "s3cret" in text] == []
    assert "static://?upstream=postgres://app:***@db/x&auth=***&passphrase=***" in shown[0]


def test_unknown_scheme_error_masks_an_authorization_key() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        EnricherFactory.build("nosuch://?authorization=s3cret")

    assert "s3cret" not in str(caught.value)
    assert "'nosuch://?authorization=***'" in str(caught.value)


# -- the property: no secret anywhere ----------------------------------------------------

# Characters a secret may hold: the URI delimiters, quotes, '%', spaces,
# non-ASCII. Secrets start with 'Zq' so that nothing else in a generated URI
# (lower-case names and hosts) can contain one by chance.
_ODD = "@:/?#&=%+;,'\" \\*!$~é€😀"
_SECRETS = st.text(
    alphabet=st.sampled_from("abcdefghXYZ0123456789-_." + _ODD), min_size=4, max_size=14
).map(lambda tail: "Zq" + tail)
_RAW_PASSWORDS = st.text(
    alphabet=st.sampled_from("abcXYZ0123456789-_.@:!$*"), min_size=4, max_size=12
).map(lambda tail: "Zq" + tail)
_SECRET_KEYS = st.sampled_from(
    [
        "password",
        "Passwd",
        "pwd",
        "pass",
        "secret",
        "token",
        "auth",
        "Authorization",
        "api_key",
        "API-Key",
        "apikey",
        "access_key",
        "private_key",
        "passphrase",
        "credentials",
        "client_secret",
        "x-auth-token",
        "db_password",
        "signing_key",
        "clientSecret",
    ]
)
_SCHEMES = st.sampled_from(["test-mask-vault", "static", "hostname", "nosuch", "test_mask_vault"])
_EXTRAS = st.lists(
    st.sampled_from(
        ["retries=2", "retries=many", "colour=red", "timeout=soon", "ttl=0", "name=v", "lower=x"]
    ),
    max_size=2,
)


def _enc(text: str) -> str:
    return quote(text, safe="")


@st.composite
def _uris_with_a_secret(draw: st.DrawFn) -> tuple[str, str, bool]:
    """A URI, the secret it carries (in one of several places), and whether
    the URI is valid (else it is likely broken somewhere, to reach the
    errors)."""
    secret = draw(_SECRETS)
    valid = draw(st.booleans())
    if valid:
        scheme = draw(st.sampled_from(["test-mask-vault", "static"]))
        places = ["key", "nested", "nested-encoded", "deep"]
        if scheme != "static":
            places += ["password", "raw-password"]
        host = "" if scheme == "static" else draw(st.sampled_from(["db.internal", "[::1]"]))
        port = "" if scheme == "static" else draw(st.sampled_from(["", ":5432"]))
        path = "" if scheme == "static" else draw(st.sampled_from(["", "/v1"]))
        query = draw(st.lists(st.sampled_from(["retries=2", "name=v"]), max_size=2, unique=True))
    else:
        scheme = draw(_SCHEMES)
        places = ["password", "raw-password", "key", "nested", "nested-encoded", "deep"]
        host = draw(st.sampled_from(["db.internal", "h", "", "[::1]"]))
        port = draw(st.sampled_from(["", ":5432", ":99999", ":x"]))
        path = draw(st.sampled_from(["", "/", "/v1"]))
        query = list(draw(_EXTRAS))
    place = draw(st.sampled_from(places))
    authority = f"{host}{port}"
    if place == "password":
        authority = f"app:{_enc(secret)}@{authority}"
    elif place == "raw-password":
        secret = draw(_RAW_PASSWORDS)
        authority = f"app:{secret}@{authority}"
    elif place == "key":
        key = draw(_SECRET_KEYS if scheme == "static" or not valid else st.just("token"))
        query.append(f"{_enc(key)}={_enc(secret)}")
    else:
        nested = f"postgres://app:{_enc(secret)}@db/x"
        if place == "deep":
            nested = f"http://proxy/?next={_enc(nested)}"
        query.append(f"upstream={nested if place == 'nested' else _enc(nested)}")
    draw(st.randoms()).shuffle(query)
    uri = f"{scheme}://{authority}{path}" + ("?" + "&".join(query) if query else "")
    return uri, secret, valid


def _forms(secret: str) -> set[str]:
    """How a secret could show: as is, percent-encoded, escaped in a repr or
    in JSON."""
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        quote(secret),
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
    }


@pytest.fixture(scope="module")
def _in_empty_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``check`` and ``plan`` read ``.env``: run where there is none."""
    before = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("no-dotenv"))
    yield
    os.chdir(before)


def _outputs(uri: str) -> dict[str, str]:
    """Everything enrichlog writes about a configuration holding ``uri``."""
    shown: dict[str, str] = {}
    try:
        enricher = EnricherFactory.build(uri)
    except EnricherConfigError as exc:
        shown["error"] = "".join(traceback.format_exception(exc))
    else:
        shown["to_uri"] = EnricherFactory.to_uri(enricher)
        shown["spec"] = repr(EnricherFactory.spec_of(enricher))
        shown["repr"] = repr(enricher)
        description = describe_plan([[enricher]], LoggingSettings(_env_file=None))  # type: ignore[call-arg]
        for fmt in ("text", "json", "mermaid"):
            shown[f"plan {fmt}"] = render_plan(description, fmt)  # type: ignore[arg-type]
    settings_ = LoggingSettings(enrichers=[uri], _env_file=None)  # type: ignore[call-arg]
    shown |= {
        "settings repr": repr(settings_),
        "settings str": str(settings_),
        "settings json": settings_.model_dump_json(),
    }
    with mock.patch.dict(os.environ, {"ENRICHLOG_ENRICHERS": json.dumps([uri])}):
        out, err = io.StringIO(), io.StringIO()
        check(out, err)
        shown["check"] = out.getvalue() + err.getvalue()
        for fmt in ("text", "json", "mermaid"):
            out, err = io.StringIO(), io.StringIO()
            show_plan(fmt, out, err)  # type: ignore[arg-type]
            shown[f"cli plan {fmt}"] = out.getvalue() + err.getvalue()
    return shown


@pytest.mark.usefixtures("_in_empty_directory")
@settings(max_examples=150, deadline=None)
@given(_uris_with_a_secret())
def test_no_output_shows_a_secret_of_the_configuration(case: tuple[str, str, bool]) -> None:
    uri, secret, valid = case

    shown = _outputs(uri)

    assert not valid or "error" not in shown, shown.get("error")
    leaks = {
        where: text for where, text in shown.items() for form in _forms(secret) if form in text
    }
    assert {} == leaks


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: "x" * n,
        lambda n: "static://?a=" + "x" * n,
        lambda n: "a1" * (n // 2),
        lambda n: "a://" * (n // 4),
        lambda n: "@ " + "a://" * (n // 4),
        lambda n: "x%" * (n // 2),
        lambda n: "a=" * (n // 2),
        lambda n: "a: " * (n // 3),
        lambda n: "s://?u=s%3A%2F%2F%3Fu%3D" * (n // 24),
        lambda n: "password={" * (n // 10),
        lambda n: "_" * n + "key=x",
        lambda n: "-----BEGIN PRIVATE KEY-----" * (n // 27),
        lambda n: "--token " * (n // 8),
    ],
    ids=[
        "letters",
        "uri-value",
        "hex-like",
        "schemes",
        "schemes-after-at",
        "percents",
        "pairs-in-values",
        "colon-pairs",
        "nested-encoded-uris",
        "open-brackets",
        "underscores-before-a-name",
        "private-key-headers",
        "flags",
    ],
)
def test_masking_takes_time_in_proportion_to_the_text(shape: Any) -> None:
    # Found by an outside tester: masking a 20,000-character value took
    # seconds (quadratic), which stalled configure_logging, check and plan,
    # and the runtime loop reporting an enricher's long error. Eight times
    # the text must cost about eight times the time (quadratic: 64 times).
    def cost(text: str) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            mask_secrets(text)
            mask_uri(text)
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(shape(16_000)) < 24 * cost(shape(2_000))


@pytest.mark.parametrize(
    "uri",
    [
        "postgres-lookup://app:S3CR3T/app?table=users&key=id&columns=name",
        "redis-lookup://:S3CR3T",
        "redis-lookup://:98765",  # a number, but no port (found by the re-test)
        # A '#' in it (found by the second re-test): the rest showed as a fragment.
        "redis-lookup://:98765#S3CR3T",
        "postgres-lookup://app:1234#S3CR3T/app?table=users&key=id&columns=name",
    ],
)
def test_a_password_whose_host_was_forgotten_is_masked(uri: str) -> None:
    # Found by an outside tester: without '@host', 'user:password' reads as
    # a host and a port, and the "port" was shown in the error, the plan
    # and the settings' repr.
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(enrichers=[uri], output=io.StringIO())

    shown = [str(caught.value), repr(LoggingSettings(enrichers=[uri])), mask_secrets(uri)]
    assert "port is not a number" in shown[0] or "fragment" in shown[0]
    assert not [text for text in shown if "S3CR3T" in text or "98765" in text]
    assert "http://host:8080/x" == mask_uri("http://host:8080/x")


@pytest.mark.parametrize(
    "text",
    [
        "presign failed: sig=SECRETA signature=SECRETB X-Amz-Signature=SECRETD",
        'sig: SECRETA and {"signature": "SECRETB"}',
        "--sig=SECRETA /p?sig=SECRETB http://h/ok?a=1;sig=SECRETC",
        "https://SECRETA@github.com/org/repo",
        "git+https://SECRETA@github.com/x ftp://SECRETB@h/f",
        "http-lookup://SECRETC@api.example.com/users/{user_id}?into=u&ttl=-1",
    ],
)
def test_signatures_and_a_web_addresss_token_user_are_masked_in_messages(text: str) -> None:
    # Found by the twelfth round and its re-test: a signed URL's signature
    # and https://TOKEN@host showed in reports and `stats`.
    masked = mask_secrets(text)

    assert "SECRET" not in masked, masked


def test_words_that_only_hold_sig_are_not_masked() -> None:
    text = "design=blue signal=3 assign=4 postgres://app@db/test"

    assert text == mask_secrets(text)


@pytest.mark.parametrize(
    "uri",
    [
        "nats://SECRETA@127.0.0.1:14222?stream=orders",
        "tls://SECRETB@nats.example.com:4222",
        "nats://app:SECRETC@127.0.0.1:4222",
    ],
)
def test_a_nats_token_written_as_the_user_part_is_masked(uri: str) -> None:
    # Found by the thirteenth round: nats://TOKEN@host (NATS's token form)
    # showed in the settings' repr, the worker's "started" line and the
    # "unreachable" warnings.
    from enrichlog.transport.config import TransportConfig

    settings = LoggingSettings(transport=uri)
    shown = [
        mask_secrets(f"the broker at {uri} is unreachable"),
        repr(settings),
        str(settings),
        settings.model_dump_json(),
    ]
    if uri.startswith("nats"):
        shown.append(TransportConfig.parse(uri).masked)

    assert not [text for text in shown if "SECRET" in text], shown
    assert "nats://127.0.0.1:4222" == mask_secrets("nats://127.0.0.1:4222")


@pytest.mark.parametrize(
    "uri",
    [
        "nats://SECRETA@b1:4222,nats://SECRETB@b2:4222",
        "nats://app:SECRETA@b1:4222, nats://SECRETB@b2:4222/x?stream=s",
        "nats://b1:4222,tls://app:SECRETB@b2:4222",
    ],
)
def test_every_address_of_a_server_list_is_masked(uri: str) -> None:
    # Found by the thirteenth round's re-test: the configuration error about
    # nats://TOKEN@b1,nats://TOKEN@b2 masked the first address only.
    with pytest.raises(EnricherConfigError) as caught:
        LoggingSettings(transport=uri)

    shown = [str(caught.value), mask_secrets(uri), mask_uri(uri)]
    assert not [text for text in shown if "SECRET" in text], shown
    assert "nats://b1:4222,nats://b2:4222" == mask_uri("nats://b1:4222,nats://b2:4222")
