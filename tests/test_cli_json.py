"""Every --json output is JSON data of a documented shape (a small structural validator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT

HEX = "hex"  # a string of hex digits, even length
Opt = tuple  # Opt[type]: that or null


def check(value: Any, schema: Any, where: str = "$") -> None:
    """``schema``: a type, HEX, a tuple (null allowed), a one-item list (every item), or a
    dict (exactly these keys)."""
    if isinstance(schema, tuple):
        if value is None:
            return
        (schema,) = schema
    if schema == HEX:
        assert isinstance(value, str) and len(value) % 2 == 0, (where, value)
        bytes.fromhex(value)
    elif isinstance(schema, list):
        assert isinstance(value, list), (where, value)
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, dict):
        assert isinstance(value, dict), (where, value)
        assert set(value) == set(schema), (where, sorted(set(value) ^ set(schema)))
        for key, sub in schema.items():
            check(value[key], sub, f"{where}.{key}")
    elif schema is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), (where, value)
    elif schema is int:
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    else:
        assert isinstance(value, schema), (where, value)


DB_ANSWER = {"status": str, "reason": (str,), "message": str}
SLOT = {"slot": int, "name": (str,), "present": bool, "atr": (str,), "protocol": (str,),
        "error": (str,)}
LIST = [{"index": int, "name": str, "vid": int, "pid": int, "vid_pid": str, "serial": (str,),
         "usb_path": str, "interface": int, "slots": int, "database": DB_ANSWER,
         "exchange_level": (str,), "error": (str,), "slot_states": [SLOT]}]
ENTRY = {
    "vid_pid": str, "vid": int, "pid": int, "name": str, "vendor": (str,), "status": str,
    "supported": bool, "section": str, "line": int, "aliases": [str], "note": (str,),
    "quirks": [str], "min_firmware": (int,), "dump": (str,), "bcd_device": (int,),
    "manufacturer": (str,), "product": (str,), "interface_count": (int,),
    "interface_numbers": [int], "interface_class": (int,), "interface_subclass": (int,),
    "interface_protocol": (int,), "has_interrupt": (bool,), "ccid_version": (str,),
    "exchange_level": (str,), "protocols": ([str],), "voltages": ([str],),
    "pin_support": ([str],), "features": ([str],), "slots": (int,),
    "max_message_length": (int,), "max_ifsd": (int,), "lcd_layout": ([int],),
    "default_clock_khz": (int,), "max_clock_khz": (int,), "clocks_khz": [int],
    "default_data_rate": (int,), "max_data_rate": (int,), "data_rates": [int],
    "raw_descriptor": (HEX,),
}
SUPPORTED = {"vid_pid": str, "vid": int, "pid": int, "supported": bool, "status": str,
             "reason": (str,), "message": str, "entry": (ENTRY,),
             "quirks": [{"id": str, "description": str}]}
ATR = {"atr": HEX, "convention": str, "tck_ok": bool, "protocols": [int], "historical": HEX,
       "description": [str]}
SEND = {"reader": str, "slot": int, "atr": HEX, "protocol": str,
        "exchanges": [{"command": HEX, "response": HEX, "data": HEX, "sw": HEX, "meaning": str,
                       "ms": float}]}
VIRTUAL = [{"name": str, "description": str}]
#: `ccid scan --json`: JSON Lines, one of these per line, chosen by its "event"
SCAN = {
    "reader_added": {"event": str, "time": float, "reader": str, "slots": [str]},
    "reader_removed": {"event": str, "time": float, "reader": str},
    "slot": {"event": str, "time": float, "reader": str, "slot": int, "name": str,
             "number": int, "event_number": int, "state": str, "atr": (HEX,),
             "protocols": ([int],), "error": (str,)},
    "other": {"event": str, "time": float, "text": str},
}


def ccid_json(*args: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "ccid", *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize(("args", "schema"), [
    (("list", "--virtual", "two-slot", "--json"), LIST),
    (("list", "--virtual", "iccd-token", "--json"), LIST),
    (("supported", "08E6:3437", "--json"), SUPPORTED),
    (("supported", "0C4B:0500", "--json"), SUPPORTED),
    (("supported", "FFFF:0001", "--json"), SUPPORTED),
    (("supported", "--name", "omnikey", "--json"), [ENTRY]),
    (("atr", "3B8F8001804F0CA000000306030001000000006A", "--json"), ATR),
    (("--json", "atr", "3B 02 14 50"), ATR),
    (("send", "--virtual", "gemalto-pc-twin", "00A4040006A000000018FF", "0084000008", "--json"),
     SEND),
    (("send", "--virtual", "extended-apdu", "0084000008", "--json"), SEND),
    (("virtual", "--list", "--json"), VIRTUAL),
])
def test_json_shapes(args: tuple[str, ...], schema: Any) -> None:
    check(ccid_json(*args), schema)


def test_supported_json_is_data_not_reprs() -> None:
    data = ccid_json("supported", "08E6:3437", "--json")
    assert data["status"] == "supported" and data["entry"]["status"] == "supported"
    assert bytes.fromhex(data["entry"]["raw_descriptor"])[:2] == b"\x36\x21"
    assert data["entry"]["protocols"] == ["T=0", "T=1"]
    text = json.dumps(data)
    assert "b'" not in text and "<" not in text  # no Python reprs
    assert text.count('"raw_descriptor"') == 1  # the entry once


def test_parse_json_shape() -> None:
    reports = ccid_json("parse", "--virtual", "gemalto-pc-twin", "--json")
    check(reports, [dict])
    (rep,) = reports
    for key in ("idVendor", "idProduct", "vid_pid", "descriptor", "raw", "derived"):
        assert key in rep
    check(rep["raw"], HEX)
    assert all(isinstance(v, int) for v in rep["descriptor"].values())


def test_every_json_command_documents_its_output() -> None:
    from ccid import cli

    for command in cli.JSON_COMMANDS:
        if command == "trace":
            continue  # the trace subcommand documents its own
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "ccid", command, "--help"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT, env=env)
        assert "JSON:" in r.stdout, command


def scan_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line of `ccid scan --json` is one JSON object of a SCAN shape."""
    records = []
    for i, line in enumerate(stdout.splitlines()):
        record = json.loads(line)
        assert isinstance(record, dict) and record.get("event") in SCAN, (i, line)
        check(record, SCAN[record["event"]], f"line {i}")
        if record["event"] == "slot":
            assert record["state"] in ("present", "absent", "unknown"), line
        records.append(record)
    return records


