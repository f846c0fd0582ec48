"""ruff and mypy are part of the test command: a lint or type error fails the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    targets = [d for d in ("ccid", "tests", "tools", "benchmarks") if (ROOT / d).is_dir()]
    result = _run(*cmd, "check", *targets)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = _run(sys.executable, "-m", "mypy", "ccid")
    assert result.returncode == 0, result.stdout + result.stderr
