"""End to end: logging configured by the environment, in a fresh interpreter.

Each test writes a small application to a temporary directory and runs it in
a subprocess whose environment holds only the ``ENRICHLOG_*`` variables under
test (and whose working directory is that temporary directory, so no stray
``.env`` is read). The application calls ``configure_logging()`` and logs;
the test reads back the lines it wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import read_lines

PLUGIN_DIST = Path(__file__).parent.parent / "fixtures" / "plugin_dist"
SECRET = "hunter2-Sesame"

# An application configured entirely by its deployment.
APP = """
from enrichlog import configure_logging, get_logger

configure_logging()
get_logger().info("checkout", user_id=7)
"""


def run_python(
    tmp_path: Path,
    script: str | None = None,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    plugins: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (or ``python args...``) in ``tmp_path`` with ``env``
    added to a copy of this process's environment without ENRICHLOG_*."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    environment.pop("PYTHONPATH", None)
    if plugins:
        environment["PYTHONPATH"] = str(PLUGIN_DIST)
    environment.update(env or {})
    command = [sys.executable, *args]
    if script is not None:
        app = tmp_path / "app.py"
        app.write_text(textwrap.dedent(script))
        command.append(str(app))
    return subprocess.run(
        command,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_app(
    tmp_path: Path, env: dict[str, str], script: str = APP, *, plugins: bool = False
) -> list[dict[str, Any]]:
    """Run ``script`` with its output going to a file; the lines it wrote."""
    out = tmp_path / "out.log"
    env = {"ENRICHLOG_OUTPUT": str(out), **env}
    result = run_python(tmp_path, script, env=env, plugins=plugins)
    assert 0 == result.returncode, result.stderr
    return read_lines(out)


# -- ENRICHLOG_ENRICHERS -------------------------------------------------------


def test_json_list_of_uris_adds_every_builtin_field(tmp_path: Path) -> None:
    uris = [
        "static://?service=checkout&environment=prod",
        "hostname://",
        "process://",
        "env://?fields=GIT_SHA,REGION",
    ]
    env = {"ENRICHLOG_ENRICHERS": json.dumps(uris), "GIT_SHA": "abc123", "REGION": "eu-west-1"}

    (line,) = run_app(tmp_path, env)

    assert {
        "event": "checkout",
        "user_id": 7,
        "service": "checkout",
        "environment": "prod",
        "hostname": socket.gethostname(),
        "process_name": "MainProcess",
        "thread": "MainThread",
        "GIT_SHA": "abc123",
        "REGION": "eu-west-1",
    }.items() <= line.items()
    assert isinstance(line["pid"], int)
    assert os.getpid() != line["pid"]


def test_comma_separated_uris_keep_the_commas_of_env_fields(tmp_path: Path) -> None:
    env = {
        "ENRICHLOG_ENRICHERS": "static://?service=checkout, env://?fields=GIT_SHA,REGION,hostname://",
        "GIT_SHA": "abc123",
        "REGION": "eu-west-1",
    }

    (line,) = run_app(tmp_path, env)

    assert {
        "service": "checkout",
        "GIT_SHA": "abc123",
        "REGION": "eu-west-1",
        "hostname": socket.gethostname(),
    }.items() <= line.items()


def test_no_enrichers_configured_still_writes_plain_lines(tmp_path: Path) -> None:
    (line,) = run_app(tmp_path, {})

    assert {"event": "checkout", "user_id": 7, "level": "info"}.items() <= line.items()
    assert "enrichment_errors" not in line


# -- ENRICHLOG_OUTPUT, ENRICHLOG_LEVEL, ENRICHLOG_FORMAT ------------------------


def test_output_stdout_writes_json_lines_to_standard_output(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHERS": "static://?service=checkout"}

    result = run_python(tmp_path, APP, env=env)

    assert 0 == result.returncode, result.stderr
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert ("checkout", "checkout") == (line["event"], line["service"])


def test_output_stderr_leaves_standard_output_empty(tmp_path: Path) -> None:
    env = {"ENRICHLOG_OUTPUT": "stderr", "ENRICHLOG_ENRICHERS": "static://?service=checkout"}

    result = run_python(tmp_path, APP, env=env)

    assert 0 == result.returncode, result.stderr
    assert "" == result.stdout
    (line,) = [json.loads(text) for text in result.stderr.splitlines()]
    assert "checkout" == line["service"]


def test_level_setting_filters_out_lower_levels(tmp_path: Path) -> None:
    script = """
    from enrichlog import configure_logging, get_logger

    configure_logging()
    log = get_logger()
    log.debug("debugging")
    log.info("informing")
    log.warning("warning")
    log.error("failing")
    """

    lines = run_app(tmp_path, {"ENRICHLOG_LEVEL": "WARN"}, script)

    assert ["warning", "failing"] == [line["event"] for line in lines]


def test_logfmt_format_renders_key_value_pairs(tmp_path: Path) -> None:
    env = {"ENRICHLOG_FORMAT": "logfmt", "ENRICHLOG_ENRICHERS": "static://?service=checkout"}

    result = run_python(tmp_path, APP, env=env)

    assert 0 == result.returncode, result.stderr
    (line,) = result.stdout.splitlines()
    assert {"event=checkout", "user_id=7", "service=checkout", "level=info"} <= set(line.split())


def test_console_format_renders_a_human_readable_line(tmp_path: Path) -> None:
    env = {"ENRICHLOG_FORMAT": "console", "ENRICHLOG_ENRICHERS": "static://?service=checkout"}

    result = run_python(tmp_path, APP, env=env)

    assert 0 == result.returncode, result.stderr
    (line,) = result.stdout.splitlines()
    assert "checkout" in line
    assert "service" in line
    assert not line.startswith("{")


# -- .env ------------------------------------------------------------------------


def test_dotenv_file_in_working_directory_configures_logging(tmp_path: Path) -> None:
    out = tmp_path / "from-dotenv.log"
    (tmp_path / ".env").write_text(
        f"ENRICHLOG_OUTPUT={out}\n"
        "ENRICHLOG_LEVEL=warning\n"
        "ENRICHLOG_ENRICHERS=static://?service=from-dotenv,hostname://\n"
    )
    script = """
    from enrichlog import configure_logging, get_logger

    configure_logging()
    get_logger().info("filtered out")
    get_logger().warning("kept")
    """

    result = run_python(tmp_path, script)

    assert 0 == result.returncode, result.stderr
    (line,) = read_lines(out)
    assert ("kept", "from-dotenv", socket.gethostname()) == (
        line["event"],
        line["service"],
        line["hostname"],
    )


def test_environment_variable_wins_over_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ENRICHLOG_ENRICHERS=static://?service=from-dotenv\n")

    (line,) = run_app(tmp_path, {"ENRICHLOG_ENRICHERS": "static://?service=from-environment"})

    assert "from-environment" == line["service"]


def test_dotenv_file_shared_with_the_application_is_accepted(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://db.internal/app\n"
        "ENRICHLOG_ENRICHERS=static://?service=from-dotenv\n"
    )

    (line,) = run_app(tmp_path, {})

    assert "from-dotenv" == line["service"]


# -- per-enricher overrides --------------------------------------------------------

SLOW_APP = """
import asyncio

