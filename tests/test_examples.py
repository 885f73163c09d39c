"""Every example in ``examples/`` runs as-is and exits 0; the settings
reference in ``docs/configuration.md`` lists every setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from enrichlog.enrichers import EnvEnricher, HostnameEnricher, ProcessEnricher, StaticEnricher
from enrichlog.settings import EnricherOptions, LoggingSettings
from tests.services import PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, require_service

EXAMPLES = Path(__file__).parent.parent / "examples"
CONFIGURATION_DOC = Path(__file__).parent.parent / "docs" / "configuration.md"
PYTHON_EXAMPLES = sorted(EXAMPLES.glob("*.py"))
#: Examples that talk to PostgreSQL and Redis (skipped without them).
NEEDS_SERVERS = {"fastapi_app.py"}


def clean_environment() -> dict[str, str]:
    """This process's environment without ENRICHLOG_* (as a user's shell)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}


def run_example(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**clean_environment(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_examples_directory_has_the_documented_examples() -> None:
    names = {path.name for path in EXAMPLES.iterdir()}

    assert {"quickstart.py", "fastapi_style.py", "env_config.py", "env_config.sh"} <= names


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=[p.name for p in PYTHON_EXAMPLES])
def test_python_example_exits_0_and_logs_json_lines(example: Path, tmp_path: Path) -> None:
    if example.name in NEEDS_SERVERS:
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        require_service("Redis", REDIS_HOST, REDIS_PORT)
    result = run_example([sys.executable, str(example)], tmp_path)

    assert 0 == result.returncode, result.stderr
    lines = json_lines(result.stdout)
    assert lines
    assert all("enrichment_errors" not in line for line in lines)


def test_quickstart_lines_carry_the_looked_up_fields(tmp_path: Path) -> None:
    result = run_example([sys.executable, str(EXAMPLES / "quickstart.py")], tmp_path)

    first = json_lines(result.stdout)[0]
    assert {"user_name": "alice", "plan": "pro", "quota": 1000, "service": "checkout"}.items() <= (
        first.items()
    )


def test_fastapi_style_lines_carry_request_context_and_lookups(tmp_path: Path) -> None:
    result = run_example([sys.executable, str(EXAMPLES / "fastapi_style.py")], tmp_path)

    lines = json_lines(result.stdout)
    assert 16 == len(lines)
    assert all({"request_id", "client", "account", "country"} <= line.keys() for line in lines)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_env_config_shell_example_exits_0(tmp_path: Path) -> None:
    result = run_example(["sh", str(EXAMPLES / "env_config.sh")], tmp_path)

    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith("ok: 5 enricher(s) from URIs")
    (line,) = json_lines(result.stdout)
    assert ("gold", "3f2c1d9") == (line["tier"], line["GIT_SHA"])


# -- docs/configuration.md ---------------------------------------------------------


def documented_default(name: str) -> str:
    field = LoggingSettings.model_fields[name]
    default = field.default_factory() if field.default_factory is not None else field.default
    assert default is not PydanticUndefined
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


@pytest.mark.parametrize("name", list(LoggingSettings.model_fields))
def test_configuration_doc_lists_setting_with_its_variable_and_default(name: str) -> None:
    rows = CONFIGURATION_DOC.read_text().splitlines()

    row = f"| `{name}` | `ENRICHLOG_{name.upper()}` | `{documented_default(name)}` |"
    assert any(line.startswith(row) for line in rows), row


def test_configuration_doc_lists_every_per_enricher_option() -> None:
    text = CONFIGURATION_DOC.read_text()

    missing = [name for name in EnricherOptions.model_fields if f"| `{name}` |" not in text]
    assert [] == missing


@pytest.mark.parametrize(
    "enricher_cls", [EnvEnricher, HostnameEnricher, ProcessEnricher, StaticEnricher]
)
def test_configuration_doc_describes_every_builtin_scheme(enricher_cls: type) -> None:
    text = CONFIGURATION_DOC.read_text()

    assert f"| `{enricher_cls.scheme}://" in text
