"""Replay (ccid.testing.replay) and the ``ccid trace`` command."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ccid
from ccid import cli, trace
from ccid.errors import CCIDError, TraceReplayError
from ccid.testing import VirtualCard, preset
from ccid.testing.replay import replay

SELECT = bytes.fromhex("00A4040006A000000018FF")
ECHO = bytes.fromhex("8010000002CAFE")


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    trace.disable()
    yield
    trace.disable()


def record_session(path: Path, protocol: str = "T=1") -> None:
    trace.enable(path)
    with ccid.open_reader(backend=preset("gemalto-pc-twin"), quirks=False) as reader:
        card = reader.connect(protocol=protocol)
        card.transmit(SELECT)
        card.transmit(ECHO)
    trace.disable()


@pytest.mark.timeout(60)
def test_command_not_in_the_trace_says_so_and_the_reader_goes_on(tmp_path: Path) -> None:
    # T=0: a T=1 session that left the recorded path would go on with other N(S) bits
    path = tmp_path / "s.jsonl"
    record_session(path, "T=0")
    backend = replay(path)
    with ccid.open_reader(backend=backend, quirks=False) as reader:
        card = reader.connect(protocol="T=0")
        assert card.transmit(SELECT)[-2:] == b"\x90\x00"
        with pytest.raises(TraceReplayError, match="has no answer for this command"):
            card.transmit(bytes.fromhex("80CA9F7F00"))
        assert backend.readers[0].replay.unmatched
        assert card.transmit(ECHO) == b"\xca\xfe\x90\x00"  # still usable


def wait_until(check: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.timeout(60)
def test_recorded_interrupts_are_played_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    backend = preset("gemalto-pc-twin")
    vr = backend.readers[0]
    trace.enable(path)
    with trace.capture() as seen, ccid.open_reader(backend=backend, quirks=False) as reader:
        card = reader.connect(protocol="T=1")
        card.transmit(SELECT)
        vr.remove(0)
        assert wait_until(lambda: sum(r.direction == "int<-" for r in seen) >= 2)
        vr.insert(VirtualCard(), 0)
        assert wait_until(lambda: sum(r.direction == "int<-" for r in seen) >= 3)
        card = reader.connect(protocol="T=1")
        card.transmit(ECHO)
    trace.disable()
    recorded = [r.data for r in trace.load(path) if r.direction == "int<-"]
    assert len(recorded) >= 3

    backend = replay(path)
    with trace.capture() as played, ccid.open_reader(backend=backend, quirks=False) as reader:
        card = reader.connect(protocol="T=1")
        card.transmit(SELECT)
        wait_until(lambda: sum(r.direction == "int<-" for r in played) >= 2)
        card = reader.connect(protocol="T=1")
        card.transmit(ECHO)
        wait_until(lambda: sum(r.direction == "int<-" for r in played) >= len(recorded))
    assert [r.data for r in played if r.direction == "int<-"] == recorded


# --- ccid trace -------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# Seeded, not os.urandom: random bytes that happen to start with "{" read as a malformed
# JSON-lines trace, which test_ccid_trace_on_a_malformed_trace_names_the_line covers.
@pytest.mark.parametrize("content", [b"\x8f" + random.Random(7).randbytes(4095),
                                     b"hello\nworld\n", b"",
                                     b"\x00" * 100, "na\u00efve\n".encode()])
def test_ccid_trace_on_something_else_says_so(tmp_path: Path, content: bytes,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "trace", str(path))
    assert code != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nothing in this file is a CCID trace" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text", ['{"t": 1, "dir": "->", "slot": Infinity, "hex": "65"}\n',
                                  "00000000 2024-05-01T12:00:00.000000 [R] meta {x\n"])
def test_ccid_trace_on_a_malformed_trace_names_the_line(tmp_path: Path, text: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    code, out, err = run_cli(capsys, "trace", str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "trace line 1" in err
    code, _, err = run_cli(capsys, "trace", str(path), "--replay")
    assert code == 1 and "trace line 1" in err


def _check_call(c: object) -> None:
    assert isinstance(c, dict) and set(c) == {"name", "count", "total", "percent", "min",
                                              "max"}
    assert isinstance(c["name"], str) and isinstance(c["count"], int) and c["count"] > 0
    for key in ("total", "percent", "min", "max"):
        assert isinstance(c[key], float) and c[key] >= 0
    assert c["min"] <= c["max"] <= c["total"] + 1e-12


@pytest.mark.timeout(60)
def test_ccid_trace_json_is_structured(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    path = tmp_path / "s.jsonl"
    record_session(path)
    with path.open("a") as f:  # a command left unanswered: one error
        f.write(json.dumps({"t": time.time(), "m": 1e9, "reader": "R", "dir": "->", "slot": 0,
                            "hex": "6B 00 00 00 00 00 42 00 00 00"}) + "\n")
    code, out, _ = run_cli(capsys, "trace", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"file", "total_time", "frames", "calls", "api", "errors",
                         "interrupts"}
    assert data["file"] == str(path)
    assert isinstance(data["total_time"], float) and isinstance(data["frames"], int)
    for c in data["calls"] + data["api"]:
        _check_call(c)
    assert "XfrBlock A4 SELECT" in {c["name"] for c in data["calls"]}
    assert "Card.transmit" in {c["name"] for c in data["api"]}
    (error,) = data["errors"]
    assert set(error) == {"time", "reader", "slot", "command", "bStatus", "bError", "text"}
    assert error["command"] == "Escape" and error["slot"] == 0 and error["bError"] is None
    for item in data["interrupts"]:
        assert set(item) == {"name", "count"} and isinstance(item["count"], int)
    assert [i["name"] for i in data["interrupts"]] == ["NotifySlotChange"]


@pytest.mark.timeout(60)
def test_ccid_trace_replay_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    path = tmp_path / "s.jsonl"
    record_session(path)
    code, out, _ = run_cli(capsys, "trace", str(path), "--replay", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["commands"] > 0 and data["mismatched"] == 0


def test_replay_no_longer_in_the_library() -> None:
    with pytest.raises(AttributeError, match=r"ccid\.testing\.replay"):
        trace.replay  # noqa: B018
    assert issubclass(TraceReplayError, CCIDError)
