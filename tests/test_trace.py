"""The wire trace: pcscd-style lines, JSON lines, PIN masking, summary, replay script.

The end-to-end part (a traced session on a virtual reader, replayed into another one)
lives at the bottom and needs ccid.reader / ccid.testing.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CT700_LOG
from hypothesis import given
from hypothesis import strategies as st

from ccid import trace
from ccid.errors import CCIDError, UsageError
from ccid.framing import build_frame, build_t1_block

PIN = bytes.fromhex("313233343536FFFF")  # "123456" padded, as a VERIFY would carry it
VERIFY = bytes.fromhex("00200081") + bytes((len(PIN),)) + PIN
SELECT = bytes.fromhex("00A4040006A00000001801")


def xfr(seq: int, payload: bytes, slot: int = 0, level: int = 0) -> bytes:
    return build_frame(0x6F, slot, seq, 0, level & 0xFF, level >> 8, payload)


def datablock(seq: int, payload: bytes, status: int = 0, error: int = 0, slot: int = 0) -> bytes:
    return build_frame(0x80, slot, seq, status, error, 0, payload)


@pytest.fixture(autouse=True)
def _tracing_off() -> object:
    trace.disable()
    yield None
    trace.disable()


def traced(records: list[tuple[str, bytes]], mask_pins: bool = True, fmt: str = "text",
           reader: str = "Gemalto PC Twin 00 00") -> str:
    out = io.StringIO()
    trace.enable(out, mask_pins=mask_pins, fmt=fmt)  # type: ignore[arg-type]
    for direction, data in records:
        trace.record(reader, direction, data)
    trace.disable()
    return out.getvalue()


# --- format ---------------------------------------------------------------------------

LINE = re.compile(
    r"^(\d{8}) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) \[([^\]]+)\] (->|<-) ([0-9A-F]{6}) (.*)$"
)


def test_text_lines_are_pcscd_lines() -> None:
    text = traced([("->", bytes.fromhex("65000000000000000000")),
                   ("<-", bytes.fromhex("81000000000000020000"))])
    lines = text.splitlines()
    assert len(lines) == 2
    first, second = (LINE.match(line) for line in lines)
    assert first and second
    assert first[1] == "00000000"  # elapsed µs since the previous line, none before
    assert first[3] == "Gemalto PC Twin 00 00"
    # the part users paste, exactly as libccid prints it
    assert lines[0].endswith("-> 000000 65 00 00 00 00 00 00 00 00 00")
    assert lines[1].endswith("<- 000000 81 00 00 00 00 00 00 02 00 00")


def test_index_is_the_slot() -> None:
    text = traced([("->", build_frame(0x65, 1, 4))])
    assert "-> 000001 65 00 00 00 00 01 04 00 00 00" in text


def test_off_by_default_and_disable_stops() -> None:
    assert trace.enabled is False
    out = io.StringIO()
    trace.enable(out)
    assert trace.enabled is True
    trace.disable()
    trace.record("R", "->", bytes(10))  # recording while off writes nowhere
    assert out.getvalue() == ""
    assert trace.enabled is False


def test_environment_variable_enables_at_import(tmp_path: Path) -> None:
    path = tmp_path / "wire.txt"
    code = ("import ccid.trace as t; assert t.enabled; "
            "t.record('R', '->', bytes.fromhex('65000000000000000000'))")
    env = {"CCID_TRACE": str(path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert path.read_text().rstrip().endswith("-> 000000 65 00 00 00 00 00 00 00 00 00")
    env.pop("CCID_TRACE")
    code_off = "import ccid.trace as t; assert not t.enabled"
    subprocess.run([sys.executable, "-c", code_off], check=True, env=env, timeout=60)


def test_jsonl_round_trip() -> None:
    frames = [("->", xfr(1, SELECT)), ("<-", datablock(1, b"\x90\x00")),
              ("int<-", b"\x50\x03"), ("ctrl->", bytes.fromhex("A103000001000001")),
              ("ctrl<-", bytes.fromhex("80250000"))]
    text = traced(frames, fmt="jsonl")
    objects = [json.loads(line) for line in text.splitlines()]
    assert [o["dir"] for o in objects] == [d for d, _ in frames]
    records = trace.loads(text)
    assert [r.data for r in records] == [f for _, f in frames]
    assert records[0].slot == 0 and records[0].reader == "Gemalto PC Twin 00 00"


def test_text_round_trip() -> None:
    frames = [("->", xfr(1, SELECT)), ("<-", datablock(1, b"\x90\x00"))]
    records = trace.loads(traced(frames))
    assert [(r.direction, r.data) for r in records] == frames


def test_bad_direction_and_bad_target() -> None:
    with pytest.raises(UsageError):
        trace.record("R", "<>", b"")
    with pytest.raises(UsageError):
        trace.enable(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        trace.loads('{"dir": "sideways"}\n')


# --- PIN masking ----------------------------------------------------------------------


def masked_tokens(line: str) -> list[str]:
    return line.split(" -> ")[1].split()[1:]


def test_verify_masked_at_apdu_level() -> None:
    text = traced([("->", xfr(1, VERIFY))])
    tokens = masked_tokens(text)
    assert tokens[10:15] == ["00", "20", "00", "81", "08"]  # header stays readable
    assert tokens[15:] == ["**"] * len(PIN)
    assert "31 32 33" not in text


def test_unmasked_on_request() -> None:
    text = traced([("->", xfr(1, VERIFY))], mask_pins=False)
    assert "**" not in text
    assert "31 32 33 34 35 36 FF FF" in text


@pytest.mark.parametrize("ins", [0x20, 0x24, 0x2C])
def test_all_pin_instructions(ins: int) -> None:
    apdu = bytes((0x00, ins, 0x00, 0x81, 16)) + b"0123456789abcdef"
    tokens = masked_tokens(traced([("->", xfr(1, apdu))]))
    assert tokens[15:] == ["**"] * 16


def test_other_commands_untouched() -> None:
    apdu = bytes.fromhex("00D6000008") + PIN  # UPDATE BINARY with the same bytes
    assert "**" not in traced([("->", xfr(1, apdu))])


def test_extended_verify_masked() -> None:
    apdu = bytes.fromhex("0020008100000A") + b"0123456789"
    tokens = masked_tokens(traced([("->", xfr(1, apdu))]))
    assert tokens[10:17] == ["00", "20", "00", "81", "00", "00", "0A"]
    assert tokens[17:] == ["**"] * 10


def test_t1_tpdu_verify_masked_with_its_edc() -> None:
    for crc in (False, True):
        block = build_t1_block(0x00, 0x00, VERIFY, crc)
        tokens = masked_tokens(traced([("->", xfr(1, block))]))
        assert tokens[10:13] == ["00", "00", f"{len(VERIFY):02X}"]  # NAD PCB LEN
        assert tokens[13:18] == ["00", "20", "00", "81", "08"]
        assert tokens[18:] == ["**"] * (len(PIN) + (2 if crc else 1))


def test_t1_chained_verify_masks_every_block() -> None:
    apdu = bytes.fromhex("002400810C") + b"oldPINnewPIN"
    first = build_t1_block(0, 0x20, apdu[:8], False)  # M bit set: more to come
    second = build_t1_block(0, 0x40, apdu[8:], False)  # N(S)=1, last
    text = traced([("->", xfr(1, first)), ("<-", datablock(1, build_t1_block(0, 0x90, b"",
                                                                              False))),
                   ("->", xfr(2, second))])
    lines = [ln for ln in text.splitlines() if " -> " in ln]
    assert masked_tokens(lines[0])[18:] == ["**"] * 4
    assert masked_tokens(lines[1])[13:] == ["**"] * (len(apdu) - 8 + 1)
    assert "PIN" not in text and "old" not in text


def test_extended_level_chained_verify() -> None:
    apdu = bytes.fromhex("0020008100001C") + bytes(range(0x41, 0x41 + 28))
    parts = [(1, apdu[:16]), (3, apdu[16:26]), (2, apdu[26:])]
    text = traced([("->", xfr(i + 1, part, level=level)) for i, (level, part) in
                   enumerate(parts)])
    lines = text.splitlines()
    assert masked_tokens(lines[0])[17:] == ["**"] * 9
    assert masked_tokens(lines[1])[10:] == ["**"] * 10
    assert masked_tokens(lines[2])[10:] == ["**"] * 9
    # the next, unrelated chain is not masked
    text2 = traced([("->", xfr(9, SELECT))])
    assert "**" not in text2


def test_secure_pin_structure_masked() -> None:
    structure = bytes.fromhex("001E0289470400") + VERIFY  # bPINOperation 0 + structure
    tokens = masked_tokens(traced([("->", build_frame(0x69, 0, 1, payload=structure))]))
    assert tokens[10] == "00"  # bPINOperation: verification
    assert tokens[11:] == ["**"] * (len(structure) - 1)


def test_replies_never_masked() -> None:
    text = traced([("<-", datablock(1, PIN + b"\x90\x00"))])
    assert "**" not in text


def test_capture_collects_masked_records() -> None:
    with trace.capture() as records:
        trace.record("R", "->", xfr(1, VERIFY))
    assert trace.enabled is False
    assert len(records) == 1
    assert PIN not in records[0].data  # the PIN is never kept, not only hidden in print
    assert records[0].masked == ((15, 15 + len(PIN)),)
    with trace.capture(mask_pins=False) as raw:
        trace.record("R", "->", xfr(1, VERIFY))
    assert PIN in raw[0].data


@given(st.binary(max_size=300))
def test_masking_and_naming_never_crash(payload: bytes) -> None:
    for frame in (payload, xfr(1, payload), build_frame(0x69, 0, 1, payload=payload)):
        spans = trace.mask_spans(frame)
        for start, end in spans:
            assert 0 <= start < end <= len(frame)
        assert isinstance(trace.call_name(frame), str)


@given(st.text(max_size=400))
def test_loads_any_text(text: str) -> None:
    try:
        records = trace.loads(text)
    except CCIDError:
        return
    assert all(r.direction in trace.DIRECTIONS or r.direction in ("api", "meta")
               for r in records)


# --- summary --------------------------------------------------------------------------


def record_at(mono: float, direction: str, data: bytes, reader: str = "R") -> trace.TraceRecord:
    return trace.TraceRecord(1_700_000_000 + mono, mono, reader, direction, data,
                             data[5] if len(data) >= 10 else None)


def test_summary_sorted_by_total_time_with_percentages() -> None:
    records = [
        record_at(0.000, "->", build_frame(0x65, 0, 0)),
        record_at(0.001, "<-", build_frame(0x81, 0, 0, 0x00)),
        record_at(0.002, "->", xfr(1, SELECT)),
        record_at(0.012, "<-", datablock(1, b"\x90\x00")),
        record_at(0.013, "->", xfr(2, bytes.fromhex("80340E0E0E"))),
        record_at(0.015, "<-", datablock(2, bytes(14) + b"\x90\x00")),
        record_at(0.016, "->", xfr(3, bytes.fromhex("80340E0E0E"))),
        record_at(0.020, "<-", datablock(3, bytes(14) + b"\x90\x00")),
    ]
    summary = trace.summarize(records)
    assert [c.name for c in summary.calls] == ["XfrBlock A4 SELECT", "XfrBlock 34",
                                               "GetSlotStatus"]
    select, cmd, status = summary.calls
    assert cmd.count == 2
    assert cmd.total == pytest.approx(0.006)
    assert select.total == pytest.approx(0.010)
    assert summary.total_time == pytest.approx(0.020)
    assert select.percent == pytest.approx(50.0)
    assert status.percent == pytest.approx(5.0)
    text = str(summary)
    assert text.splitlines()[0] == "Results sorted by total execution time"
    assert "total time: 0.020000 sec" in text
    assert "0.010000 sec (  1 calls) 50.00% XfrBlock A4 SELECT" in text
    assert summary.errors == ()


def test_summary_time_extensions_and_errors() -> None:
    records = [
        record_at(0.0, "->", xfr(5, SELECT)),
        record_at(0.1, "<-", datablock(5, b"", status=0x80, error=2)),  # time extension
        record_at(0.3, "<-", datablock(5, b"\x90\x00")),
        record_at(0.4, "->", build_frame(0x62, 0, 6)),
        record_at(0.5, "<-", datablock(6, b"", status=0x42, error=0xFE)),  # no card
        record_at(0.6, "->", build_frame(0x6B, 0, 7, payload=b"\x6a")),  # never answered
        record_at(0.7, "int<-", b"\x50\x03"),
    ]
    summary = trace.summarize(records)
    by_name = {c.name: c for c in summary.calls}
    assert by_name["XfrBlock A4 SELECT"].total == pytest.approx(0.3)  # waits included
    assert by_name["XfrBlock A4 SELECT"].count == 1
    assert [e.command for e in summary.errors] == ["IccPowerOn", "Escape"]
    mute = summary.errors[0]
    assert (mute.bStatus, mute.bError) == (0x42, 0xFE)
    assert "mute" in mute.text
    assert "no reply" in summary.errors[1].text
    assert summary.interrupts == (("NotifySlotChange", 1),)
    assert "bError 0xFE" in str(summary)


def test_summary_of_masked_t1_trace_names_verify() -> None:
    block = build_t1_block(0, 0, VERIFY, False)
    text = traced([("->", xfr(1, block)),
                   ("<-", datablock(1, build_t1_block(0, 0, b"\x90\x00", False)))])
    (call,) = trace.summarize(trace.loads(text)).calls
    assert call.name == "XfrBlock 20 VERIFY"


def test_summary_reads_a_pcscd_log(tmp_path: Path) -> None:
    # lines as pcscd --debug prints them: µs since the previous line, then libccid's text
    log = tmp_path / "log.txt"
    log.write_text(
        "00000000 ccid_usb.c:1200:OpenUSBByName() Using USB bus/device: 1/4\n"
        "00001000 ccid_usb.c:866:WriteUSB() -> 000000 65 00 00 00 00 00 00 00 00 00\n"
        "00002000 ccid_usb.c:965:ReadUSB() <- 000000 81 00 00 00 00 00 00 02 00 00\n"
        "00000500 ifdhandler.c:1000:IFDHPowerICC() action: PowerUp\n"
        "00000500 ccid_usb.c:866:WriteUSB() -> 000000 62 00 00 00 00 00 01 00 00 00\n"
        "00004000 ccid_usb.c:965:ReadUSB() <- 000000 80 00 00 00 00 00 01 42 FE 00\n"
    )
    summary = trace.summarize(log)
    names = {c.name: c for c in summary.calls}
    assert names["GetSlotStatus"].total == pytest.approx(0.002)
    assert names["IccPowerOn"].total == pytest.approx(0.004)
    assert summary.errors[0].bError == 0xFE
    assert summary.total_time == pytest.approx(0.007)


def test_summary_reads_the_seed_log_lines() -> None:
    # The El Capitan CT700 driver log: no delta column, frames after a prefix.
    summary = trace.summarize(CT700_LOG)
    names = {c.name: c for c in summary.calls}
    assert names["GetSlotStatus"].count == 2
    assert names["GetSlotStatus"].total == pytest.approx(0.004, abs=1e-6)  # 2 ms each
    assert [e.command for e in summary.errors] == ["Escape", "Escape"]  # never answered
    assert summary.errors[0].time < summary.errors[1].time


def test_span_records_api_calls() -> None:
    assert trace.span("R", "Card.transmit") is trace.span("R", "x")  # shared no-op when off
    with trace.capture() as records, trace.span("R", "Card.transmit"):
        trace.record("R", "->", xfr(1, SELECT))
        trace.record("R", "<-", datablock(1, b"\x90\x00"))
    summary = trace.summarize(records)
    assert [c.name for c in summary.api] == ["Card.transmit"]
    assert records[-1].duration is not None and records[-1].duration >= 0


# --- replay script --------------------------------------------------------------------


def test_replay_script_answers_in_order_and_rewrites_seq() -> None:
    records = [
        record_at(0.0, "->", xfr(1, bytes.fromhex("0084000008"))),
        record_at(0.1, "<-", datablock(1, b"AAAAAAAA\x90\x00")),
        record_at(0.2, "->", xfr(2, bytes.fromhex("0084000008"))),
        record_at(0.3, "<-", datablock(2, b"BBBBBBBB\x90\x00")),
    ]
    script = trace.ReplayScript(records)
    first = script.answer(xfr(40, bytes.fromhex("0084000008")))
    second = script.answer(xfr(41, bytes.fromhex("0084000008")))
    assert first == [datablock(40, b"AAAAAAAA\x90\x00")]
    assert second == [datablock(41, b"BBBBBBBB\x90\x00")]
    unknown = script.answer(xfr(42, SELECT))
    assert unknown[0][0] == 0x81 and unknown[0][7] >> 6 == 1  # failed SlotStatus
    assert script.unmatched == [xfr(42, SELECT)]


def test_replay_script_masked_bytes_are_wildcards() -> None:
    text = traced([("->", xfr(1, VERIFY)), ("<-", datablock(1, b"\x90\x00"))])
    script = trace.ReplayScript(trace.loads(text))
    other_pin = bytes.fromhex("00200081") + bytes((8,)) + b"99999999"
    assert script.answer(xfr(7, other_pin)) == [datablock(7, b"\x90\x00")]


def test_replay_script_keeps_time_extensions() -> None:
    records = [record_at(0.0, "->", xfr(1, SELECT)),
               record_at(0.1, "<-", datablock(1, b"", status=0x80, error=1)),
               record_at(0.2, "<-", datablock(1, b"\x90\x00"))]
    replies = trace.ReplayScript(records).answer(xfr(3, SELECT))
    assert replies == [datablock(3, b"", status=0x80, error=1), datablock(3, b"\x90\x00")]


def test_replay_script_needs_commands() -> None:
    with pytest.raises(UsageError):
        trace.ReplayScript([])


# --- end to end: a traced session on a virtual reader, replayed ---------------------------

SESSION = [bytes.fromhex(h) for h in (
    "00A4040006A0000000 18FF",  # SELECT the test applet
    "8034000E0E",  # its command: 00..0D
    "8010000005" + "48656C6C6F",  # ECHO
    "0084000008",  # GET CHALLENGE: random, replay must give the recorded bytes
    "0084000008",
    "00A4040005F0F0F0F0F0",  # SELECT of an absent applet: an error status
)]


def run_session(backend: object, protocol: str | None = None) -> tuple[bytes, list[bytes]]:
    import ccid

    with ccid.open_reader(backend=backend, quirks=False) as reader:
        card = reader.connect(protocol=protocol)
        atr = bytes(card.atr)
        return atr, [card.transmit(apdu) for apdu in SESSION]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,protocol", [("gemalto-pc-twin", "T=0"),
                                           ("gemalto-pc-twin", "T=1"),
                                           ("extended-apdu", None),
                                           ("no-interrupt", None)])
def test_session_traced_summarised_and_replayed(tmp_path: Path, name: str,
                                                protocol: str | None) -> None:
    from ccid.testing import preset
    from ccid.testing.replay import replay

    path = tmp_path / "session.jsonl"
    trace.enable(path)
    atr, answers = run_session(preset(name), protocol)
    trace.disable()
    records = trace.load(path)
    assert records[0].direction == "meta" and records[0].info
    assert records[0].info["ccid_descriptor"]

    # printed as pcscd lines
    text = "\n".join(trace.format_record(r) for r in records if r.direction in ("->", "<-"))
    assert re.search(r"\] -> 000000 62 00 00 00 00 00 \w\w ", text)  # IccPowerOn
    assert re.search(r"\] <- 000000 80 ", text)

    # summarised: every command answered, the SELECTs and the challenge counted
    summary = trace.summarize(path)
    assert summary.errors == ()
    names = {c.name: c.count for c in summary.calls}
    assert names["IccPowerOn"] == 1
    assert names["XfrBlock 84 GET CHALLENGE"] == 2  # at T=1 too: INS read in the I-block
    assert sum(c.count for c in summary.calls if "A4 SELECT" in c.name) >= 2
    assert "Card.transmit" in {c.name for c in summary.api}
    assert str(summary).startswith("Results sorted by total execution time")

    # replayed into a virtual reader: the same answers, random ones included
    backend = replay(path)
    replay_atr, replay_answers = run_session(backend, protocol)
    assert replay_atr == atr
    assert replay_answers == answers
    script = backend.readers[0].replay
    assert script.unmatched == []
    # a program that departs from the recorded path is told so, not answered by chance
    backend2 = replay(path)
    import ccid

    with ccid.open_reader(backend=backend2, quirks=False) as reader:
        card = reader.connect(protocol=protocol)
        with pytest.raises(CCIDError):
            card.transmit(bytes.fromhex("80CA9F7F00"))
    assert backend2.readers[0].replay.unmatched


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["T=0", "T=1"])
def test_pin_masked_on_the_wire_by_default(tmp_path: Path, protocol: str) -> None:
    import ccid
    from ccid.testing import preset

    verify = bytes.fromhex("0020008108") + b"\x39\x38\x37\x36\x35\x34\xff\xff"
    for mask, name in ((True, "masked.txt"), (False, "clear.txt")):
        path = tmp_path / name
        trace.enable(path, mask_pins=mask)
        with ccid.open_reader(backend=preset("gemalto-pc-twin"), quirks=False) as reader:
            card = reader.connect(protocol=protocol)
            card.transmit(verify)
        trace.disable()
        text = path.read_text()
        verify_lines = [ln for ln in text.splitlines() if " 00 20 00 81 08 " in ln]
        assert verify_lines, text
        if mask:
            assert "39 38 37 36 35 34" not in text
            assert all("** ** ** ** ** ** ** **" in ln for ln in verify_lines)
        else:
            assert "39 38 37 36 35 34 FF FF" in verify_lines[0]
            assert "**" not in text


@pytest.mark.timeout(60)
def test_ccid_trace_variable_traces_a_whole_program(tmp_path: Path) -> None:
    path = tmp_path / "wire.log"
    code = (
        "import ccid\n"
        "from ccid.testing import preset\n"
        "with ccid.open_reader(backend=preset('gemalto-pc-twin'), quirks=False) as r:\n"
        "    r.connect().transmit(bytes.fromhex('8010000002CAFE'))\n"
    )
    env = {"CCID_TRACE": str(path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    lines = path.read_text().splitlines()
    assert any(" -> 000000 65 " in ln for ln in lines)  # GetSlotStatus at open
    assert any(ln.endswith("CA FE") for ln in lines)  # the ECHO command's data
    assert any(ln.endswith("CA FE 90 00") for ln in lines)
    assert all(LINE.match(ln) or " meta " in ln or " api " in ln or " ctrl" in ln
               or " int<- " in ln for ln in lines)
