"""Runs the fault scripts in a subprocess and reads their summary line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """A finished script: its exit status, output, summary and duration."""

    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    seconds: float

    def stderr_lines_with(self, text: str) -> list[str]:
        return [line for line in self.stderr.splitlines() if text in line]


def script_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a script: ours without ENRICHLOG_*, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ENRICHLOG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def parse_summary(*texts: str) -> dict[str, Any]:
    """The last ``{"summary": ...}`` line in ``texts`` ({} when none)."""
    found: dict[str, Any] = {}
    for text in texts:
        for line in text.splitlines():
            if line.startswith('{"summary":'):
                found = json.loads(line)["summary"]
    return found


def script_command(name: str, *args: object) -> list[str]:
    """The command line that runs ``scripts/<name>`` with ``args``."""
    return [sys.executable, str(SCRIPTS / name), *map(str, args)]


def run_script(
    name: str,
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    stdout: int | None = None,
) -> Run:
    """Run ``scripts/<name>`` with ``args``; never raises for its status.

    ``stdout``: a file descriptor the script's standard output goes to
    (a pipe whose reader is gone, say); captured when ``None``.
    """
    started = time.monotonic()
    proc = subprocess.run(
        script_command(name, *args),
        env=script_env(env),
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    seconds = time.monotonic() - started
    out = proc.stdout or ""
    return Run(proc.returncode, out, proc.stderr, parse_summary(out, proc.stderr), seconds)


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: Path | None = None
) -> Run:
    """``python -m enrichlog <args>``."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "enrichlog", *args],
        env=script_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, {}, time.monotonic() - started)
