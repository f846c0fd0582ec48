"""The `ccid` command, run as the installed entry point in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

EXE = shutil.which("ccid")


def run(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, *([EXE] if EXE else [sys.executable, "-m", "ccid.cli"])]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL)


def test_entry_point_installed() -> None:
    assert EXE is not None, "the console script `ccid` is not on PATH: install the package"


def test_help_lists_subcommands() -> None:
    r = run("--help")
    assert r.returncode == 0
    for name in ("list", "scan", "parse", "dump-descriptor", "send", "atr", "supported",
                 "udev-rules", "trace", "virtual", "demo"):
        assert name in r.stdout
    assert "examples:" in r.stdout


@pytest.mark.parametrize("sub", ["list", "scan", "parse", "send", "atr", "supported",
                                 "udev-rules", "trace", "virtual", "demo"])
def test_each_help_has_examples(sub: str) -> None:
    r = run(sub, "--help")
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout and f"ccid {sub}" in r.stdout


def test_bad_arguments_are_usage_errors_not_tracebacks() -> None:
    for args in (["--no-such-flag"], ["send"], ["atr", "zz"], ["supported", "nothex"],
                 ["list", "--virtual", "no-such-preset"], ["scan", "--simulate", "x@1"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert "usage:" in r.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    r = run()
    assert r.returncode == 2
    assert "usage:" in r.stdout


def test_atr_decodes() -> None:
    r = run("atr", "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A")
    assert r.returncode == 0, r.stderr
    assert "3B 8F 80 01" in r.stdout
    assert "T=1" in r.stdout
    r = run("atr", "--json", "3B0214 50")
    data = json.loads(r.stdout)
    assert data["atr"] == "3b021450"


def test_supported_known_and_unknown() -> None:
    r = run("supported", "08E6:3437")
    assert r.returncode == 0, r.stderr
    assert "08E6:3437" in r.stdout
    data = json.loads(run("supported", "--json", "08E6:3437").stdout)
    assert data["supported"] is True
    r = run("supported", "FFFF:0001")
    assert r.returncode == 1
    r = run("supported", "--name", "PC Twin")
    assert r.returncode == 0 and "3437" in r.stdout


def test_udev_rules_match_committed_file(tmp_path: Path) -> None:
    r = run("udev-rules")
    assert r.returncode == 0
    committed = (ROOT / "rules" / "92-ccid-python.rules").read_text(encoding="utf-8")
    assert r.stdout == committed
    out = tmp_path / "r.rules"
    r = run("udev-rules", "--uaccess", "-o", str(out))
    assert r.returncode == 0
    assert 'TAG+="uaccess"' in out.read_text(encoding="utf-8")


def test_udev_install_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    # a directory that cannot exist, whoever we are: a path below a regular file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("udev-rules", "--install", "--rules-dir", str(blocker / "rules.d"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "run as root" not in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (blocker.parent / "rules.d").exists()


def test_udev_install_refused_without_rights(tmp_path: Path) -> None:
    locked = tmp_path / "rules.d"
    locked.mkdir(mode=0o500)
    # root writes anywhere: without CAP_DAC_OVERRIDE (util-linux's setpriv) it is refused
    # like any user
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--") \
        if os.geteuid() == 0 else ()
    r = run("udev-rules", "--install", "--rules-dir", str(locked), prefix=prefix)
    assert r.returncode == 1, r.stderr
    assert "run as root" in r.stderr and "Traceback" not in r.stderr
    assert not any(locked.iterdir())


def test_udev_install_writes_and_says_how_to_reload(tmp_path: Path) -> None:
    r = run("udev-rules", "--install", "--rules-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "92-ccid-python.rules").read_text(encoding="utf-8") == run(
        "udev-rules").stdout
    assert "udevadm control --reload" in r.stdout and "groupadd --system pcscd" in r.stdout
    assert not (tmp_path / "92_pcscd_ccid.rules").exists()  # libccid's file is left alone
    r = run("udev-rules", "--install", "--uaccess", "--rules-dir", str(tmp_path))
    assert 'TAG+="uaccess"' in (tmp_path / "70-ccid-uaccess.rules").read_text(encoding="utf-8")


def test_virtual_list() -> None:
    r = run("virtual", "--list")
    assert r.returncode == 0
    for name in ("gemalto-pc-twin", "ct700", "two-slot"):
        assert name in r.stdout


def test_list_virtual() -> None:
    r = run("list", "--virtual", "gemalto-pc-twin")
    assert r.returncode == 0, r.stderr
    assert "08E6:3437" in r.stdout
    assert "ATR:" in r.stdout
    rows = json.loads(run("list", "--virtual", "two-slot", "--json").stdout)
    assert rows and len(rows[0]["slot_states"]) == 2


def test_parse_virtual_reproduces_corpus_dump(descriptor_corpus: dict[str, Any]) -> None:
    r = run("parse", "--virtual", "gemalto-pc-twin", "--json")
    assert r.returncode == 0, r.stderr
    reports = json.loads(r.stdout)
    assert len(reports) == 1
    dump = next(e for e in descriptor_corpus["readers"] if e["file"] == "GemPCTwin.txt")
    got = reports[0]["descriptor"]
    assert len(got) == 22  # every field of the class descriptor
    for key, value in got.items():
        assert dump["interfaces"][0][key] == value, key
    assert reports[0]["data_rates"] == dump["interfaces"][0]["data_rates_bps"]
    text = run("parse", "--virtual", "gemalto-pc-twin").stdout
    assert " idVendor: 0x08E6" in text and "dwMaxCCIDMessageLength: 271 bytes" in text
    assert "TPDU level exchange" in text


def test_send_virtual() -> None:
    r = run("send", "--virtual", "gemalto-pc-twin", "0084000008")
    assert r.returncode == 0, r.stderr
    assert "SW 90 00: success" in r.stdout


def test_scan_once_virtual() -> None:
    r = run("scan", "--virtual", "gemalto-pc-twin", "--once")
    assert r.returncode == 0, r.stderr
    assert "Card inserted" in r.stdout
    assert "ATR: 3B" in r.stdout


def test_scan_sees_removal_and_insertion() -> None:
    r = run("scan", "--virtual", "gemalto-pc-twin", "--simulate", "remove@0.5 insert@1.2",
            "--timeout", "4")
    assert r.returncode == 0, r.stderr
    states = [line.strip() for line in r.stdout.splitlines() if "Card state:" in line]
    assert states[0].startswith("Card state: Card inserted")
    assert any("Card removed" in s for s in states[1:])
    assert states[-1].startswith("Card state: Card inserted")


def test_trace_record_summary_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    r = run("--trace", str(path), "send", "--virtual", "gemalto-pc-twin", "0084000008")
    assert r.returncode == 0, r.stderr
    assert path.exists() and path.stat().st_size > 0
    r = run("trace", str(path))
    assert r.returncode == 0, r.stderr
    assert "XfrBlock" in r.stdout or "IccPowerOn" in r.stdout
    r = run("trace", str(path), "--replay")
    assert r.returncode == 0, r.stdout + r.stderr


def test_demo_runs_on_virtual_reader_without_hardware() -> None:
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert "Reader:" in r.stdout and "Card ATR:" in r.stdout
    assert "<" in r.stdout


def test_scan_stops_on_ctrl_c_while_idle() -> None:
    import signal
    import time

    cmd = [EXE] if EXE else [sys.executable, "-m", "ccid.cli"]
    proc = subprocess.Popen([*cmd, "scan", "--virtual", "gemalto-pc-twin"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # started, printed the card, now idle
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Card inserted" in out and "Traceback" not in err


def test_verbose_logging_goes_to_stderr() -> None:
    r = run("-vv", "send", "--virtual", "gemalto-pc-twin", "0084000008")
    assert r.returncode == 0
    assert "DEBUG" in r.stderr or "INFO" in r.stderr
