"""ccid/_fast.c under AddressSanitizer and UBSan, fed seeded random and malformed input.

tests/asan/driver.c includes _fast.c, calls every function with exact-size heap buffers
(random lengths, short capacities, truncated blocks, disordered chains) and checks the
invariants the Python wrappers rely on. Skipped only where no C compiler exists, never in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

SOURCE = ROOT / "ccid" / "_fast.c"
DRIVER = ROOT / "tests" / "asan" / "driver.c"
FUZZER = ROOT / "tests" / "asan" / "fuzz.c"
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all"]
ITERATIONS = "200000"
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
       "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def _compiler() -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler in CI: the sanitizer run is mandatory there")
        pytest.skip("no C compiler")
    return cc


def _build(cc: str, include: Path, out: Path, extra: list[str] | None = None) -> None:
    cmd = [cc, "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE,
           f"-I{include}", *(extra or []), str(DRIVER), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "sanitize" in result.stderr and not os.environ.get("CI"):
        pytest.skip(f"compiler lacks sanitizer support: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr


def _run(exe: Path, seed: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), ITERATIONS, seed], capture_output=True, text=True,
                          timeout=300, env=ENV)


@pytest.mark.parametrize("seed", ["1", "20261123"])
def test_fast_c_is_clean_under_asan(tmp_path: Path, seed: str) -> None:
    exe = tmp_path / "driver"
    _build(_compiler(), SOURCE.parent, exe)
    result = _run(exe, seed)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-4000:]
    assert "ERROR: AddressSanitizer" not in report and "runtime error" not in report
    assert f"ok {ITERATIONS} iterations" in result.stdout


def test_driver_catches_an_out_of_bounds_read(tmp_path: Path) -> None:
    """The harness can fail: a T=1 length check weakened by one byte is reported."""
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(SOURCE.parent / "_fast.h", mutant / "_fast.h")
    text = SOURCE.read_text(encoding="utf-8")
    weakened = text.replace("len < 3u + edc_len)", "len < 2u)")
    assert weakened != text, "mutation site moved: update this test"
    (mutant / "_fast.c").write_text(weakened, encoding="utf-8")
    exe = tmp_path / "driver"
    _build(_compiler(), mutant, exe)
    result = _run(exe, "1")
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr


def test_libfuzzer_target(tmp_path: Path) -> None:
    """A short libFuzzer run when clang is available (optional locally and in CI)."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed: libFuzzer target not built")
    exe = tmp_path / "fuzz"
    cmd = [clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", f"-I{SOURCE.parent}",
           str(FUZZER), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "fuzzer" in built.stderr:
        pytest.skip(f"clang without libFuzzer: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(exe), "-runs=200000", "-seed=1", "-max_len=1024"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
