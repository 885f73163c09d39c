"""Smoke test of the benchmark runner: it runs and reports a verdict. No timing is asserted
(the benchmarks measure; they do not test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.slow
def test_quick_overhead_prints_a_verdict() -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-progress", "overhead"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert 0 == result.returncode, result.stderr
    assert re.search(r"^(PASS|FAIL)\s+overhead\s", result.stdout, re.MULTILINE), result.stdout
    assert "targets met" in result.stdout
