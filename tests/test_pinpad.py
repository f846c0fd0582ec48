"""PIN entry on the reader's pinpad (PC_to_RDR_Secure) end to end, on virtual pinpads.

The virtual pinpad types ``PinEntry`` into the APDU template as the structure says, and the
card checks the PIN (``FileSystem``, PIN reference 0x80; stored PIV-style, padded with FF
to the 8-byte block a pinpad fills).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import ccid
from ccid import trace
from ccid.constants import MessageType, PINSupport, SlotErrorCode
from ccid.errors import (
    PinCancelledError,
    PinTimeoutError,
    SlotError,
    UsageError,
)
from ccid.messages import PINModify, PINOperation, PINVerify, Secure, parse_message
from ccid.quirks import Quirk
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing.apps import PIN, FileSystem
from ccid.testing.faults import PinCancelled, PinTimeout
from ccid.testing.reader import PinEntry, VirtualReader

VERIFY = bytes.fromhex("00200080")
CHANGE = bytes.fromhex("00240080")
READ_SECRET = (bytes.fromhex("00A4020C020002"), bytes.fromhex("00B0000006"))
PADDED = b"1234" + b"\xff" * 4
PROMPTS = ["Enter PIN", "New PIN", "Confirm PIN"]


def pinpad(entry: PinEntry | None, card: VirtualCard | None = None, reader_id: str = "08E6:3478",
           **kw: Any) -> VirtualReader:
    """A GemPC Pinpad (TPDU, T=0 card) with ``entry`` typed on its keys."""
    vr = VirtualReader.from_database(reader_id, pin_entry=entry, prompts=PROMPTS, **kw)
    vr.insert(card or VirtualCard(app=FileSystem(pins={0x80: PIN(PADDED)}), protocols=(0,)))
    return vr


class Recorder:
    """A card application that records each APDU and answers 90 00."""

    def __init__(self) -> None:
        self.apdus: list[bytes] = []

    def __call__(self, apdu: bytes) -> bytes:
        self.apdus.append(bytes(apdu))
        return b"\x90\x00"


def recording(entry: PinEntry, **kw: Any) -> tuple[VirtualReader, Recorder]:
    app = Recorder()
    return pinpad(entry, VirtualCard(app=app, protocols=(0,)), **kw), app


@contextmanager
def connected(vr: VirtualReader, **options: Any) -> Iterator[ccid.Card]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # escapes the firmware ignores
        with ccid.open_reader(backend=VirtualBackend(vr), events=False, **options) as reader, \
                reader.connect() as card:
            yield card


def secure_frames(records: list[trace.TraceRecord]) -> list[trace.TraceRecord]:
    return [r for r in records
            if r.direction == "->" and r.data[:1] == bytes((MessageType.PC_to_RDR_Secure,))]


def structure_of(record: trace.TraceRecord) -> PINVerify | PINModify:
    msg = parse_message(record.data)
    assert isinstance(msg, Secure)
    op = msg.abPINOperationDataStructure
    assert isinstance(op, PINOperation)
    assert isinstance(op.abPINDataStructure, PINVerify | PINModify)
    return op.abPINDataStructure


# --- verify --------------------------------------------------------------------------------


def test_verify_on_the_pinpad_unlocks_the_card() -> None:
    with connected(pinpad(PinEntry("1234"))) as card:
        select, read = READ_SECRET
        assert card.transmit(select) == b"\x90\x00"
        assert card.transmit(read) == b"\x69\x82"  # security status not satisfied
        assert card.verify_pin(VERIFY) == b"\x90\x00"
        assert card.transmit(read) == b"secret\x90\x00"


def test_wrong_pin_is_the_cards_answer() -> None:
    vr = pinpad(PinEntry("9999"))
    with connected(vr) as card:
        assert card.verify_pin(VERIFY) == b"\x63\xc2"
        assert card.verify_pin(VERIFY) == b"\x63\xc1"
    assert vr.displayed == [["Enter PIN"], ["Enter PIN"]]


def test_verify_structure_on_the_wire_and_masked_in_the_trace() -> None:
    with trace.capture(mask_pins=False) as raw, connected(pinpad(PinEntry("1234"))) as card:
        assert card.verify_pin(VERIFY, timeout=20) == b"\x90\x00"
    (record,) = secure_frames(raw)
    pin = structure_of(record)
    assert isinstance(pin, PINVerify)
    assert (pin.bmFormatString, pin.bmPINBlockString, pin.bmPINLengthFormat) == (0x82, 0x08, 0)
    assert pin.wPINMaxExtraDigit == 0x0408  # 4..8: the ASCII block holds 8 digits
    assert (pin.bTimeOut, pin.bEntryValidationCondition, pin.bNumberMessage) == (20, 0x02, 1)
    assert pin.abPINApdu == VERIFY + b"\x08" + b"\xff" * 8

    with trace.capture() as masked, connected(pinpad(PinEntry("1234"))) as card:
        card.verify_pin(VERIFY)
    (record,) = secure_frames(masked)
    assert record.masked and record.masked[0][0] <= 11  # bPINOperation (offset 10) readable
    assert record.masked[-1][1] >= len(record.data)
    assert record.data[10] == 0 and not any(record.data[11:])
    assert set(record.tokens()[11:]) == {"**"}


@pytest.mark.parametrize(("pin_format", "typed", "block"), [
    ("ascii", "1234", b"1234" + b"\xff" * 4),
    ("bcd", "1234", bytes.fromhex("1234FFFFFFFFFFFF")),
    ("bcd", "123456789", bytes.fromhex("123456789FFFFFFF")),
    ("format2", "1234", bytes.fromhex("241234FFFFFFFFFF")),
    ("format2", "123456", bytes.fromhex("26123456FFFFFFFF")),
])
def test_pin_block_formats(pin_format: str, typed: str, block: bytes) -> None:
    vr, app = recording(PinEntry(typed))
    with connected(vr) as card:
        assert card.verify_pin(VERIFY, pin_format=pin_format) == b"\x90\x00"
    assert app.apdus[-1] == VERIFY + b"\x08" + block


def test_whole_template_is_used_as_given() -> None:
    template = bytes.fromhex("0020008108") + b"\x00" * 8
    vr, app = recording(PinEntry("4321"))
    with connected(vr) as card:
        card.verify_pin(template)
    assert app.apdus[-1] == bytes.fromhex("0020008108") + b"4321" + b"\x00" * 4


def test_digit_limits_reach_the_pinpad() -> None:
    # The pinpad stops taking keys at the maximum: "1234" with at most 3 digits is "123".
    vr = pinpad(PinEntry("1234"))
    with connected(vr) as card:
        assert card.verify_pin(VERIFY, max_digits=3) == b"\x63\xc2"
        # Fewer digits than the minimum: the validation key is refused until the time-out.
        with pytest.raises(PinTimeoutError):
            card.verify_pin(VERIFY, min_digits=5)
        assert card.verify_pin(VERIFY, min_digits=4, max_digits=4) == b"\x90\x00"


def test_firmware_pin_sizes_are_the_defaults() -> None:
    features = bytearray(21)
    features[3], features[13], features[14] = 0x01, 6, 8  # max size reached; 6..8 digits

    def firmware(payload: bytes) -> bytes | int:
        return bytes(features) if payload == b"\x6a" else b""

    vr = pinpad(PinEntry("123456"), VirtualCard(app=FileSystem(
        pins={0x80: PIN(b"123456\xff\xff")}), protocols=(0,)), escape_handler=firmware)
    with trace.capture(mask_pins=False) as raw, connected(vr) as card:
        assert card.reader.firmware_features.max_pin_size == 8
        assert card.verify_pin(VERIFY) == b"\x90\x00"
    pin = structure_of(secure_frames(raw)[0])
    assert pin.wPINMaxExtraDigit == 0x0608
    assert pin.bEntryValidationCondition == 0x01


# --- modify --------------------------------------------------------------------------------


def test_modify_with_current_and_confirmation() -> None:
    vr, app = recording(PinEntry("1234", new_pin="567890", confirm="567890"))
    with trace.capture(mask_pins=False) as raw, connected(vr) as card:
        assert card.modify_pin(CHANGE) == b"\x90\x00"
    assert app.apdus[-1] == CHANGE + b"\x10" + b"1234" + b"\xff" * 4 + b"567890\xff\xff"
    assert vr.displayed == [PROMPTS]
    pin = structure_of(secure_frames(raw)[0])
    assert isinstance(pin, PINModify)
    assert (pin.bInsertionOffsetOld, pin.bInsertionOffsetNew, pin.bConfirmPIN) == (0, 8, 3)
    assert (pin.bNumberMessage, pin.bMsgIndex1, pin.bMsgIndex2, pin.bMsgIndex3) == (3, 0, 1, 2)


def test_modify_new_pin_only() -> None:
    vr, app = recording(PinEntry("", new_pin="8765"))
    with connected(vr) as card:
        card.modify_pin(bytes.fromhex("002C0280"), current=False, confirm=False)
    assert app.apdus[-1] == bytes.fromhex("002C028008") + b"8765" + b"\xff" * 4
    assert vr.displayed == [["New PIN"]]


# --- refusals and errors -----------------------------------------------------------------


def test_cancel_and_timeout_are_specific_errors() -> None:
    vr = pinpad(PinEntry("1234"))
    with connected(vr) as card:
        vr.inject(PinCancelled())
        with pytest.raises(PinCancelledError) as cancelled:
            card.verify_pin(VERIFY)
        vr.inject(PinTimeout())
        with pytest.raises(PinTimeoutError) as late:
            card.verify_pin(VERIFY, timeout=5)
        assert card.verify_pin(VERIFY) == b"\x90\x00"  # the slot is fine afterwards
    assert cancelled.value.bError == SlotErrorCode.PIN_CANCELLED
    assert cancelled.value.pcsc_code == "SCARD_W_CANCELLED_BY_USER"
    assert isinstance(cancelled.value, SlotError)
    assert late.value.bError == SlotErrorCode.PIN_TIMEOUT
    assert late.value.pcsc_code == "SCARD_E_TIMEOUT" and isinstance(late.value, TimeoutError)


def test_nobody_at_the_keys_times_out() -> None:
    with connected(pinpad(None)) as card, pytest.raises(PinTimeoutError):
        card.verify_pin(VERIFY)


def test_reader_without_pinpad_refuses_before_sending() -> None:
    vr = VirtualReader.from_database("08E6:3437")  # GemPC Twin: bPINSupport 0
    vr.insert(VirtualCard(protocols=(0,)))
    with trace.capture() as records, connected(vr) as card:
        assert card.reader.pin_support == PINSupport.NONE
        with pytest.raises(UsageError, match=r"no PIN verification.*bPINSupport 0x00"):
            card.verify_pin(VERIFY)
    assert secure_frames(records) == []


def test_verify_only_pinpad_refuses_modify() -> None:
    vr, _app = recording(PinEntry("1234", new_pin="5678"), reader_id="046A:0005")
    with connected(vr) as card:
        assert card.reader.pin_support == PINSupport.VERIFY
        assert card.verify_pin(VERIFY) == b"\x90\x00"
        with pytest.raises(UsageError, match="modification"):
            card.modify_pin(CHANGE)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pin_format": "ebcdic"}, "pin_format"),
    ({"min_digits": 6, "max_digits": 4}, "PIN size"),
    ({"max_digits": 9}, "PIN size"),
    ({"min_digits": 0}, "PIN size"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": 300}, "timeout"),
])
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with connected(pinpad(PinEntry("1234"))) as card, pytest.raises(UsageError, match=match):
        card.verify_pin(VERIFY, **kwargs)


@pytest.mark.parametrize("template", [b"\x00\x20\x00", bytes.fromhex("0020008008FFFF")])
def test_bad_template(template: bytes) -> None:
    with connected(pinpad(PinEntry("1234"))) as card, pytest.raises(UsageError,
                                                                    match="template"):
        card.verify_pin(template)


def test_direct_mode_is_refused() -> None:
    vr = pinpad(PinEntry("1234"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reader = ccid.open_reader(backend=VirtualBackend(vr), events=False)
    with reader, reader.connect(mode="direct") as direct, pytest.raises(UsageError):
        direct.verify_pin(VERIFY)
    # T=1 at TPDU level works: tests/test_pinpad_t1.py.


class _LongerTimeout(Quirk):
    id = "test-longer-timeout"
    description = "test: the pinpad needs bTimeOut raised to 60 s"

    def adjust_pin_structure(self, structure: bytes) -> bytes:
        return structure[:1] + bytes((60,)) + structure[2:]


def test_adjust_pin_structure_hook_sees_the_structure() -> None:
    vr = pinpad(PinEntry("1234"))
    with trace.capture(mask_pins=False) as raw, connected(vr) as card:
        card.reader.quirks.append(_LongerTimeout())  # not registered: this test only
        assert card.verify_pin(VERIFY, timeout=10) == b"\x90\x00"
    assert structure_of(secure_frames(raw)[0]).bTimeOut == 60
