"""Tests for :mod:`enrichlog.settings`: ``LoggingSettings`` from code and
from ``ENRICHLOG_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enrichlog.container import configure_logging, get_logger
from enrichlog.exceptions import EnricherConfigError
from enrichlog.settings import EnricherOptions, LoggingSettings, resolve_settings
from tests.helpers import read_lines


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no ``.env`` file can leak settings in."""
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = LoggingSettings()

    assert (
        "info",
        "json",
        "stdout",
        "auto",
        1.0,
        5.0,
        "enrichment_errors",
        [],
    ) == (
        settings.level,
        settings.format,
        settings.output,
        settings.delivery,
        settings.enricher_timeout,
        settings.level_timeout,
        settings.error_field,
        settings.enrichers,
    )


def test_level_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_LEVEL", "debug")

    assert "debug" == LoggingSettings().level


def test_enricher_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_TIMEOUT", "0.25")

    assert 0.25 == LoggingSettings().enricher_timeout


def test_keyword_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_LEVEL", "debug")

    assert "error" == LoggingSettings(level="error").level


def test_dotenv_file_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ENRICHLOG_LEVEL=warning\n")

    assert "warning" == LoggingSettings().level


def test_environment_beats_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("ENRICHLOG_LEVEL=warning\n")
    monkeypatch.setenv("ENRICHLOG_LEVEL", "error")

    assert "error" == LoggingSettings().level


@pytest.mark.parametrize(
    ("given", "expected"),
    [("DEBUG", "debug"), (" Info ", "info"), ("warn", "warning"), ("fatal", "critical")],
)
def test_level_is_normalised(given: str, expected: str) -> None:
    assert expected == LoggingSettings(level=given).level


def test_level_number_is_the_stdlib_number() -> None:
    assert 30 == LoggingSettings(level="warning").level_number


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ENRICHLOG_LEVEL", "loud"),
        ("ENRICHLOG_FORMAT", "xml"),
        ("ENRICHLOG_DELIVERY", "sometimes"),
        ("ENRICHLOG_ENRICHER_TIMEOUT", "0"),
        ("ENRICHLOG_ENRICHER_TIMEOUT", "-1"),
        ("ENRICHLOG_ENRICHER_TIMEOUT", "inf"),
        ("ENRICHLOG_ENRICHER_TIMEOUT", "soon"),
        ("ENRICHLOG_LEVEL_TIMEOUT", "-0.5"),
        ("ENRICHLOG_OUTPUT", ""),
    ],
)
def test_invalid_environment_value_is_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("ENRICHLOG_").lower()

    with pytest.raises(EnricherConfigError, match=field):
        LoggingSettings()