from enrichlog import AsyncEnricher, configure_logging, get_logger


class SlowEnricher(AsyncEnricher):
    timeout = 5.0  # the class's own value; the environment may override it

    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0.3)
        event_dict["slow"] = "done"
        return event_dict


configure_logging(enrichers=[SlowEnricher()], delivery="inline")
get_logger().info("checkout")
"""


def test_per_enricher_timeout_override_reaches_the_runtime(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHER_OPTIONS__SLOW__TIMEOUT": "0.05"}

    (line,) = run_app(tmp_path, env, SLOW_APP)

    assert "slow" not in line
    assert {"slow": "timeout"} == line["enrichment_errors"]


def test_enricher_keeps_its_own_timeout_without_an_override(tmp_path: Path) -> None:
    (line,) = run_app(tmp_path, {}, SLOW_APP)

    assert "done" == line["slow"]


def test_per_enricher_timeout_override_shows_in_the_plan(tmp_path: Path) -> None:
    env = {
        "ENRICHLOG_ENRICHERS": "plugin-demo://?greeting=hey&timeout=0.3",
        "ENRICHLOG_ENRICHER_OPTIONS__DEMO__TIMEOUT": "0.7",
    }

    result = run_python(
        tmp_path, args=("-m", "enrichlog", "plan", "--format", "json"), env=env, plugins=True
    )

    assert 0 == result.returncode, result.stderr
    (entry,) = json.loads(result.stdout)["levels"][0]["enrichers"]
    assert ("demo", 0.7) == (entry["name"], entry["timeout"])


def test_level_timeout_none_from_environment_disables_it(tmp_path: Path) -> None:
    env = {"ENRICHLOG_LEVEL_TIMEOUT": "none"}

    result = run_python(tmp_path, args=("-m", "enrichlog", "plan", "--format", "json"), env=env)

    assert 0 == result.returncode, result.stderr
    assert json.loads(result.stdout)["level_timeout"] is None


# -- code enrichers and URI enrichers together --------------------------------------

COMBINED_APP = """
import asyncio
import sys

from enrichlog import AsyncEnricher, configure_logging, get_logger


class UserEnricher(AsyncEnricher):
    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0.01)
        event_dict["user_name"] = "alice"
        return event_dict


def add_region(logger, method_name, event_dict):
    event_dict["region"] = "eu-west-1"
    return event_dict


