"""ccid.messages: CT700 vectors, every message round-trip, spec offsets, fuzz, framing twin."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from construct import StreamError, TerminatedError
from hypothesis import given
from hypothesis import strategies as st

from ccid import _framing_py, framing
from ccid.constants import (
    REPLY_TYPE,
    ClassRequest,
    ClockStatus,
    CommandStatus,
    ICCStatus,
    MessageType,
    SlotErrorCode,
    describe_error,
)
from ccid.errors import ProtocolError, UsageError
from ccid.messages import (
    FRAME,
    HEADER,
    PIN_MODIFY,
    PIN_VERIFY,
    SPECS,
    T0_PARAMETERS,
    T0APDU,
    T1_PARAMETERS,
    Abort,
    DataBlock,
    DataRateAndClock,
    Escape,
    EscapeReply,
    GetParameters,
    GetSlotStatus,
    HardwareError,
    IccClock,
    IccPowerOff,
    IccPowerOn,
    Mechanical,
    NotifySlotChange,
    Parameters,
    PINModify,
    PINOperation,
    PINVerify,
    ResetParameters,
    Secure,
    SetDataRateAndClockFrequency,
    SetParameters,
    SlotChange,
    SlotStatus,
    T0Parameters,
    T1Parameters,
    XfrBlock,
    abort_request,
    build_message,
    decode_status,
    get_clock_frequencies_request,
    get_data_rates_request,
    message_class,
    parse_class_reply,
    parse_interrupt,
    parse_message,
)

M = MessageType


def _hex(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


# --- CT700 vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["get_slot_status_seq0", "get_slot_status_seq1"])
def test_ct700_get_slot_status(ct700_vectors: dict[str, Any], name: str) -> None:
    vector = ct700_vectors[name]
    raw = _hex(vector)
    msg = parse_message(raw)
    assert isinstance(msg, GetSlotStatus)
    assert msg.bSeq == vector["expect"]["bSeq"]
    assert msg.bSlot == vector["expect"].get("bSlot", 0)
    assert build_message("PC_to_RDR_GetSlotStatus", bSeq=msg.bSeq) == raw
    assert framing.build_frame(M.PC_to_RDR_GetSlotStatus, 0, msg.bSeq) == raw


@pytest.mark.parametrize("name", ["slot_status_seq0", "slot_status_seq1"])
def test_ct700_slot_status(ct700_vectors: dict[str, Any], name: str) -> None:
    vector = ct700_vectors[name]
    raw = _hex(vector)
    reply = parse_message(raw)
    assert isinstance(reply, SlotStatus)
    expect = vector["expect"]
    assert reply.bSeq == expect["bSeq"]
    assert reply.icc_status == expect["bmICCStatus"] == ICCStatus.ABSENT
    assert reply.command_status is CommandStatus.OK
    assert not reply.failed
    assert reply.bError == expect.get("bError", 0)
    assert reply.clock_status is ClockStatus.RUNNING
    assert reply.to_bytes() == raw
    assert framing.check_reply(raw, M.RDR_to_PC_SlotStatus, 0, expect["bSeq"]) is (
        framing.FrameStatus.OK)


def test_ct700_notify_slot_change(ct700_vectors: dict[str, Any]) -> None:
    vector = ct700_vectors["notify_slot_change"]
    event = parse_interrupt(_hex(vector), slot_count=1)
    assert isinstance(event, NotifySlotChange)
    slot0 = vector["expect"]["slot0"]
    assert event.slots == (SlotChange(present=slot0["card_present"], changed=slot0["changed"]),)
    assert event.to_bytes() == _hex(vector)


@pytest.mark.parametrize("name", ["escape_l10n_strings", "escape_get_firmware_features"])
def test_ct700_escapes(ct700_vectors: dict[str, Any], name: str) -> None:
    vector = ct700_vectors[name]
    raw = _hex(vector)
    msg = parse_message(raw)
    assert isinstance(msg, Escape)
    assert len(msg.abData) == vector["expect"]["dwLength"] == len(raw) - 10
    assert msg.bSeq == vector["expect"]["bSeq"]
    assert build_message(int(vector["expect"]["bMessageType"], 16), bSeq=msg.bSeq,
                         abData=msg.abData) == raw
    # Dropping or adding one byte breaks the dwLength agreement.
    for bad in (raw[:-1], raw + b"\x00"):
        with pytest.raises(ProtocolError, match="dwLength"):
            parse_message(bad)


def test_ct700_firmware_features_escape_payload(ct700_vectors: dict[str, Any]) -> None:
    msg = parse_message(_hex(ct700_vectors["escape_get_firmware_features"]))
    assert isinstance(msg, Escape) and msg.abData == b"\x6a"


def test_ct700_data_rates_reply(ct700_vectors: dict[str, Any]) -> None:
    vector = ct700_vectors["get_data_rates_response"]
    rates = parse_class_reply(ClassRequest.GET_DATA_RATES, _hex(vector), declared=0)
    assert list(rates) == vector["expect"]["rates_bps"]
    assert len(rates) == vector["expect"]["count"]


# --- strategies: every message with random fields ---------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
data = st.binary(max_size=300)


def _auto(cls: type[Any], **overrides: Any) -> st.SearchStrategy[Any]:
    """Random instance of a dataclass, by the spec's Hungarian prefixes."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif f.name == "bTeoPrologue":
            kwargs[f.name] = st.binary(min_size=3, max_size=3)
        elif f.name.startswith("ab"):
            kwargs[f.name] = data
        elif f.name.startswith("dw"):
            kwargs[f.name] = u32
        elif f.name.startswith("w"):
            kwargs[f.name] = u16
        else:
            kwargs[f.name] = u8
    return st.builds(cls, **kwargs)