@pytest.mark.parametrize("overrides", [{}, {"level": "debug"}])
def test_settings_that_are_not_logging_settings_are_rejected_naming_their_type(
    overrides: dict[str, str],
) -> None:
    with pytest.raises(
        EnricherConfigError, match="settings: expected a LoggingSettings, got 'dict'"
    ):
        configure_logging(settings={"level": "info"}, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(("enrichers", "named"), [(5, "'int'"), ("env://?fields=a", "'str'")])
def test_enrichers_that_are_not_a_list_are_rejected_naming_their_type(
    enrichers: object, named: str
) -> None:
    with pytest.raises(EnricherConfigError, match=f"enrichers: expected a list .* got {named}"):
        configure_logging(enrichers=enrichers)  # type: ignore[arg-type]


def test_unknown_keyword_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(EnricherConfigError, match="'levle' \\(did you mean 'level'\\?\\)"):
        LoggingSettings(levle="info")  # type: ignore[call-arg]


def test_other_variables_in_the_dotenv_file_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://x\nENRICHLOG_LEVEL=debug\n")
    monkeypatch.chdir(tmp_path)

    assert "debug" == LoggingSettings().level


def test_comma_separated_enrichers_keep_a_comma_inside_a_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHERS", "env://?fields=A,B, hostname://,process://")

    assert ["env://?fields=A,B", "hostname://", "process://"] == (LoggingSettings().enrichers)


def test_single_enricher_uri_with_commas_stays_one_element(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHERS", "env://?fields=GIT_SHA,REGION,ZONE")

    assert ["env://?fields=GIT_SHA,REGION,ZONE"] == LoggingSettings().enrichers


def test_json_list_of_enrichers_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHERS", '["env://?fields=A,B", "hostname://"]')

    assert ["env://?fields=A,B", "hostname://"] == LoggingSettings().enrichers


def test_empty_enrichers_variable_is_an_empty_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHERS", "")

    assert [] == LoggingSettings().enrichers


def test_nested_enricher_options_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOUT", "0.2")

    settings = LoggingSettings()

    assert (0.2, None, None) == (
        settings.options_for("user").timeout,
        settings.options_for("user").cache_ttl,
        settings.options_for("other").timeout,
    )


def test_unknown_enricher_option_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOTU", "0.2")

    with pytest.raises(EnricherConfigError, match="timeotu"):
        LoggingSettings()


def test_enricher_options_from_code() -> None:
    settings = LoggingSettings(enricher_options={"user": {"timeout": 0.3}})

    assert EnricherOptions(timeout=0.3) == settings.options_for("user")


@pytest.mark.parametrize("value", ["", "none", "None", "null"])
def test_error_field_can_be_disabled_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENRICHLOG_ERROR_FIELD", value)

    assert None is LoggingSettings().error_field


def test_error_field_none_from_code() -> None:
    assert None is LoggingSettings(error_field=None).error_field


def test_level_timeout_can_be_switched_off() -> None:
    assert None is LoggingSettings(level_timeout=None).level_timeout


# -- through configure_logging -----------------------------------------------------


def test_configure_logging_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, log_file: Path
) -> None:
    monkeypatch.setenv("ENRICHLOG_LEVEL", "warning")
    monkeypatch.setenv("ENRICHLOG_OUTPUT", str(log_file))
    configure_logging()
    log = get_logger()

    log.info("hidden")
    log.warning("shown")

    assert ["shown"] == [line["event"] for line in read_lines(log_file)]


def test_configure_logging_override_beats_given_settings(log_file: Path) -> None:
    settings = LoggingSettings(level="error", output=str(log_file))

    container = configure_logging(settings=settings, level="debug")

    assert ("debug", "error") == (container.settings.level, settings.level)


def test_configure_logging_rejects_invalid_environment_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_TIMEOUT", "-1")

    with pytest.raises(EnricherConfigError, match="enricher_timeout"):
        configure_logging()


# -- bounds: refused when configured, not when they would fail ---------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("queue_size", 10**23),
        ("max_in_flight", 10**7),
        ("cache_max_size", 10**7),
        ("enricher_max_concurrency", 0),
        ("batch_size", 10**7),
        ("batch_window", -0.5),
        ("retry_attempts", 1000),
        ("shutdown_timeout", 1e12),
        ("overflow_block_timeout", 86_401),
        ("enricher_timeout", 1e9),
        ("level_timeout", 1e6),
        ("retry_max_delay", float("inf")),
        ("cache_ttl", 1e300),
        ("health_check_interval", 1e12),
        ("drop_report_interval", 0),
    ],
)
def test_value_that_cannot_work_is_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(EnricherConfigError, match=field):
        LoggingSettings(**{field: value})


def test_configure_logging_refuses_an_impossible_queue_size() -> None:
    with pytest.raises(EnricherConfigError, match="queue_size: Input should be less than or equal"):
        configure_logging(queue_size=10**23)


def test_batch_window_of_zero_is_the_default_and_accepted() -> None:
    assert (0.0, 0.0) == (
        LoggingSettings().batch_window,
        LoggingSettings(batch_window=0).batch_window,
    )


@pytest.mark.parametrize("name", ["event", "level", "timestamp"])
def test_error_field_named_like_a_key_of_every_event_is_refused(name: str) -> None:
    with pytest.raises(EnricherConfigError, match="error_field"):
        LoggingSettings(error_field=name)


# -- variables that cannot be read ------------------------------------------------


def test_invalid_json_in_the_enricher_list_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by the attack round: "enrichers: Expecting value: line 1 column 2".
    monkeypatch.setenv("ENRICHLOG_ENRICHERS", "[")

    with pytest.raises(EnricherConfigError) as caught:
        LoggingSettings()

    assert "ENRICHLOG_ENRICHERS or enrichers=) must be a JSON list of URIs" in str(caught.value)