def run_ccid(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ccid", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def test_scan_json_lines_follow_a_card_insertion() -> None:
    r = run_ccid("scan", "--virtual", "two-slot", "--simulate", "insert:1@0.5", "--timeout", "1",
                 "--json")
    assert r.returncode == 0, r.stderr
    records = scan_lines(r.stdout)
    added, *slots = records
    assert added["event"] == "reader_added" and len(added["slots"]) == 2, added
    assert all(s["event"] == "slot" and s["reader"] == added["reader"] for s in slots), slots
    # each slot's state at start, in order: slot 0 holds the card, slot 1 is empty
    first = {s["slot"]: s for s in slots[:2]}
    assert [s["slot"] for s in slots[:2]] == [0, 1]
    assert [s["number"] for s in slots[:2]] == [0, 1]
    assert [s["name"] for s in slots[:2]] == added["slots"]
    assert first[0]["state"] == "present" and first[0]["event_number"] == 0
    assert first[1]["state"] == "absent" and first[1]["atr"] is None
    assert first[1]["protocols"] is None and first[1]["error"] is None
    # then the simulated insertion, reported once, with the ATR read by connecting
    (inserted,) = slots[2:]
    assert inserted["slot"] == 1 and inserted["number"] == 1, inserted
    assert inserted["state"] == "present" and inserted["event_number"] == 1, inserted
    assert inserted["error"] is None and inserted["atr"] == first[0]["atr"], inserted
    atr = ccid_json("atr", inserted["atr"], "--json")
    assert inserted["protocols"] == atr["protocols"] and atr["tck_ok"], atr
    times = [rec["time"] for rec in records]
    assert times == sorted(times)


def test_scan_json_is_a_global_option_too() -> None:
    r = run_ccid("--json", "scan", "--virtual", "gemalto-pc-twin", "--once")
    assert r.returncode == 0, r.stderr
    added, slot = scan_lines(r.stdout)
    assert added["event"] == "reader_added" and slot["event"] == "slot", r.stdout
    assert slot["state"] == "present" and bytes.fromhex(slot["atr"])[:1] == b"\x3b"


def test_scan_json_lines_are_flushed_as_they_happen() -> None:
    """The lines come while the scan still runs (a pipe is block-buffered otherwise), and
    Ctrl-C ends it with JSON only on stdout."""
    import signal

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONUNBUFFERED", None)  # stdout block-buffered, as in a user's pipe
    proc = subprocess.Popen([sys.executable, "-m", "ccid", "scan", "--virtual", "two-slot",
                             "--json", "--timeout", "20"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(3)]  # the reader and its two slots
        assert proc.poll() is None, "the lines came only when the scan ended"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    records = scan_lines("".join(head) + rest)
    assert [r["event"] for r in records] == ["reader_added", "slot", "slot"], records
    assert "Traceback" not in err