t0_params = _auto(T0Parameters)
t1_params = _auto(T1Parameters)
pin_verify = _auto(PINVerify)


@st.composite
def pin_modify(draw: st.DrawFn) -> PINModify:
    number = draw(st.sampled_from([0, 1, 2, 3, 0xFF]) | u8)
    base: PINModify = draw(_auto(PINModify, bNumberMessage=st.just(number)))
    return dataclasses.replace(
        base,
        bMsgIndex2=draw(u8) if number != 0 else None,
        bMsgIndex3=draw(u8) if number >= 3 else None,
    )


pin_operation = st.one_of(
    st.builds(PINOperation, st.just(0), pin_verify),
    st.builds(PINOperation, st.just(1), pin_modify()),
    st.builds(PINOperation, st.integers(2, 255), data),
)


@st.composite
def secure(draw: st.DrawFn) -> Secure:
    level = draw(st.sampled_from([0, 1, 2, 3, 0x10]) | u16)
    body = draw(pin_operation) if level <= 1 else draw(data)
    msg: Secure = draw(_auto(Secure, wLevelParameter=st.just(level),
                             abPINOperationDataStructure=st.just(body)))
    return msg


@st.composite
def protocol(draw: st.DrawFn, optional: bool) -> tuple[int, Any]:
    number = draw(st.sampled_from([0, 1]) | u8)
    if optional and draw(st.booleans()):
        return number, None
    if number == 0:
        return number, draw(t0_params)
    if number == 1:
        return number, draw(t1_params)
    return number, draw(st.binary(min_size=1 if optional else 0, max_size=20))


def _with_protocol(cls: type[Any], optional: bool) -> st.SearchStrategy[Any]:
    return st.tuples(_auto(cls, abProtocolDataStructure=st.none()),
                     protocol(optional)).map(
        lambda pair: dataclasses.replace(
            pair[0], bProtocolNum=pair[1][0], abProtocolDataStructure=pair[1][1]))


STRATEGIES: dict[int, st.SearchStrategy[Any]] = {
    M.PC_to_RDR_IccPowerOn: _auto(IccPowerOn),
    M.PC_to_RDR_IccPowerOff: _auto(IccPowerOff),
    M.PC_to_RDR_GetSlotStatus: _auto(GetSlotStatus),
    M.PC_to_RDR_XfrBlock: _auto(XfrBlock),
    M.PC_to_RDR_GetParameters: _auto(GetParameters),
    M.PC_to_RDR_ResetParameters: _auto(ResetParameters),
    M.PC_to_RDR_SetParameters: _with_protocol(SetParameters, optional=False),
    M.PC_to_RDR_Escape: _auto(Escape),
    M.PC_to_RDR_IccClock: _auto(IccClock),
    M.PC_to_RDR_T0APDU: _auto(T0APDU),
    M.PC_to_RDR_Secure: secure(),
    M.PC_to_RDR_Mechanical: _auto(Mechanical),
    M.PC_to_RDR_Abort: _auto(Abort),
    M.PC_to_RDR_SetDataRateAndClockFrequency: _auto(SetDataRateAndClockFrequency),
    M.RDR_to_PC_DataBlock: _auto(DataBlock),
    M.RDR_to_PC_SlotStatus: _auto(SlotStatus),
    M.RDR_to_PC_Parameters: _with_protocol(Parameters, optional=True),
    M.RDR_to_PC_Escape: _auto(EscapeReply),
    M.RDR_to_PC_DataRateAndClockFrequency: _auto(DataRateAndClock),
}
BULK_TYPES = sorted(STRATEGIES)
any_message = st.one_of(*(STRATEGIES[t] for t in BULK_TYPES))
any_reply = st.one_of(*(STRATEGIES[t] for t in BULK_TYPES if t >= 0x80))


