"""Case 13: the command line on bad input and closed pipes."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from enrichlog import EnricherConfigError, configure_logging
from tests.faults.runner import run_module, script_env

BAD_JSON = '{"user": {"timeout": 0.2},}'
#: 400 enrichers with long values: a plan larger than a pipe's buffer (64 KiB)
#: in every format, so the reader goes away while the command still writes.
MANY_URIS = ",".join(f"static://?k{i}={'v' * 200}&name=s{i}" for i in range(400))


def test_invalid_json_in_enricher_options_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHLOG_ENRICHER_OPTIONS", BAD_JSON)

    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(output="stderr")

    assert "ENRICHLOG_ENRICHER_OPTIONS is not valid JSON" in str(raised.value)


@pytest.mark.parametrize(
    "env",
    [
        {"ENRICHLOG_ENRICHER_OPTIONS": BAD_JSON},
        {"ENRICHLOG_ENRICHERS": "[not json"},
        {"ENRICHLOG_QUEUE_SIZE": "1e23", "ENRICHLOG_LEVEL": "loud"},
        {"ENRICHLOG_ENRICHERS": "hostnam://,static://?name=a&dependencies=a"},
    ],
    ids=[
        "options-bad-json",
        "enrichers-bad-json",
        "two-bad-settings",
        "bad-uris",
    ],
)
def test_check_reports_a_bad_configuration_without_a_traceback(env: dict[str, str]) -> None:
    run = run_module("check", env=env)

    assert 1 == run.returncode
    assert "problem(s) found" in run.stderr
    assert "Traceback" not in run.stderr
    assert "" == run.stdout


def test_check_names_the_variable_holding_invalid_json() -> None:
    run = run_module("check", env={"ENRICHLOG_ENRICHER_OPTIONS": BAD_JSON})

    assert "error: invalid logging settings: ENRICHLOG_ENRICHER_OPTIONS is not valid JSON" in (
        run.stderr
    )


def test_plan_with_invalid_json_exits_1_without_a_traceback() -> None:
    run = run_module("plan", env={"ENRICHLOG_ENRICHER_OPTIONS": BAD_JSON})

    assert (1, "") == (run.returncode, run.stdout)
    assert "ENRICHLOG_ENRICHER_OPTIONS" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("fmt", ["json", "text", "mermaid"])
def test_plan_piped_into_head_ends_quietly(fmt: str) -> None:
    command = " ".join(shlex.quote(p) for p in [sys.executable, "-m", "enrichlog"])
    shell = f"{command} plan --format {fmt} | head -1; echo status=${{PIPESTATUS[0]}} >&2"

    proc = subprocess.run(
        ["bash", "-c", shell],
        env=script_env({"ENRICHLOG_ENRICHERS": MANY_URIS}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 1 == len(proc.stdout.splitlines())
    # As a process ended by SIGPIPE, and nothing else: no traceback, no warning.
    assert ["status=141"] == proc.stderr.split()


def test_version_prints_the_installed_version() -> None:
    run = run_module("--version")

    assert 0 == run.returncode
    assert run.stdout.startswith("enrichlog ")
    assert "unknown" not in run.stdout


@pytest.mark.parametrize("command", ["plan", "check", "demo", "plan --format json"])
def test_a_full_disk_under_stdout_is_one_line_and_status_1(command: str) -> None:
    """``> /dev/full`` (a full disk): the failure in one line, no traceback."""
    shell = " ".join(shlex.quote(p) for p in [sys.executable, "-m", "enrichlog"])
    proc = subprocess.run(
        ["bash", "-c", f"{shell} {command} > /dev/full"],
        env=script_env({"ENRICHLOG_ENRICHERS": "static://?region=eu"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 1 == proc.returncode
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr
    name = command.split()[0]
    assert f"python -m enrichlog {name}: [Errno 28] No space left on device" in proc.stderr


def test_a_closed_stdout_is_reported_not_ignored() -> None:
    shell = " ".join(shlex.quote(p) for p in [sys.executable, "-m", "enrichlog"])
    proc = subprocess.run(
        ["bash", "-c", f"{shell} plan >&-"],
        env=script_env({"ENRICHLOG_ENRICHERS": "hostname://"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (1, "python -m enrichlog plan: cannot write to stdout: it is closed\n") == (
        proc.returncode,
        proc.stderr,
    )


@pytest.mark.parametrize("option", ["--version", "--help", "plan --help"])
@pytest.mark.parametrize("unbuffered", [True, False])
def test_version_and_help_say_when_they_cannot_be_shown(option: str, unbuffered: bool) -> None:
    shell = " ".join(shlex.quote(p) for p in [sys.executable, "-m", "enrichlog"]) + " " + option
    environment = script_env()
    if not unbuffered:  # argparse itself dropped an unbuffered write's failure
        environment.pop("PYTHONUNBUFFERED")
    full = subprocess.run(
        ["bash", "-c", f"{shell} > /dev/full"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    closed = subprocess.run(
        ["bash", "-c", f"{shell} >&-"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (1, "python -m enrichlog: [Errno 28] No space left on device\n") == (
        full.returncode,
        full.stderr,
    )
    assert 1 == closed.returncode
    assert closed.stderr.endswith("python -m enrichlog: cannot write to stdout: it is closed\n")


def test_demo_into_a_pipe_closed_early_ends_quietly() -> None:
    # Its events are its output: enrichlog's reports of each line it could
    # not write came on top of the quiet 141.
    command = " ".join(shlex.quote(p) for p in [sys.executable, "-m", "enrichlog"])
    proc = subprocess.run(
        ["bash", "-c", f"{command} demo --events 3 | head -0; echo status=${{PIPESTATUS[0]}} >&2"],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert ["status=141"] == proc.stderr.split()