container = configure_logging(enrichers=[UserEnricher(), add_region], delivery="inline")
print(container.registry.resolve_dependencies(), file=sys.stderr)
get_logger().info("checkout")
"""


def test_code_and_environment_enrichers_combine_in_one_plan(tmp_path: Path) -> None:
    # 'fallback' sets user_name only when the event has none; it depends on
    # the code enricher 'user', so it sees alice and keeps her.
    env = {
        "ENRICHLOG_ENRICHERS": "static://?service=checkout,"
        "static://?user_name=anonymous&name=fallback&dependencies=user"
    }

    out = tmp_path / "out.log"
    result = run_python(tmp_path, COMBINED_APP, env={"ENRICHLOG_OUTPUT": str(out), **env})

    assert 0 == result.returncode, result.stderr
    assert "[['user', 'add_region', 'static'], ['fallback']]" == result.stderr.strip()
    (line,) = read_lines(out)
    assert {"user_name": "alice", "region": "eu-west-1", "service": "checkout"}.items() <= (
        line.items()
    )


def test_uri_enricher_depending_on_a_missing_code_enricher_names_both(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHERS": "static://?tier=gold&name=tier&dependencies=account"}

    result = run_python(tmp_path, COMBINED_APP, env=env)

    assert 0 != result.returncode
    assert "EnricherDependencyError" in result.stderr
    assert "enricher 'tier' depends on 'account', which is not configured" in result.stderr


# -- plugins -----------------------------------------------------------------------


def test_entry_point_plugin_configured_by_uri_enriches_lines(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHERS": "plugin-demo://?greeting=hey&name=greeter,hostname://"}

    (line,) = run_app(tmp_path, env, plugins=True)

    assert ("hey", socket.gethostname()) == (line["greeting"], line["hostname"])
    assert "enrichment_errors" not in line


def test_entry_point_plugin_is_unknown_without_its_distribution(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHERS": "plugin-demo://?greeting=hey"}

    result = run_python(tmp_path, APP, env=env)

    assert 0 != result.returncode
    assert "unknown scheme 'plugin-demo'" in result.stderr


# -- bad configuration ---------------------------------------------------------------

CATCHING_APP = """
from enrichlog import EnricherConfigError, configure_logging

try:
    configure_logging()
except EnricherConfigError as exc:
    print(f"EnricherConfigError: {exc}")
"""


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        (
            f"plugin-demo://bob:{SECRET}@vault.internal/?greeting=hi",
            "plugin-demo://bob:***@vault.internal/?greeting=hi",
        ),
        (
            f"plugin-demo://?greeting=hi&api_key={SECRET}",
            "plugin-demo://?greeting=hi&api_key=***",
        ),
        (
            f"hostnam://bob:{SECRET}@vault.internal/",
            "hostnam://bob:***@vault.internal/",
        ),
    ],
    ids=["password", "secret-query-key", "unknown-scheme"],
)
def test_bad_uri_raises_config_error_naming_it_with_secret_masked(
    tmp_path: Path, uri: str, masked: str
) -> None:
    env = {"ENRICHLOG_ENRICHERS": json.dumps(["hostname://", uri])}

    result = run_python(tmp_path, CATCHING_APP, env=env, plugins=True)

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("EnricherConfigError: ")
    assert f"enricher URI {masked!r}" in result.stdout
    assert SECRET not in result.stdout


@pytest.mark.parametrize(
    "uri",
    [
        f"plugin-demo://bob:{SECRET}@vault.internal/?greeting=hi",
        f"plugin-demo://?greeting=hi&api_key={SECRET}",
        f"plugin-demo://bob:{SECRET}@vault.internal:99999/",
        f"hostnam://bob:{SECRET}@vault.internal/",
    ],
    ids=["password", "secret-query-key", "bad-port", "unknown-scheme"],
)
def test_bad_uri_traceback_never_shows_the_secret(tmp_path: Path, uri: str) -> None:
    env = {"ENRICHLOG_ENRICHERS": uri}

    result = run_python(tmp_path, APP, env=env, plugins=True)

    assert 0 != result.returncode
    assert "enrichlog.exceptions.EnricherConfigError: enricher URI" in result.stderr
    assert "***" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_invalid_setting_raises_config_error_naming_the_field(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHER_TIMEOUT": "-1"}

    result = run_python(tmp_path, CATCHING_APP, env=env)

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("EnricherConfigError: invalid logging settings")
    assert "enricher_timeout" in result.stdout


def test_malformed_json_list_raises_config_error_without_the_secret(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHERS": f'["plugin-demo://bob:{SECRET}@vault.internal/",]'}

    result = run_python(tmp_path, CATCHING_APP, env=env, plugins=True)

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("EnricherConfigError: invalid logging settings: enrichers")
    assert SECRET not in result.stdout


def test_invalid_json_in_enricher_options_raises_config_error_naming_it(tmp_path: Path) -> None:
    env = {"ENRICHLOG_ENRICHER_OPTIONS": '{"user": {"timeout": 0.2},}'}

    result = run_python(tmp_path, CATCHING_APP, env=env)

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("EnricherConfigError: invalid logging settings: ")
    assert "ENRICHLOG_ENRICHER_OPTIONS is not valid JSON" in result.stdout


def test_setting_that_cannot_work_is_refused_at_configure_time(tmp_path: Path) -> None:
    env = {"ENRICHLOG_QUEUE_SIZE": str(10**23), "ENRICHLOG_SHUTDOWN_TIMEOUT": "1e12"}

    result = run_python(tmp_path, CATCHING_APP, env=env)

    assert 0 == result.returncode, result.stderr
    assert "queue_size: Input should be less than or equal to 1000000" in result.stdout
    assert "shutdown_timeout: Input should be less than or equal to 86400" in result.stdout
