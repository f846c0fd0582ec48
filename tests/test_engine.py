"""The sans-IO CCID engine, with plain byte strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid.constants import LevelParameter, MessageType, PowerSelect
from ccid.engine import (
    ChainedResponse,
    Discarded,
    Engine,
    FrameAssembler,
    Reply,
    TimeExtension,
    describe_offset,
)
from ccid.errors import (
    CardMuteError,
    CCIDError,
    NoCardError,
    ProtocolError,
    SlotBusyError,
    SlotError,
    UsageError,
)

M = MessageType


def reply_frame(msg_type: int, slot: int, seq: int, status: int = 0, error: int = 0,
                specific: int = 0, data: bytes = b"") -> bytes:
    n = len(data)
    return bytes([msg_type, *n.to_bytes(4, "little"), slot, seq, status, error, specific]) + data


# --- building --------------------------------------------------------------------------


def test_sequence_is_shared_by_all_slots_and_wraps() -> None:
    eng = Engine(slot_count=3)
    seqs = [eng.get_slot_status(i % 3).seq for i in range(300)]
    assert seqs[:4] == [0, 1, 2, 3]
    assert seqs[256] == 0 and seqs[299] == 43


@pytest.mark.parametrize(
    ("pending_of", "header"),
    [
        (lambda e: e.power_on(1, PowerSelect.V3_0), [0x62, 0, 0, 0, 0, 1, 0, 2, 0, 0]),
        (lambda e: e.power_off(0), [0x63, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (lambda e: e.get_slot_status(1), [0x65, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        (lambda e: e.get_parameters(0), [0x6C, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (lambda e: e.reset_parameters(0), [0x6D, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (lambda e: e.icc_clock(0, True), [0x6E, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
        (lambda e: e.t0_apdu(0, 3, 0xA0, 0xB0), [0x6A, 0, 0, 0, 0, 0, 0, 3, 0xA0, 0xB0]),
        (lambda e: e.mechanical(0, 2), [0x71, 0, 0, 0, 0, 0, 0, 2, 0, 0]),
        (lambda e: e.abort(1, seq=0x42), [0x72, 0, 0, 0, 0, 1, 0x42, 0, 0, 0]),
    ],
)
def test_header_only_commands(pending_of, header) -> None:  # type: ignore[no-untyped-def]
    pending = pending_of(Engine(slot_count=2))
    assert pending.frame == bytes(header)
    assert pending.expect_type in (M.RDR_to_PC_DataBlock, M.RDR_to_PC_SlotStatus,
                                   M.RDR_to_PC_Parameters)


def test_commands_with_payload() -> None:
    eng = Engine()
    p = eng.xfr_block(0, b"\x00\xa4\x04\x00", bwi=3, level=LevelParameter.CONTINUE_RESPONSE)
    assert p.frame == bytes([0x6F, 4, 0, 0, 0, 0, 0, 3, 0x10, 0x00]) + b"\x00\xa4\x04\x00"
    p = eng.set_parameters(0, 1, bytes(7))
    assert p.frame[:10] == bytes([0x61, 7, 0, 0, 0, 0, 1, 1, 0, 0])
    assert p.expect_type == M.RDR_to_PC_Parameters
    p = eng.escape(0, b"\x6a")
    assert p.frame[0] == 0x6B and p.expect_type == M.RDR_to_PC_Escape
    p = eng.set_data_rate_and_clock(0, 4_000_000, 10752)
    assert p.frame[10:] == (4_000_000).to_bytes(4, "little") + (10752).to_bytes(4, "little")
    p = eng.secure(0, b"\x00" * 5, bwi=0, level=0x0201)
    assert p.frame[7:10] == bytes([0, 0x01, 0x02])


def test_bad_slot_and_oversized_command_are_usage_errors() -> None:
    eng = Engine(slot_count=2, max_message_length=271)
    with pytest.raises(UsageError, match="slot 2"):
        eng.get_slot_status(2)
    with pytest.raises(UsageError, match="dwMaxCCIDMessageLength 271"):
        eng.xfr_block(0, bytes(262))
    eng.xfr_block(0, bytes(261))  # exactly fits
    with pytest.raises(UsageError):
        eng.build(0x80, 0)  # a reply type is not a command


# --- receiving -------------------------------------------------------------------------


def test_matching_reply_is_decoded() -> None:
    eng = Engine()
    p = eng.power_on(0)
    r = eng.receive(reply_frame(0x80, 0, p.seq, data=b"\x3b\x00"), p)
    assert isinstance(r, Reply)
    assert r.ok and r.card_present and r.data == b"\x3b\x00"
    assert eng.raise_for_status(r) is r


def test_stale_frames_are_discarded_then_bounded() -> None:
    eng = Engine(max_stale=3)
    for _ in range(5):
        eng.get_slot_status(0)
    p = eng.get_slot_status(0)
    for old in range(3):
        ev = eng.receive(reply_frame(0x81, 0, old), p)
        assert isinstance(ev, Discarded) and ev.seq == old
    with pytest.raises(ProtocolError, match="stale"):
        eng.receive(reply_frame(0x81, 0, 3), p)


@pytest.mark.parametrize(
    ("frame_of", "match"),
    [
        (lambda s: reply_frame(0x80, 0, s), "wrong message type"),
        (lambda s: reply_frame(0x81, 1, s), "another slot"),
        (lambda s: reply_frame(0x81, 0, s)[:9], "shorter than the 10-byte header"),
        (lambda s: reply_frame(0x81, 0, s, data=b"12")[:-1], "shorter than its dwLength"),
        (lambda s: reply_frame(0x81, 0, s) + b"x", "longer than its dwLength"),
    ],
)
def test_mismatched_reply_is_a_protocol_error(frame_of, match) -> None:  # type: ignore[no-untyped-def]
    eng = Engine(slot_count=2, reader_name="R")
    p = eng.get_slot_status(0)
    with pytest.raises(ProtocolError, match=match) as info:
        eng.receive(frame_of(p.seq), p)
    assert info.value.reader == "R" and info.value.slot == 0


def test_too_long_reply_is_a_protocol_error() -> None:
    eng = Engine(max_message_length=20)
    p = eng.xfr_block(0, b"")
    with pytest.raises(ProtocolError, match="dwMaxCCIDMessageLength"):
        eng.receive(reply_frame(0x80, 0, p.seq, data=bytes(11)), p)


def test_time_extension_carries_the_multiplier() -> None:
    eng = Engine()
    p = eng.xfr_block(0, b"\x00")
    ev = eng.receive(reply_frame(0x80, 0, p.seq, status=0x80, error=5), p)
    assert ev == TimeExtension(5, 0, p.seq)
    assert p.extensions == 1
    ev = eng.receive(reply_frame(0x80, 0, p.seq, data=b"\x90\x00"), p)
    assert isinstance(ev, Reply) and ev.data == b"\x90\x00"


@pytest.mark.parametrize(
    ("status", "error", "exc", "text"),
    [
        (0x42, 0xFE, NoCardError, "no card"),
        (0x41, 0xFE, CardMuteError, "card mute"),
        (0x40, 0xFE, CardMuteError, "does not answer"),
        (0x40, 0xE0, SlotBusyError, "slot busy"),
        (0x40, 0xF6, SlotError, "protocol not supported"),
        (0x40, 0x00, SlotError, "command not supported"),
        (0x40, 0x07, SlotError, "offset 7 of the command \\(bPowerSelect\\)"),
        (0x40, 0x0B, SlotError, r"abData\[1\]"),
        (0x40, 0x90, SlotError, "vendor-defined"),
    ],
)
def test_failed_reply_maps_to_a_specific_error(status: int, error: int,
                                               exc: type[CCIDError], text: str) -> None:
    eng = Engine(reader_name="R")
    p = eng.power_on(0)
    r = eng.receive(reply_frame(0x80, 0, p.seq, status=status, error=error), p)
    assert isinstance(r, Reply) and not r.ok
    with pytest.raises(exc, match=text) as info:
        eng.raise_for_status(r, p)
    assert type(info.value) is exc
    if isinstance(info.value, SlotError):
        assert info.value.bError == error and info.value.bStatus == status


def test_reader_commands_fail_as_slot_errors_even_without_card() -> None:
    eng = Engine()
    p = eng.escape(0, b"\x6a")
    r = eng.receive(reply_frame(0x83, 0, p.seq, status=0x42, error=0x00), p)
    assert isinstance(r, Reply)
    with pytest.raises(SlotError, match="command not supported") as info:
        eng.raise_for_status(r, p)
    assert type(info.value) is SlotError


def test_describe_offset() -> None:
    assert describe_offset(M.PC_to_RDR_XfrBlock, 8) == "wLevelParameter"
    assert describe_offset(M.PC_to_RDR_SetParameters, 7) == "bProtocolNum"
    assert describe_offset(M.PC_to_RDR_SetParameters, 12) == "abData[2]"
    assert describe_offset(M.PC_to_RDR_GetSlotStatus, 5) == "bSlot"


@given(st.binary(max_size=40), st.integers(0, 255), st.integers(0, 3))
def test_receive_never_crashes(frame: bytes, seq: int, slot: int) -> None:
    eng = Engine(slot_count=4, max_message_length=30)
    p = eng.build(M.PC_to_RDR_XfrBlock, slot, seq=seq)
    try:
        ev = eng.receive(frame, p)
    except ProtocolError:
        return
    assert isinstance(ev, Reply | TimeExtension | Discarded)
    if isinstance(ev, Reply):
        assert ev.seq == seq and ev.slot == slot and len(ev.data) + 10 == len(frame)


# --- reassembly ------------------------------------------------------------------------


@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=40))
def test_reassembly_from_any_split(data: bytes, cuts: list[int]) -> None:
    frame = reply_frame(0x80, 0, 7, data=data)
    asm = FrameAssembler(max_length=1024)
    pos = 0
    out = None
    for cut in [*cuts, len(frame)]:
        chunk = frame[pos : pos + cut]
        pos += len(chunk)
        if not chunk:
            break
        out = asm.feed(chunk)
        if out is not None:
            break
    assert out == frame
    assert asm.pending_bytes == 0


def test_reassembly_errors() -> None:
    asm = FrameAssembler(max_length=64)
    with pytest.raises(ProtocolError, match="garbage"):
        asm.feed(reply_frame(0x80, 0, 0, data=b"ab")[:5])
        asm.feed(reply_frame(0x80, 0, 0, data=b"ab")[5:] + b"zz")
    assert asm.pending_bytes == 0
    with pytest.raises(ProtocolError, match="dwMaxCCIDMessageLength 64"):
        asm.feed(reply_frame(0x80, 0, 0, data=bytes(100)))
    assert asm.feed(reply_frame(0x80, 0, 0, data=b"ab")[:11]) is None
    with pytest.raises(ProtocolError, match="truncated"):
        asm.feed(b"")
    with pytest.raises(ProtocolError, match="empty bulk-IN"):
        asm.feed(b"")
    assert asm.feed(b"\x80\x00") is None  # a header split across reads is fine
    assert asm.feed(bytes(8)) == b"\x80" + bytes(9)


# --- chaining --------------------------------------------------------------------------


def test_chained_response() -> None:
    c = ChainedResponse()
    assert not c.add(0x01, b"ab")
    assert not c.add(0x03, b"cd")
    assert c.add(0x02, b"ef")
    assert c.result() == b"abcdef"
    c = ChainedResponse()
    assert c.add(0x00, b"xy") and c.result() == b"xy"
    for bad in ([0x02], [0x03], [0x01, 0x01], [0x01, 0x00], [0x10], [0x07]):
        c = ChainedResponse()
        with pytest.raises(ProtocolError):
            for chain in bad:
                c.add(chain, b"..")
    c = ChainedResponse(limit=10)
    c.add(0x01, bytes(6))
    with pytest.raises(ProtocolError, match="longer than 10"):
        c.add(0x03, bytes(6))