def test_every_bulk_message_has_a_spec_and_a_strategy() -> None:
    bulk = {t for t in MessageType if t not in (M.RDR_to_PC_NotifySlotChange,
                                                M.RDR_to_PC_HardwareError)}
    assert set(SPECS) == bulk == set(STRATEGIES)
    for t in bulk:
        assert message_class(t).message_type == t
        assert message_class(t.name) is message_class(t)


@given(any_message)
def test_round_trip_every_message(msg: Any) -> None:
    raw = msg.to_bytes()
    assert raw[0] == msg.message_type
    assert int.from_bytes(raw[1:5], "little") == len(raw) - 10
    assert raw[5] == msg.bSlot and raw[6] == msg.bSeq
    assert parse_message(raw) == msg
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    assert build_message(type(msg).__name__, **fields) == raw
    assert build_message(msg.message_type.name, **fields) == raw
    # The hot-path framing builds the same bytes from the header's three message bytes.
    assert framing.build_frame(msg.message_type, msg.bSlot, msg.bSeq, raw[7], raw[8], raw[9],
                               raw[10:]) == raw
    if isinstance(msg, XfrBlock):
        level = msg.wLevelParameter
        assert framing.build_frame(M.PC_to_RDR_XfrBlock, msg.bSlot, msg.bSeq, msg.bBWI,
                                   level & 0xFF, level >> 8, msg.abData) == raw


@pytest.mark.parametrize("msg_type", BULK_TYPES, ids=lambda t: M(t).name)
def test_defaults_build_and_parse(msg_type: int) -> None:
    cls = message_class(msg_type)
    fields: dict[str, Any] = {}
    if cls in (SetParameters,):
        fields["abProtocolDataStructure"] = T0Parameters()
    raw = build_message(msg_type, **fields)
    assert parse_message(raw) == cls(**fields)


# --- field positions from the CCID 1.1 tables -------------------------------------------


def _field_names(spec: Any) -> list[str]:
    return [sc.name for sc in spec.subcons if sc.name]


def test_t0_structure_names_and_offsets() -> None:
    names = ["bmFindexDindex", "bmTCCKST0", "bGuardTimeT0", "bWaitingIntegerT0", "bClockStop"]
    assert _field_names(T0_PARAMETERS) == names
    raw = build_message("SetParameters", bSlot=1, bSeq=9, bProtocolNum=0,
                        abProtocolDataStructure={n: i + 1 for i, n in enumerate(names)})
    assert raw == bytes.fromhex("61 05000000 01 09 00 0000 01 02 03 04 05")
    msg = parse_message(raw)
    assert isinstance(msg, SetParameters)
    assert isinstance(msg.abProtocolDataStructure, T0Parameters)
    assert msg.abProtocolDataStructure.inverse_convention


def test_t1_structure_names_and_offsets() -> None:
    names = ["bmFindexDindex", "bmTCCKST1", "bGuardTimeT1", "bmWaitingIntegersT1",
             "bClockStop", "bIFSC", "bNadValue"]
    assert _field_names(T1_PARAMETERS) == names
    values = dict(zip(names, (0x96, 0x11, 0xFF, 0x4D, 0x03, 0xFE, 0x00)))
    raw = build_message("SetParameters", bProtocolNum=1, abProtocolDataStructure=values)
    assert raw == bytes.fromhex("61 07000000 00 00 01 0000 96 11 FF 4D 03 FE 00")
    params = parse_message(raw).abProtocolDataStructure  # type: ignore[union-attr]
    assert isinstance(params, T1Parameters)
    assert params.crc and not params.inverse_convention
    assert (params.bwi, params.cwi) == (4, 13)


def test_parameters_reply_with_and_without_structure() -> None:
    t1 = parse_message(bytes.fromhex("82 07000000 00 04 00 00 01 11 10 00 4D 00 20 00"))
    assert isinstance(t1, Parameters) and t1.bProtocolNum == 1 and t1.bSeq == 4
    assert t1.abProtocolDataStructure == T1Parameters(0x11, 0x10, 0, 0x4D, 0, 0x20, 0)
    failed = parse_message(bytes.fromhex("82 00000000 00 05 40 07 00"))
    assert isinstance(failed, Parameters) and failed.abProtocolDataStructure is None
    assert failed.failed and failed.bError == 7


@pytest.mark.parametrize("raw", [
    "61 07000000 00 00 00 0000 11 00 00 0A 00 00 00",  # T=0 with a T=1-sized structure
    "61 05000000 00 00 01 0000 11 10 00 4D 00",  # T=1 with a T=0-sized structure
    "61 00000000 00 00 00 0000",  # no structure at all
    "82 03000000 00 00 00 00 01 11 10 00",
])
def test_protocol_structure_size_mismatch(raw: str) -> None:
    with pytest.raises(ProtocolError, match="abProtocolDataStructure"):
        parse_message(bytes.fromhex(raw))


