"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written to ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, pythonpath: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m enrichlog args...`` with ``env`` added to a copy of this
    process's environment without ENRICHLOG_* (``pythonpath``: its
    ``PYTHONPATH``, none by default)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    environment.pop("PYTHONPATH", None)
    if pythonpath is not None:
        environment["PYTHONPATH"] = str(pythonpath)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "enrichlog", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