def test_invalid_json_in_enricher_options_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS", '{"user": {"timeout": 0.2},}')

    with pytest.raises(EnricherConfigError) as caught:
        LoggingSettings()

    message = str(caught.value)
    assert message.startswith(
        "invalid logging settings: ENRICHLOG_ENRICHER_OPTIONS is not valid JSON: "
    )
    assert '{"user": {"timeout": 0.2}}' in message  # the example of what is expected
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("option", ["api_key", "password"])
def test_an_unknown_option_named_like_a_secret_keeps_its_message(option: str) -> None:
    # Found by an outside tester: "enricher_options.user.api_key: *** inputs
    # are not permitted" (the masking took "Extra" for the key's value).
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(enricher_options={"user": {option: "hunter2"}})

    assert str(caught.value) == (
        f"invalid logging settings: enricher_options.user.{option}: Extra inputs are not permitted"
    )


def test_spaces_around_the_output_are_not_part_of_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Found by an outside tester: "stdout " made a file named "stdout " (the
    # level was trimmed already).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENRICHLOG_OUTPUT", "stdout ")
    assert "stdout" == LoggingSettings().output
    monkeypatch.setenv("ENRICHLOG_OUTPUT", " app.log\n")
    assert "app.log" == LoggingSettings().output


def test_a_secret_in_an_error_location_is_masked() -> None:
    # Found by a review of the fix above: the location was no longer masked,
    # and an enricher_options key may be a URI with its password.
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(enricher_options={"postgres://app:S3CRETpw@db/x": {"timeout": "soon"}})

    assert "S3CRETpw" not in str(caught.value)
    assert "enricher_options.postgres://app:***@db/x.timeout" in str(caught.value)


def test_invalid_json_in_the_dotenv_file_says_so(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ENRICHLOG_ENRICHER_OPTIONS={user: 1}\n")

    with pytest.raises(
        EnricherConfigError, match=r"ENRICHLOG_ENRICHER_OPTIONS \(in \.env\) is not"
    ):
        LoggingSettings()


def test_configure_logging_reports_invalid_json_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS", "{not json")

    with pytest.raises(EnricherConfigError, match="ENRICHLOG_ENRICHER_OPTIONS is not valid JSON"):
        configure_logging()


def test_unreadable_dotenv_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"ENRICHLOG_LEVEL=\xff\xfe\n")

    with pytest.raises(EnricherConfigError, match=r"cannot read the \.env file"):
        LoggingSettings()


# -- secrets ------------------------------------------------------------------------


def test_validation_error_does_not_echo_a_uri_with_its_password() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        LoggingSettings(enrichers='["userdb://app:s3cret@db/app",]')

    assert "enrichers" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_string_settings_are_masked_in_the_repr() -> None:
    settings = LoggingSettings(output="/var/log/app?token=s3cret")

    assert "s3cret" not in repr(settings)
    assert "/var/log/app?token=s3cret" == settings.output


def test_resolve_settings_applies_overrides_to_given_settings() -> None:
    given = LoggingSettings(level="error")

    assert ("debug", "error") == (resolve_settings(given, {"level": "debug"}).level, given.level)


def test_the_json_of_the_settings_masks_a_transport_password_holding_a_space() -> None:
    # Found by a second re-test: repr() masked it, model_dump_json() did not.
    settings = LoggingSettings(transport="nats://app:Qx7 Zq9@127.0.0.1:4222?stream=S&subject=a.b")

    assert "Zq9" not in settings.model_dump_json()
    assert "nats://app:***@127.0.0.1:4222" in settings.model_dump_json()


@pytest.mark.parametrize(
    "settings",
    [
        {"queue_size": True},
        {"enricher_timeout": True},
        {"shutdown_timeout": True},
        {"metrics_port": False},
        {"max_enricher_threads": True},
        {"enricher_options": {"user": {"timeout": True}}},
        {"enricher_options": {"user": {"cache_max_size": True}}},
    ],
    ids=lambda settings: next(iter(settings)),
)
def test_a_bool_is_no_number(settings: dict[str, Any]) -> None:
    # Python counts True as 1: timeout=True would have been one second and
    # queue_size=True one event, silently.
    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(output="stderr", **settings)

    assert "a number is expected, not " in str(raised.value)
    assert next(iter(settings)) in str(raised.value)


def test_a_bool_in_the_environments_json_is_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS", '{"user": {"timeout": true}}')

    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(output="stderr")

    assert "enricher_options.user.timeout: a number is expected, not True" in str(raised.value)


def test_a_bool_of_another_library_is_no_number_either() -> None:
    class bool_:
        def __index__(self) -> int:
            return 1

        def __int__(self) -> int:
            return 1

        def __repr__(self) -> str:
            return "np.True_"

    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(output="stderr", queue_size=bool_())

    assert "queue_size: a number is expected, not np.True_" in str(raised.value)