def test_pin_verify_offsets() -> None:
    # pcsc-lite's documented example: bmFormatString 0x82, bmPINBlockString 0x04, 4..8
    # digits, validation key, one message, language 0x0904, VERIFY with an 8-byte block.
    apdu = bytes.fromhex("00 20 00 00 08 30 30 30 30 00 00 00 00")
    raw = build_message("Secure", bSeq=2, abPINOperationDataStructure={
        "bPINOperation": 0,
        "abPINDataStructure": {
            "bTimeOut": 0, "bmFormatString": 0x82, "bmPINBlockString": 0x04,
            "bmPINLengthFormat": 0x00, "wPINMaxExtraDigit": 0x0408,
            "bEntryValidationCondition": 0x02, "bNumberMessage": 0x01, "wLangId": 0x0904,
            "bMsgIndex": 0x00, "bTeoPrologue": b"\x00\x00\x00", "abPINApdu": apdu}})
    expected = bytes.fromhex(
        "69 1C000000 00 02 00 0000"  # header: bBWI 0, wLevelParameter 0
        "00"  # 10 bPINOperation
        "00 82 04 00"  # 11 bTimeOut, bmFormatString, bmPINBlockString, bmPINLengthFormat
        "08 04"  # 15 wPINMaxExtraDigit 0x0408, little-endian
        "02 01"  # 17 bEntryValidationCondition, 18 bNumberMessage
        "04 09"  # 19 wLangId 0x0904
        "00"  # 21 bMsgIndex
        "00 00 00"  # 22 bTeoPrologue
    ) + apdu  # 25 abPINApdu
    assert raw == expected
    msg = parse_message(raw)
    assert isinstance(msg, Secure)
    op = msg.abPINOperationDataStructure
    assert isinstance(op, PINOperation) and isinstance(op.abPINDataStructure, PINVerify)
    assert op.abPINDataStructure.wPINMaxExtraDigit == 0x0408
    assert op.abPINDataStructure.abPINApdu == apdu
    assert _field_names(PIN_VERIFY) == [
        "bTimeOut", "bmFormatString", "bmPINBlockString", "bmPINLengthFormat",
        "wPINMaxExtraDigit", "bEntryValidationCondition", "bNumberMessage", "wLangId",
        "bMsgIndex", "bTeoPrologue", "abPINApdu"]


@pytest.mark.parametrize(("number", "indexes"), [
    (0, [0x31]), (1, [0x31, 0x32]), (2, [0x31, 0x32]), (3, [0x31, 0x32, 0x33]),
    (0xFF, [0x31, 0x32, 0x33]),
])
def test_pin_modify_offsets(number: int, indexes: list[int]) -> None:
    # CCID 1.1 6.1.11.8: bMsgIndex1 at 24; bMsgIndex2 unless bNumberMessage is 0;
    # bMsgIndex3 for 3 messages; bTeoPrologue at 25, 26 or 27.
    apdu = bytes.fromhex("00 24 00 00 10")
    structure = PINModify(
        bTimeOut=0x1E, bmFormatString=0x82, bmPINBlockString=0x04, bmPINLengthFormat=0x05,
        bInsertionOffsetOld=0x06, bInsertionOffsetNew=0x07, wPINMaxExtraDigit=0x0408,
        bConfirmPIN=0x03, bEntryValidationCondition=0x02, bNumberMessage=number,
        wLangId=0x0409, bMsgIndex1=indexes[0],
        bMsgIndex2=indexes[1] if len(indexes) > 1 else None,
        bMsgIndex3=indexes[2] if len(indexes) > 2 else None,
        bTeoPrologue=b"\xa1\xa2\xa3", abPINApdu=apdu)
    raw = build_message("Secure", abPINOperationDataStructure=PINOperation(1, structure))
    assert raw[10] == 1  # bPINOperation
    assert raw[11:17] == bytes((0x1E, 0x82, 0x04, 0x05, 0x06, 0x07))
    assert raw[17:19] == b"\x08\x04"
    assert raw[19:22] == bytes((0x03, 0x02, number))
    assert raw[22:24] == b"\x09\x04"
    prologue = 24 + len(indexes)
    assert raw[24:prologue] == bytes(indexes)
    assert raw[prologue:prologue + 3] == b"\xa1\xa2\xa3"
    assert raw[prologue + 3:] == apdu
    assert int.from_bytes(raw[1:5], "little") == len(raw) - 10
    assert parse_message(raw).abPINOperationDataStructure == PINOperation(1, structure)  # type: ignore[union-attr]
    assert "bMsgIndex3" in _field_names(PIN_MODIFY)


