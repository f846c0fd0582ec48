"""Trace files and the environment: created 0600, never through a symbolic link or into
another user's file, and no environment variable turns PIN masking off."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccid import trace
from ccid.errors import UsageError

ROOT = str(Path(__file__).resolve().parents[1])
VERIFY_FRAME = "6F0D000000000100000000200081083938373635343332"


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    trace.disable()
    yield
    trace.disable()


def test_trace_file_created_for_the_user_only(tmp_path: Path) -> None:
    path = tmp_path / "wire.txt"
    old = os.umask(0o022)
    try:
        trace.enable(path)
    finally:
        os.umask(old)
    trace.record("R", "->", bytes(10))
    trace.disable()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().count("->") == 1


def test_symlink_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "wire.txt"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        trace.enable(link)
    assert trace.enabled is False
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(UsageError, match="symbolic link"):
        trace.enable(dangling)
    assert not (tmp_path / "would-be-created").exists()
    assert target.read_text() == "precious\n"


def test_fifo_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError):
        trace.enable(fifo)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to give a file to another user")
def test_file_of_another_user_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.txt"
    path.write_text("")
    os.chown(path, 12345, 12345)
    with pytest.raises(UsageError, match="another user"):
        trace.enable(path)
    assert path.read_text() == ""


def test_existing_own_file_appended(tmp_path: Path) -> None:
    path = tmp_path / "wire.txt"
    path.write_text("earlier\n")
    trace.enable(path)
    trace.record("R", "->", bytes(10))
    trace.disable()
    assert path.read_text().startswith("earlier\n")


def test_unmasked_pins_are_a_choice_in_code_and_logged(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    import io

    with caplog.at_level(logging.WARNING, logger="ccid.trace"):
        trace.enable(io.StringIO(), mask_pins=False)
    assert any("masking is OFF" in r.getMessage() for r in caplog.records)


def _child(tmp_path: Path, extra: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT, **extra}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=60, text=True,
                          capture_output=True, check=True, cwd=tmp_path)


def test_ccid_trace_pins_from_the_environment_does_not_unmask(tmp_path: Path) -> None:
    path = tmp_path / "wire.txt"
    code = ("import os, ccid.trace as t\n"
            f"t.record('R', '->', bytes.fromhex('{VERIFY_FRAME}'))\n"
            "print('CCID_TRACE_PINS' in os.environ)\n")
    r = _child(tmp_path, {"CCID_TRACE": str(path), "CCID_TRACE_PINS": "1"}, code)
    text = path.read_text()
    assert "39 38 37 36" not in text and "** ** ** **" in text
    assert r.stdout.strip() == "False"  # not passed on to children either
    assert "CCID_TRACE_PINS is ignored" in r.stderr


def test_ccid_trace_symlink_from_the_environment_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("")
    link = tmp_path / "wire.txt"
    link.symlink_to(target)
    code = "import ccid.trace as t\nassert not t.enabled\n"
    r = _child(tmp_path, {"CCID_TRACE": str(link)}, code)
    assert "symbolic link" in r.stderr
    assert target.read_text() == ""
