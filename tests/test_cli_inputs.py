"""No CLI input prints a traceback: every subcommand driven with bad values, and the
command-line conveniences (global options anywhere, --version, python -m ccid, pipes)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccid import cli


def run(*args: str, timeout: float = 60, module: str = "ccid") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def one_line_failure(r: subprocess.CompletedProcess[str], code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Exception in thread" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ccid: ")]
    assert len(errors) == 1, r.stderr


# --- the tracebacks of issue 12 ------------------------------------------------------------


def test_send_direct_mode_is_a_usage_error() -> None:
    r = run("send", "--virtual", "gemalto-pc-twin", "--mode", "direct", "0084000008")
    one_line_failure(r)
    assert "direct" in r.stderr and "[SCARD_" not in r.stderr


@pytest.mark.parametrize("steps", ["remove@x", "remove@", "insert@-1", "insert@nan", "eject@1",
                                   "remove:7@1", "remove@inf", "remove@1 remove@2"])
def test_scan_simulate_bad_steps(steps: str) -> None:
    one_line_failure(run("scan", "--virtual", "gemalto-pc-twin", "--simulate", steps,
                         "--timeout", "1"))


def test_scan_simulate_insert_into_a_full_slot_is_refused_before_it_runs() -> None:
    r = run("scan", "--virtual", "two-slot", "--simulate", "insert@0.5", "--timeout", "2")
    one_line_failure(r)
    assert "already holds a card" in r.stderr


def test_scan_simulate_other_slot() -> None:
    r = run("scan", "--virtual", "two-slot", "--simulate", "insert:1@0.5", "--timeout", "2")
    assert r.returncode == 0, r.stderr
    shown = []  # (reader line, state line) in order
    reader = ""
    for line in r.stdout.splitlines():
        if line.startswith(" Reader ") and "added" not in line:
            reader = line.strip()
        elif "Card state:" in line:
            shown.append((reader, line.strip()))
    slot1 = [state for name, state in shown if name.endswith(" 00 01")]
    assert slot1 and slot1[-1].startswith("Card state: Card inserted"), r.stdout


# --- every subcommand with bad values, in process --------------------------------------------

PRESETS = ["gemalto-pc-twin", "two-slot", "extended-apdu", "short-apdu", "iccd-token",
           "no-interrupt", "two-slot-concurrent", "no-such", ""]
JUNK = ["", "x", "-1", "0", "1", "7", "256", "99999999999", "zz", "0x", "nan", "inf", "\u00ff",
        "-", "--", "-v", "--json", "--trace", "--no-such-flag"]
APDUS = ["0084000008", "00A4040006A000000018FF", "00", "84", "08", "00 84 00 00 08", "0084",
         "3B", "zz", "0x00", "00A40400FF" + "00" * 255, "00C0000000", "80CA9F7F00"]
READERS = ["0", "1", "-1", "08E6:3437", "0x08e6:0x3437", "08E6:", "FFFF:0001", "Gemalto",
           "nobody", "1-1:1.0", ""]
# per subcommand: option -> values (None: a flag), and the positional arguments' values
SPEC: dict[str, tuple[dict[str, list[str] | None], list[str]]] = {
    "list": ({"--virtual": PRESETS, "--json": None}, []),
    "scan": ({"--virtual": PRESETS, "--once": None, "--json": None,
              "--simulate": ["remove@x", "insert@0.1", "remove@0.05", "insert:1@0.1",
                             "remove@0.05 insert@0.1", "remove:1@0.1", "eject@1", "", "@"]},
             []),
    "parse": ({"--virtual": PRESETS, "--reader": READERS, "--json": None}, []),
    "dump-descriptor": ({"--virtual": PRESETS, "--reader": READERS, "--json": None}, []),
    "send": ({"--virtual": PRESETS, "--reader": READERS, "--slot": ["0", "1", "2", "-1", "x"],
              "--protocol": ["T0", "T1", "T=0", "T=1", "T2"],
              "--mode": ["shared", "exclusive", "direct", "none"], "--json": None}, APDUS),
    "atr": ({"--json": None}, ["3B 00", "3B", "3F", "3B 8F 80 01", "zz", "3B0214 50", "00" * 40,
                               "3B8F8001804F0CA000000306030001000000006A", "3B 00 00 00"]),
    "supported": ({"--name": ["omnikey", "*", "[", "", "zzz"], "--json": None},
                  ["08E6:3437", "0x08e6:0x3478", "FFFF:0001", "08E6", "nothex", "0C4B:0500"]),
    # -o and --install write files: tested by name elsewhere
    "udev-rules": ({"--uaccess": None, "--group": ["pcscd", "plugdev", "Bad Group", "", "-x"]},
                   []),
    "trace": ({"--replay": None, "--json": None}, ["no-file", ".", "README.md", ""]),
    "virtual": ({"--list": None, "--json": None}, []),
    "demo": ({"--virtual": PRESETS, "--reader": READERS}, []),
}


@contextlib.contextmanager
def thread_exceptions() -> Iterator[list[Any]]:
    seen: list[Any] = []
    old = threading.excepthook
    threading.excepthook = seen.append
    try:
        yield seen
    finally:
        threading.excepthook = old


def drive(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@st.composite
def argvs(draw: st.DrawFn, command: str) -> list[str]:
    options, positional = SPEC[command]
    argv = [command]
    for option, values in options.items():
        if draw(st.booleans()):
            argv.append(option)
            if values is not None:
                argv.append(draw(st.sampled_from(values)))
    if positional:
        argv += draw(st.lists(st.sampled_from(positional), max_size=3))
    if draw(st.integers(0, 3)) == 0:  # now and then, junk anywhere
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(JUNK)))
    if command == "scan":  # bounded: a scan otherwise waits for events forever
        argv += ["--timeout", "0.1"]
    return argv


@pytest.mark.parametrize("command", sorted(SPEC))
def test_bad_values_never_crash(command: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(argvs(command))
    def check(argv: list[str]) -> None:
        with thread_exceptions() as seen:
            code, _out, err = drive(argv)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err and "internal error" not in err, (argv, err)
        assert not seen, (argv, seen)
        if code:  # `supported` answers "no" on stdout, as grep does; others on stderr
            assert (err + _out).strip(), (argv, "a failure must say what was wrong")

    check()


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: Any) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(cli, "cmd_virtual", broken)
    code, _out, err = drive(["virtual"])
    assert code == cli.EXIT_BUG
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "Traceback" not in err


# --- conveniences --------------------------------------------------------------------------


def test_global_options_after_the_command(tmp_path: Path) -> None:
    trace = tmp_path / "s.jsonl"
    r = run("send", "--virtual", "gemalto-pc-twin", "0084000008", "-vv", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "DEBUG" in r.stderr and trace.stat().st_size > 0
    r = run("--json", "atr", "3B 00")
    assert r.returncode == 0 and r.stdout.lstrip().startswith("{")
    one_line_failure(run("--json", "demo"))


def test_send_joins_unquoted_bytes() -> None:
    r = run("send", "--virtual", "gemalto-pc-twin", "00", "84", "00", "00", "08", "0084000004")
    assert r.returncode == 0, r.stderr
    assert "> 00 84 00 00 08" in r.stdout and "> 00 84 00 00 04" in r.stdout
    assert r.stdout.count("SW 90 00") == 2
    one_line_failure(run("send", "--virtual", "gemalto-pc-twin", "00", "84"))


def test_parse_reader_index_as_send_says_it() -> None:
    for command in ("parse", "send"):
        extra = ["0084000008"] if command == "send" else []
        r = run(command, "--virtual", "gemalto-pc-twin", "--reader", "1", *extra)
        one_line_failure(r, code=1)
        assert "no reader with index 1" in r.stderr
    r = run("parse", "--virtual", "gemalto-pc-twin", "--reader", "0x08e6:0x3437")
    assert r.returncode == 0 and "idVendor: 0x08E6" in r.stdout


def test_version_and_python_dash_m() -> None:
    import ccid

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ccid {ccid.__version__}"
    r = run("atr", "3B 00", module="ccid")
    assert r.returncode == 0 and "ATR: 3B 00" in r.stdout


def test_broken_pipe_ends_quietly() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # ~1 MB: far more than a pipe holds, so the write after the close must fail
    proc = subprocess.Popen([sys.executable, "-m", "ccid", "supported", "--name", "*", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == cli.EXIT_BROKEN_PIPE
    assert err == ""


def test_scan_shows_empty_slots_and_names_readers() -> None:
    r = run("scan", "--virtual", "two-slot", "--once")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    readers = [line.strip() for line in lines if line.startswith(" Reader ") and ":" in line
               and "added" not in line]
    assert readers == ["Reader 0: Gemalto Hybrid Smartcard Reader [?] 00 00",
                       "Reader 1: Gemalto Hybrid Smartcard Reader [?] 00 01"]
    states = [line.strip() for line in lines if "Card state:" in line]
    assert states[0].startswith("Card state: Card inserted")
    assert states[1] == "Card state: Card removed, no card"


def test_udev_rules_output_name_warnings(tmp_path: Path) -> None:
    r = run("udev-rules", "--uaccess", "-o", str(tmp_path / "92_pcscd_ccid.rules"))
    assert r.returncode == 0
    assert "before 73" in r.stderr and "libccid" in r.stderr
    r = run("udev-rules", "--uaccess", "-o", str(tmp_path / "70-ccid-uaccess.rules"))
    assert r.returncode == 0 and "warning" not in r.stderr
    one_line_failure(run("udev-rules", "--group", "Bad Group"))
    r = run("udev-rules", "--group", "plugdev")
    assert 'GROUP="plugdev"' in r.stdout and 'GROUP="pcscd"' not in r.stdout