def test_secure_other_operations_and_continuations() -> None:
    cancel = build_message("Secure", abPINOperationDataStructure=PINOperation(4, b""))
    assert cancel == bytes.fromhex("69 01000000 00 00 00 0000 04")
    part = build_message("Secure", wLevelParameter=2, abPINOperationDataStructure=b"\x01\x02")
    assert part == bytes.fromhex("69 02000000 00 00 00 0200 01 02")
    assert parse_message(part).abPINOperationDataStructure == b"\x01\x02"  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match="Secure"):
        parse_message(bytes.fromhex("69 05000000 00 00 00 0000 00 00 00 00 00"))  # short


@pytest.mark.parametrize(("name", "fields", "params"), [
    ("IccPowerOn", {"bPowerSelect": 2}, "02 0000"),
    ("IccClock", {"bClockCommand": 1}, "01 0000"),
    ("Mechanical", {"bFunction": 5}, "05 0000"),
    ("T0APDU", {"bmChanges": 3, "bClassGetResponse": 0xA0, "bClassEnvelope": 0xB0},
     "03 A0 B0"),
    ("XfrBlock", {"bBWI": 7, "wLevelParameter": 0x0010}, "07 1000"),
    ("SlotStatus", {"bStatus": 0x41, "bError": 0xFE, "bClockStatus": 2}, "41 FE 02"),
    ("DataBlock", {"bStatus": 0x80, "bError": 0x01, "bChainParameter": 3}, "80 01 03"),
    ("EscapeReply", {"bStatus": 0x40, "bError": 0x00}, "40 00 00"),
])
def test_message_specific_header_bytes(name: str, fields: dict[str, int], params: str) -> None:
    raw = build_message(name, bSlot=3, bSeq=0x7F, **fields)
    assert raw[5:7] == b"\x03\x7f"
    assert raw[7:10] == bytes.fromhex(params)


def test_data_rate_and_clock_messages() -> None:
    raw = build_message("SetDataRateAndClockFrequency", dwClockFrequency=4000,
                        dwDataRate=10753)
    assert raw == bytes.fromhex("73 08000000 00 00 000000 A00F0000 012A0000")
    reply = parse_message(bytes.fromhex("84 08000000 00 00 00 00 00 A00F0000 012A0000"))
    assert reply == DataRateAndClock(dwClockFrequency=4000, dwDataRate=10753)
    with pytest.raises(ProtocolError):
        parse_message(bytes.fromhex("84 04000000 00 00 00 00 00 A00F0000"))


# --- bStatus / bError -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "icc", "command"), [
    (0x00, ICCStatus.ACTIVE, CommandStatus.OK),
    (0x01, ICCStatus.INACTIVE, CommandStatus.OK),
    (0x02, ICCStatus.ABSENT, CommandStatus.OK),
    (0x40, ICCStatus.ACTIVE, CommandStatus.FAILED),
    (0x41, ICCStatus.INACTIVE, CommandStatus.FAILED),
    (0x42, ICCStatus.ABSENT, CommandStatus.FAILED),
    (0x80, ICCStatus.ACTIVE, CommandStatus.TIME_EXTENSION),
    (0x81, ICCStatus.INACTIVE, CommandStatus.TIME_EXTENSION),
])
def test_decode_status(status: int, icc: ICCStatus, command: CommandStatus) -> None:
    assert decode_status(status) == (icc, command)
    # bits 2-5 are RFU: ignored
    assert decode_status(status | 0x3C) == (icc, command)


@pytest.mark.parametrize("status", [0x03, 0x43, 0x83, 0xC0, 0xC1, 0xC2, 0xFF, 0x3F])
def test_decode_status_reserved(status: int) -> None:
    with pytest.raises(ProtocolError, match="reserved"):
        decode_status(status)


def test_decode_status_all_bytes() -> None:
    ok = 0
    for status in range(256):
        try:
            icc, command = decode_status(status)
        except ProtocolError:
            assert status & 0x03 == 3 or status >> 6 == 3
            continue
        ok += 1
        assert icc == status & 0x03 and command == status >> 6
    assert ok == 9 * 16  # 3 ICC states x 3 command states x 16 RFU patterns


@pytest.mark.parametrize("code", list(SlotErrorCode), ids=lambda c: c.name)
def test_every_named_error_has_its_own_text(code: SlotErrorCode) -> None:
    reply = parse_message(bytes((0x81, 0, 0, 0, 0, 0, 0, 0x41, code, 0)))
    assert isinstance(reply, SlotStatus) and reply.failed
    text = reply.error_text
    assert text == describe_error(code)
    assert text and "reserved" not in text and "offset" not in text
    others = {describe_error(c) for c in SlotErrorCode if c != code}
    assert text not in others


