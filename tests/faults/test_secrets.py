"""Case 12: secrets never appear in what enrichlog says about its
configuration: the CLI (``plan`` in every format, ``check``), reprs, the
canonical URI, error messages, health, metrics and the shutdown report.

Every secret here is ``s3cret``. The unit suite has a property test of the
masking; these are the end-to-end checks, each in a subprocess.
"""

from __future__ import annotations

import json

import pytest

from tests.faults.runner import Run, run_module, run_script

SECRET = "s3cret"
PLAN_URIS = ",".join(
    [
        "static://?upstream=postgres://app:s3cret@db/x&auth=s3cret&passphrase=s3cret&name=st",
        "postgres-lookup://app:s3cret@db:5432/app?name=pg&table=users&columns=name&key=user_id",
        "redis-lookup://:s3cret@cache:6379/0?name=rd&key=user:{user_id}",
    ]
)


@pytest.mark.parametrize("fmt", ["text", "json", "mermaid"])
def test_plan_shows_every_enricher_with_its_secrets_masked(fmt: str) -> None:
    run = run_module("plan", "--format", fmt, env={"ENRICHLOG_ENRICHERS": PLAN_URIS})

    assert 0 == run.returncode, run.stderr
    assert SECRET not in run.stdout + run.stderr
    for shown in (
        "static://?upstream=postgres://app:***@db/x&auth=***&passphrase=***&name=st",
        "postgres-lookup://app:***@db:5432/app",
        "redis-lookup://:***@cache:6379/0",
    ):
        assert shown in run.stdout


def test_plan_as_json_is_only_json() -> None:
    run = run_module("plan", "--format", "json", env={"ENRICHLOG_ENRICHERS": PLAN_URIS})

    plan = json.loads(run.stdout)
    assert ["st", "pg", "rd"] == [e["name"] for level in plan["levels"] for e in level["enrichers"]]


def test_check_of_an_unknown_scheme_with_an_authorization_key_masks_it() -> None:
    uri = "nosuch://app:s3cret@host/x?authorization=s3cret&api_key=s3cret&Client-Secret=s3cret"

    run = run_module("check", env={"ENRICHLOG_ENRICHERS": uri})

    assert 1 == run.returncode
    assert SECRET not in run.stdout + run.stderr
    assert "unknown scheme 'nosuch'" in run.stderr
    assert "Traceback" not in run.stderr


def test_check_lists_every_bad_uri_without_a_secret() -> None:
    uris = ",".join(
        [
            "postgres-lookup://app:s3cret@db:5432/app?name=pg&colour=blue",
            "redis-lookup://:s3cr%65t@cache:6379/0?key=nofield",  # percent-encoded
            "static://?password=s3cret#fragment",
            "postgres-lookup://app:s3:cret@db:notaport/app?table=t&columns=c&key=k",
        ]
    )

    run = run_module("check", env={"ENRICHLOG_ENRICHERS": uris})

    assert 1 == run.returncode
    assert "4 problem(s) found" in run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert "s3:cret" not in run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def application(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("secrets") / "out.log"
    return run_script("secret_app.py", out)


@pytest.mark.parametrize(
    "shown",
    [
        "settings_repr",
        "settings_str",
        "settings_json",
        "to_uri",
        "errors",
        "health",
        "repr",
        "metrics",
        "report",
        "health_after_shutdown",
    ],
)
def test_what_an_application_shows_of_its_configuration_has_no_secret(
    application: Run, shown: str
) -> None:
    text = json.dumps(application.summary[shown])

    assert SECRET not in text
    if shown in {"settings_repr", "to_uri", "errors"}:
        assert "***" in text  # masked, not left out


def test_a_failed_start_is_reported_on_stderr_with_its_secrets_masked(application: Run) -> None:
    (report,) = application.stderr_lines_with("failed to start")

    assert SECRET not in application.stderr
    assert "https://app:***@down.example client_secret=***" in report


def test_a_uri_given_where_an_enricher_object_is_expected_is_refused_masked(
    application: Run,
) -> None:
    # Built like a URI of the settings (or refused, its secrets masked).
    message = application.summary.get("configure_error", "")

    assert SECRET not in message
