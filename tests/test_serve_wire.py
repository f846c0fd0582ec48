"""ccid.serve.wire and protocol: message layouts against pcsc-lite's documented structs,
version negotiation, the request parser's limits (sans-IO, no socket)."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid.serve import wire
from ccid.serve.protocol import ProtocolViolation, RequestParser, negotiate

# (field, offset, size) of each struct as declared in winscard_msg.h / readers.h: 32-bit
# fields, char arrays of MAX_READERNAME (128), MAX_BUFFER_SIZE (264), MAX_ATR_SIZE (33)
# padded to 4 bytes. Sizes checked with gcc's offsetof on the header (pcsc-lite HEAD).
LAYOUTS: dict[str, tuple[struct.Struct, int, list[tuple[str, int, int]]]] = {
    "rxHeader": (wire.HEADER, 8, [("size", 0, 4), ("command", 4, 4)]),
    "version_struct": (wire.VERSION, 12, [("major", 0, 4), ("minor", 4, 4), ("rv", 8, 4)]),
    "wait_reader_state_change": (wire.WAIT_STATE, 8, [("timeOut", 0, 4), ("rv", 4, 4)]),
    "establish_struct": (wire.ESTABLISH, 12,
                         [("dwScope", 0, 4), ("hContext", 4, 4), ("rv", 8, 4)]),
    "release_struct": (wire.RELEASE, 8, [("hContext", 0, 4), ("rv", 4, 4)]),
    "connect_struct": (wire.CONNECT, 152, [
        ("hContext", 0, 4), ("szReader", 4, 128), ("dwShareMode", 132, 4),
        ("dwPreferredProtocols", 136, 4), ("hCard", 140, 4), ("dwActiveProtocol", 144, 4),
        ("rv", 148, 4)]),
    "reconnect_struct": (wire.RECONNECT, 24, [
        ("hCard", 0, 4), ("dwShareMode", 4, 4), ("dwPreferredProtocols", 8, 4),
        ("dwInitialization", 12, 4), ("dwActiveProtocol", 16, 4), ("rv", 20, 4)]),
    "disconnect_struct": (wire.DISCONNECT, 12,
                          [("hCard", 0, 4), ("dwDisposition", 4, 4), ("rv", 8, 4)]),
    "begin_struct": (wire.BEGIN, 8, [("hCard", 0, 4), ("rv", 4, 4)]),
    "end_struct": (wire.END, 12, [("hCard", 0, 4), ("dwDisposition", 4, 4), ("rv", 8, 4)]),
    "cancel_struct": (wire.CANCEL, 8, [("hContext", 0, 4), ("rv", 4, 4)]),
    "status_struct": (wire.STATUS, 8, [("hCard", 0, 4), ("rv", 4, 4)]),
    "transmit_struct": (wire.TRANSMIT, 32, [
        ("hCard", 0, 4), ("ioSendPciProtocol", 4, 4), ("ioSendPciLength", 8, 4),
        ("cbSendLength", 12, 4), ("ioRecvPciProtocol", 16, 4), ("ioRecvPciLength", 20, 4),
        ("pcbRecvLength", 24, 4), ("rv", 28, 4)]),
    "control_struct": (wire.CONTROL, 24, [
        ("hCard", 0, 4), ("dwControlCode", 4, 4), ("cbSendLength", 8, 4),
        ("cbRecvLength", 12, 4), ("dwBytesReturned", 16, 4), ("rv", 20, 4)]),
    "getset_struct": (wire.GETSET, 280, [
        ("hCard", 0, 4), ("dwAttrId", 4, 4), ("pbAttr", 8, 264), ("cbAttrLen", 272, 4),
        ("rv", 276, 4)]),
    "get_reader_events": (wire.READER_EVENTS, 8, [("readerEvents", 0, 4), ("rv", 4, 4)]),
    "READER_STATE": (wire.READER_STATE, 184, [
        ("readerName", 0, 128), ("eventCounter", 128, 4), ("readerState", 132, 4),
        ("readerSharing", 136, 4), ("cardAtr", 140, 33), ("cardAtrLength", 176, 4),
        ("cardProtocol", 180, 4)]),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout(name: str) -> None:
    """Each field, packed with a distinct value, lands at its documented offset."""
    layout, size, fields = LAYOUTS[name]
    assert layout.size == size
    values: list[object] = []
    expected = bytearray(size)
    for i, (_field, offset, width) in enumerate(fields):
        if width == 4:
            value = 0x01020300 + i
            values.append(value)
            expected[offset:offset + 4] = value.to_bytes(4, sys.byteorder)
        else:
            raw = bytes((0x41 + i,)) * (width - 1)
            values.append(raw)
            expected[offset:offset + width - 1] = raw
    assert layout.pack(*values) == bytes(expected)
    back = layout.unpack(bytes(expected))
    assert [v for v in back if isinstance(v, int)] == [v for v in values if isinstance(v, int)]


def test_reader_state_record() -> None:
    rec = wire.pack_reader_state("R 00 00", 0x1_0005, 0x34, -1, b"\x3b\x00", 2)
    assert len(rec) == 184
    assert rec[:8] == b"R 00 00\0"
    assert int.from_bytes(rec[128:132], sys.byteorder) == 5  # 16-bit counter
    assert int.from_bytes(rec[136:140], sys.byteorder, signed=True) == -1
    assert rec[140:142] == b"\x3b\x00" and int.from_bytes(rec[176:180], sys.byteorder) == 2


def test_command_numbers() -> None:
    """The enum of winscard_msg.h, including 4:5's and 4:6's additions."""
    assert wire.Command.VERSION == 0x11 and wire.Command.GET_READERS_STATE == 0x12
    assert wire.Command.WAIT_READER_STATE_CHANGE == 0x13
    assert wire.Command.GET_READER_EVENTS == 0x15
    assert wire.Command.GET_READERS_STATE_SIZE == 0x16
    assert wire.Command.GET_READERS_STATE_ARRAY == 0x17
    assert wire.MAX_BUFFER_SIZE_EXTENDED == 65548


@pytest.mark.parametrize("minor", [4, 5, 6])
def test_served_versions_answered_with_their_own(minor: int) -> None:
    assert negotiate(4, minor) == (4, minor, wire.SUCCESS)


@pytest.mark.parametrize("major, minor", [(4, 3), (4, 7), (3, 4), (5, 6), (-1, 0)])
def test_other_versions_refused(major: int, minor: int) -> None:
    assert negotiate(major, minor) == (4, 6, wire.RV["SCARD_E_SERVICE_STOPPED"])


def _msg(command: int, body: bytes = b"", size: int | None = None) -> bytes:
    return wire.HEADER.pack(len(body) if size is None else size, command) + body


def test_parser_split_anywhere() -> None:
    apdu = bytes(range(256)) * 2
    body = wire.TRANSMIT.pack(7, 2, 8, len(apdu), 2, 8, 1000, 0)
    stream = _msg(wire.Command.TRANSMIT, body) + apdu + _msg(wire.Command.GET_READERS_STATE)
    for cut in range(len(stream)):
        parser = RequestParser()
        parser.feed(stream[:cut])
        got = []
        while (req := parser.next_request()) is not None:
            got.append(req)
        parser.feed(stream[cut:])
        while (req := parser.next_request()) is not None:
            got.append(req)
        assert [r.command for r in got] == [wire.Command.TRANSMIT,
                                            wire.Command.GET_READERS_STATE]
        assert got[0].data == apdu and got[0].fields[0] == 7


@pytest.mark.parametrize("stream, why", [
    (_msg(0x42), "unknown command"),
    (_msg(wire.Command.CONNECT, bytes(10)), "body of 10"),
    (_msg(wire.Command.GET_READERS_STATE, bytes(4)), "body of 4"),
    (_msg(wire.Command.TRANSMIT, wire.TRANSMIT.pack(1, 2, 8, 70000, 2, 8, 10, 0)),
     "send buffer of 70000"),
    (_msg(wire.Command.GET_ATTRIB, wire.GETSET.pack(1, 2, b"", 265, 0)), "attribute length"),
    (_msg(wire.Command.GET_READER_EVENTS), "needs protocol 4:5"),
])
def test_parser_violations(stream: bytes, why: str) -> None:
    parser = RequestParser()
    parser.feed(stream)
    with pytest.raises(ProtocolViolation, match=why):
        parser.next_request()


def test_newer_commands_follow_the_negotiated_version() -> None:
    parser = RequestParser()
    parser.minor = 5
    parser.feed(_msg(wire.Command.GET_READER_EVENTS) + _msg(wire.Command.GET_READERS_STATE_SIZE))
    assert parser.next_request() is not None
    with pytest.raises(ProtocolViolation, match="4:6"):
        parser.next_request()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parser_never_crashes(data: bytes) -> None:
    """Any bytes: requests, a wait for more, or ProtocolViolation, nothing else."""
    parser = RequestParser()
    parser.minor = 6
    parser.feed(data)
    try:
        while parser.next_request() is not None:
            pass
    except ProtocolViolation:
        return
    assert parser.needed() >= 1