def test_error_texts_for_every_byte() -> None:
    for value in range(256):
        text = describe_error(value)
        assert isinstance(text, str) and text
        if 0x01 <= value <= 0x7F:
            assert str(value) in text  # names the offending parameter offset
    assert "mute" in describe_error(0xFE)
    assert "busy" in describe_error(0xE0)


# --- interrupt-IN -----------------------------------------------------------------------


def _pack(slots: list[tuple[bool, bool]]) -> bytes:
    value = 0
    for n, (present, changed) in enumerate(slots):
        value |= (present << (2 * n)) | (changed << (2 * n + 1))
    return bytes((0x50,)) + value.to_bytes(-(-len(slots) * 2 // 8), "little")


@pytest.mark.parametrize("count", range(1, 9))
def test_notify_slot_change_1_to_8_slots(count: int) -> None:
    # Every pattern up to 4 slots, ~500 spread patterns beyond (a plain loop: hypothesis
    # spends its time avoiding duplicates in so small a space).
    space = 4**count
    step = max(1, space // 509)
    for value in range(0, space, step):
        slots = [(bool(value >> (2 * n) & 1), bool(value >> (2 * n + 1) & 1))
                 for n in range(count)]
        raw = _pack(slots)
        assert len(raw) == 1 + -(-count // 4)
        event = parse_interrupt(raw, count)
        assert isinstance(event, NotifySlotChange)
        assert [(s.present, s.changed) for s in event.slots] == slots
        assert event.to_bytes() == raw
        assert build_message("NotifySlotChange", slots=slots) == raw
        # padding after the message is ignored; a missing byte is an error
        assert parse_interrupt(raw + b"\xff", count) == event
        with pytest.raises(ProtocolError, match="NotifySlotChange"):
            parse_interrupt(raw[:-1], count)


@pytest.mark.parametrize("count", range(1, 9))
def test_notify_slot_change_each_bit(count: int) -> None:
    for slot in range(count):
        for bit, expect in ((0, SlotChange(True, False)), (1, SlotChange(False, True))):
            value = 1 << (2 * slot + bit)
            raw = b"\x50" + value.to_bytes(-(-count // 4), "little")
            event = parse_interrupt(raw, count)
            assert isinstance(event, NotifySlotChange)
            assert event.slots[slot] == expect
            assert all(s == SlotChange(False, False)
                       for n, s in enumerate(event.slots) if n != slot)


def test_notify_slot_change_vectors() -> None:
    event = parse_interrupt(bytes.fromhex("50 0D"), 2)
    assert event == NotifySlotChange((SlotChange(True, False), SlotChange(True, True)))
    five = parse_interrupt(bytes.fromhex("50 00 03"), 5)
    assert isinstance(five, NotifySlotChange)
    assert five.slots[4] == SlotChange(True, True)
    assert all(s == SlotChange(False, False) for s in five.slots[:4])
    with pytest.raises(ProtocolError):
        parse_interrupt(bytes.fromhex("50 00"), 5)


def test_hardware_error() -> None:
    event = parse_interrupt(bytes.fromhex("51 01 05 01"), 2)
    assert event == HardwareError(bSlot=1, bSeq=5, bHardwareErrorCode=1)
    assert event.to_bytes() == bytes.fromhex("51 01 05 01")
    assert build_message("RDR_to_PC_HardwareError", bSlot=1, bSeq=5,
                         bHardwareErrorCode=1) == event.to_bytes()
    with pytest.raises(ProtocolError, match="HardwareError"):
        parse_interrupt(bytes.fromhex("51 01 05"), 2)


@pytest.mark.parametrize("raw", ["", "52 00", "80 00 00 00 00 00 00 00 00 00"])
def test_interrupt_rejects_unknown(raw: str) -> None:
    with pytest.raises(ProtocolError):
        parse_interrupt(bytes.fromhex(raw), 1)


@pytest.mark.parametrize("count", [0, -1, 257])
def test_interrupt_slot_count_is_checked(count: int) -> None:
    with pytest.raises(UsageError):
        parse_interrupt(b"\x50\x00", count)


# --- class requests ---------------------------------------------------------------------


def test_abort_setup() -> None:
    setup = abort_request(interface=1, slot=2, seq=0x35)
    assert setup.to_bytes() == bytes.fromhex("21 01 0235 0100 0000")
    assert (setup.bmRequestType, setup.bRequest, setup.wValue) == (0x21, 0x01, 0x3502)
    assert setup.wLength == 0


def test_get_clock_frequencies_and_data_rates_setups() -> None:
    clocks = get_clock_frequencies_request(interface=2, max_entries=4)
    assert clocks.to_bytes() == bytes.fromhex("A1 02 0000 0200 1000")
    rates = get_data_rates_request(interface=0)
    assert rates.to_bytes() == bytes.fromhex("A1 03 0000 0000 0004")


def test_class_reply_parsing() -> None:
    payload = b"".join(v.to_bytes(4, "little") for v in (4000, 8000, 0, 12000))
    assert parse_class_reply(ClassRequest.GET_CLOCK_FREQUENCIES, payload) == (4000, 8000)
    assert parse_class_reply(ClassRequest.GET_DATA_RATES, payload, declared=1) == (4000,)
    assert parse_class_reply(ClassRequest.ABORT, b"") == ()
    with pytest.raises(ProtocolError):
        parse_class_reply(ClassRequest.ABORT, b"\x00")
    with pytest.raises(UsageError):
        parse_class_reply(0x04, payload)


@pytest.mark.parametrize("call", [
    lambda: abort_request(256, 0, 0),
    lambda: abort_request(0, -1, 0),
    lambda: abort_request(0, 0, 300),
    lambda: get_data_rates_request(0, max_entries=0),
    lambda: get_clock_frequencies_request(0, max_entries=0x4000),
])
def test_class_request_arguments_checked(call: Any) -> None:
    with pytest.raises(UsageError):
        call()


# --- usage errors when building ----------------------------------------------------------


@pytest.mark.parametrize(("name", "fields"), [
    ("NoSuchMessage", {}),
    (0x99, {}),
    ("IccPowerOn", {"bPowerSelect": 256}),
    ("IccPowerOn", {"bSlot": -1}),
    ("IccPowerOn", {"bogus": 1}),
    ("XfrBlock", {"wLevelParameter": 0x10000}),
    ("SetParameters", {}),  # no structure
    ("SetParameters", {"bProtocolNum": 1, "abProtocolDataStructure": {"bIFSC": 999}}),
    ("SetParameters", {"abProtocolDataStructure": {"nope": 1}}),
    ("Secure", {"abPINOperationDataStructure": {
        "bPINOperation": 1, "abPINDataStructure": {"bNumberMessage": 3}}}),
    ("Secure", {"abPINOperationDataStructure": {
        "bPINOperation": 1, "abPINDataStructure": {"bNumberMessage": 0, "bMsgIndex2": 1}}}),
    ("Secure", {"abPINOperationDataStructure": {
        "bPINOperation": 1,
        "abPINDataStructure": {"bNumberMessage": 2, "bMsgIndex2": 1, "bMsgIndex3": 2}}}),
    ("SetDataRateAndClockFrequency", {"dwDataRate": 1 << 32}),
])
def test_build_errors_are_usage_errors(name: Any, fields: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        build_message(name, **fields)


def test_escape_names() -> None:
    assert message_class("Escape") is Escape
    assert message_class("PC_to_RDR_Escape") is Escape
    assert message_class("RDR_to_PC_Escape") is EscapeReply
    assert message_class("DataRateAndClockFrequency") is DataRateAndClock


# --- fuzz -------------------------------------------------------------------------------


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """Known type, a dwLength that usually agrees: reaches the structure parsers."""
    kind = draw(st.sampled_from(BULK_TYPES))
    body = draw(st.binary(max_size=40))
    length = draw(st.sampled_from([len(body)]) | st.integers(0, 50))
    head = draw(st.binary(min_size=5, max_size=5))
    return bytes((kind,)) + length.to_bytes(4, "little") + head + body


@given(st.binary(max_size=64) | plausible_frames())
def test_fuzz_parse_message(raw: bytes) -> None:
    try:
        msg = parse_message(raw)
    except ProtocolError:
        return
    # Whatever parses builds back to the same bytes, except RFU bytes, which become zero.
    rebuilt = msg.to_bytes()
    assert rebuilt[:7] == raw[:7] and rebuilt[10:] == raw[10:]
    assert all(a in (b, 0) for a, b in zip(rebuilt[7:10], raw[7:10]))
    assert parse_message(rebuilt) == msg


@given(st.binary(max_size=40), st.integers(1, 256))
def test_fuzz_parse_interrupt(raw: bytes, slots: int) -> None:
    try:
        event = parse_interrupt(raw, slots)
    except ProtocolError:
        return
    if isinstance(event, NotifySlotChange):
        assert len(event.slots) == slots
        assert parse_interrupt(event.to_bytes(), slots) == event
    else:
        assert raw[:4] == event.to_bytes()


# --- construct == framing ---------------------------------------------------------------


@given(u8, u8, u8, st.binary(min_size=3, max_size=3), st.binary(max_size=16),
       st.sampled_from([0, 0, 1, 255, 256, 65535, 65536, 70000]))
def test_build_frame_equals_construct(kind: int, slot: int, seq: int, params: bytes,
                                      head: bytes, zeros: int) -> None:
    payload = head + bytes(zeros)  # long payloads exercise every dwLength byte
    expected = FRAME.build({"bMessageType": kind, "bSlot": slot, "bSeq": seq,
                            "abParameters": params, "abData": payload})
    p1, p2, p3 = params
    assert framing.build_frame(kind, slot, seq, p1, p2, p3, payload) == expected
    assert _framing_py.build_frame(kind, slot, seq, p1, p2, p3, payload) == expected
    assert framing.frame_size(expected) == len(expected)
    assert framing.parse_header(expected) == (kind, len(payload), slot, seq, *params)


def _construct_status(buf: bytes, expect_type: int, slot: int, seq: int,
                      max_length: int) -> framing.FrameStatus:
    """check_reply's verdict, derived from the construct specs."""
    S = framing.FrameStatus
    try:
        header = HEADER.parse(buf)
    except StreamError:
        return S.SHORT_HEADER
    if header.bSeq != seq:
        return S.WRONG_SEQ
    if header.bSlot != slot:
        return S.WRONG_SLOT
    if header.bMessageType != expect_type:
        return S.WRONG_TYPE
    if max_length and 10 + header.dwLength > max_length:
        return S.TOO_LONG
    try:
        FRAME.parse(buf)
    except StreamError:
        return S.INCOMPLETE
    except TerminatedError:
        return S.TRAILING
    return S.OK


@st.composite
def reply_frames(draw: st.DrawFn) -> tuple[bytes, int, int, int, int]:
    msg = draw(any_reply)
    raw = msg.to_bytes()
    mutation = draw(st.sampled_from(["none", "cut", "extend", "length", "header", "random"]))
    if mutation == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "extend":
        raw += draw(st.binary(min_size=1, max_size=8))
    elif mutation == "length":
        raw = raw[:1] + draw(u32).to_bytes(4, "little") + raw[5:]
    elif mutation == "header":
        pos = draw(st.integers(0, 9))
        raw = raw[:pos] + bytes((draw(u8),)) + raw[pos + 1:]
    elif mutation == "random":
        raw = draw(st.binary(max_size=30))
    expect_type = draw(st.sampled_from([msg.message_type, *REPLY_TYPE.values()]))
    slot = draw(st.sampled_from([msg.bSlot, 0, 1]))
    seq = draw(st.sampled_from([msg.bSeq, (msg.bSeq + 1) & 0xFF]))
    max_length = draw(st.sampled_from([0, 0, 10, 271, 65544]))
    return raw, int(expect_type), slot, seq, max_length


@given(reply_frames())
def test_check_reply_agrees_with_construct(case: tuple[bytes, int, int, int, int]) -> None:
    raw, expect_type, slot, seq, max_length = case
    status = framing.check_reply(raw, expect_type, slot, seq, max_length)
    assert status == _construct_status(raw, expect_type, slot, seq, max_length)
    assert _framing_py.check_reply(raw, expect_type, slot, seq, max_length) == status
    try:
        msg = parse_message(raw)
    except ProtocolError:
        return
    # A frame the typed parser accepts is complete; check_reply only judges the header.
    assert status not in (framing.FrameStatus.SHORT_HEADER, framing.FrameStatus.INCOMPLETE,
                          framing.FrameStatus.TRAILING)
    if (msg.message_type, msg.bSlot, msg.bSeq) == (expect_type, slot, seq) and not max_length:
        assert status is framing.FrameStatus.OK


def test_check_reply_vectors() -> None:
    ok = build_message("DataBlock", bSeq=3, abData=b"\x90\x00")
    S = framing.FrameStatus
    assert framing.check_reply(ok, M.RDR_to_PC_DataBlock, 0, 3) is S.OK
    assert framing.check_reply(ok[:-1], M.RDR_to_PC_DataBlock, 0, 3) is S.INCOMPLETE
    assert framing.check_reply(ok + b"\x00", M.RDR_to_PC_DataBlock, 0, 3) is S.TRAILING
    assert framing.check_reply(ok, M.RDR_to_PC_SlotStatus, 0, 3) is S.WRONG_TYPE
    assert framing.check_reply(ok, M.RDR_to_PC_DataBlock, 1, 3) is S.WRONG_SLOT
    assert framing.check_reply(ok, M.RDR_to_PC_DataBlock, 0, 2) is S.WRONG_SEQ
    assert framing.check_reply(ok, M.RDR_to_PC_DataBlock, 0, 3, 11) is S.TOO_LONG
