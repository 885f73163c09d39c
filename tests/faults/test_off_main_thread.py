"""Case 5: logging configured on a thread other than the main thread.

Only the main thread may install signal handlers: configuring elsewhere
warns on stderr, ``container.install_signal_handlers()`` from the main
thread then makes SIGTERM drain, and calling it elsewhere raises.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.runner import Run, run_script

WARNING = "no SIGTERM handler was installed"


def _count(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """Configured on a thread, handlers installed from the main thread, 500
    events logged, then SIGTERM."""
    out = tmp_path_factory.mktemp("off-main") / "out.log"
    return run_script("off_main_thread.py", out, "install"), out


def test_configuring_off_the_main_thread_warns_once_on_stderr(installed: tuple[Run, Path]) -> None:
    run, _ = installed

    assert 1 == len(run.stderr_lines_with(WARNING))
    assert "'configurer'" in run.stderr_lines_with(WARNING)[0]


def test_sigterm_after_install_signal_handlers_on_the_main_thread_drains_every_event(
    installed: tuple[Run, Path],
) -> None:
    run, out = installed

    assert -signal.SIGTERM == run.returncode
    assert run.summary["installed"] is True
    assert run.summary["pending_before_signal"] > 0  # the drain had work to do
    assert run.summary["logged"] == _count(out)


def test_install_signal_handlers_off_the_main_thread_raises_enrichlog_error(
    tmp_path: Path,
) -> None:
    run = run_script("off_main_thread.py", tmp_path / "out.log", "off-main")

    (raised,) = run.summary["raised"]
    assert raised.startswith("EnrichlogError: install_signal_handlers() must be called on the main")
    assert "'not-main'" in raised
    assert "<Handlers.SIG_DFL: 0>" == run.summary["handler"]
