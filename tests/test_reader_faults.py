"""Every fault of the virtual reader gives its specific error and leaves the reader usable
(or, when the reader is gone, cleanly closed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import ccid
from ccid.constants import MessageType
from ccid.errors import (
    CardMuteError,
    CardRemovedError,
    NoCardError,
    ProtocolError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing import faults as F
from ccid.testing.presets import preset_reader

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})
APDU = bytes.fromhex("801000000401020304")
ANSWER = bytes.fromhex("010203049000")


def session(kind: str = "extended-apdu", card: VirtualCard | None = None,
            **options: Any) -> tuple[Any, ccid.Reader, ccid.Card]:
    vr = preset_reader(kind, card=card if card is not None else VirtualCard())
    options.setdefault("events", False)
    reader = ccid.open_reader(backend=VirtualBackend(vr), **options)
    return vr, reader, reader.connect()


@pytest.mark.parametrize("kind", ["extended-apdu", "gemalto-pc-twin"])
@pytest.mark.parametrize(
    "fault",
    [
        F.TimeExtension(commands=XFR, times=3, multiplier=2, interval=0.02),
        F.StaleFrame(commands=XFR),
        F.Stall(commands=XFR, endpoint="in"),
        F.Stall(commands=XFR, endpoint="out"),
        F.Stall(commands=XFR, endpoint="in", count=None),
        F.SlowCard(commands=XFR, delay=0.2),
    ],
    ids=lambda f: type(f).__name__ + getattr(f, "endpoint", ""),
)
def test_recoverable_faults_are_invisible(kind: str, fault: F.Fault) -> None:
    card_kind = VirtualCard(protocols=(1,)) if kind == "gemalto-pc-twin" else None
    vr, reader, card = session(kind, card_kind)
    with reader:
        vr.inject(fault)
        assert card.transmit(APDU, timeout=5) == ANSWER
        assert card.transmit(APDU) == ANSWER


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (F.WrongSlot(commands=XFR), ProtocolError, "another slot"),
        (F.WrongType(commands=XFR), ProtocolError, "wrong message type"),
        (F.BadLength(commands=XFR, delta=4), ProtocolError, "truncated"),
        (F.BadLength(commands=XFR, delta=-2), ProtocolError, "garbage after a frame"),
        (F.Truncate(commands=XFR), ProtocolError, "truncated"),
        (F.Garbage(commands=XFR), ProtocolError, "truncated"),
        (F.Garbage(commands=XFR, data=bytes(range(20))), ProtocolError, "reply"),
        (F.WrongSeq(commands=XFR), ReaderTimeoutError, "aborted"),
        (F.NoAnswer(commands=XFR), ReaderTimeoutError, "aborted"),
        (F.TimeExtension(commands=XFR, times=10_000, multiplier=3, interval=0.02),
         ReaderTimeoutError, "time extensions"),
        (F.Stall(commands=XFR, endpoint="out", count=None), ReaderError, "stalled"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, F.Fault) else None,
)
def test_faults_give_their_error_and_the_reader_goes_on(fault: F.Fault, error: type,
                                                        text: str) -> None:
    vr, reader, card = session()
    with reader:
        vr.inject(fault)
        with pytest.raises(error, match=text) as info:
            card.transmit(APDU, timeout=1.0)
        assert type(info.value) is error or error is ReaderError
        assert info.value.reader == reader.name
        vr.clear_faults()
        assert card.transmit(APDU) == ANSWER
        assert card.transmit(APDU) == ANSWER


def test_time_extension_never_beyond_the_ceiling() -> None:
    vr, reader, card = session(timeout=0.6)
    with reader:
        vr.inject(F.TimeExtension(commands=XFR, times=10_000, multiplier=200, interval=0.05))
        start = time.monotonic()
        with pytest.raises(ReaderTimeoutError) as info:
            card.transmit(APDU)
        elapsed = time.monotonic() - start
        assert isinstance(info.value, TimeoutError)
        assert info.value.pcsc_code == "SCARD_E_TIMEOUT"
        # Not a performance check: a multiplier of 200 x the card wait would be minutes.
        assert elapsed < 30
        vr.clear_faults()
        assert card.transmit(APDU) == ANSWER


def test_card_removed_during_the_command() -> None:
    vr, reader, card = session()
    with reader:
        vr.inject(F.CardRemoved(commands=XFR))
        with pytest.raises(CardRemovedError) as info:
            card.transmit(APDU)
        assert info.value.pcsc_code == "SCARD_W_REMOVED_CARD"
        with pytest.raises(CardRemovedError):
            card.transmit(APDU)
        with pytest.raises(NoCardError):
            reader.connect()
        vr.insert(VirtualCard())
        with reader.connect() as again:
            assert again.transmit(APDU) == ANSWER


def test_mute_card() -> None:
    vcard = VirtualCard(protocols=(0,))
    _vr, reader, card = session("gemalto-pc-twin", vcard)
    with reader:
        vcard.faults.mute()
        with pytest.raises(CardMuteError):
            card.transmit(APDU)
        vcard.faults.mute(False)
        card.reset()
        assert card.transmit(APDU) == ANSWER


def test_t1_errors_beyond_retries_then_recovery() -> None:
    vcard = VirtualCard(protocols=(1,))
    _vr, reader, card = session("gemalto-pc-twin", vcard)
    with reader:
        vcard.faults.t1_bad_edc(50)
        with pytest.raises(ProtocolError):
            card.transmit(APDU)
        vcard.faults.clear()
        card.reset()
        assert card.transmit(APDU) == ANSWER


@pytest.mark.parametrize("stage", ["write", "reply"])
def test_unplug_gives_reader_removed_and_closes_cleanly(stage: str) -> None:
    vr, reader, card = session(events=True)
    vr.inject(F.Unplug(commands=XFR, stage=stage))
    with pytest.raises(ReaderRemovedError):
        card.transmit(APDU)
    with pytest.raises(ReaderRemovedError):
        card.transmit(APDU)
    with pytest.raises(ReaderRemovedError):
        reader.connect()
    event = None
    for _ in range(5):
        event = reader.wait_for_event(1)
        if type(event).__name__ == "ReaderRemoved":
            break
    assert type(event).__name__ == "ReaderRemoved"
    reader.close()
    reader.close()
    with pytest.raises(UsageError):
        reader.escape(b"\x00")


def test_hot_unplug_during_an_exchange() -> None:
    vr, reader, card = session()
    backend_device = vr.device
    vr.inject(F.SlowCard(commands=XFR, delay=3.0))
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(card.transmit(APDU, timeout=10))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    while vr.commands_seen < 3:  # wait until the XfrBlock reached the reader
        time.sleep(0.01)
    time.sleep(0.05)
    assert backend_device is not None
    backend_device.unplug()
    worker.join(15)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ReaderRemovedError)
    reader.close()


def test_claimed_interface_released_after_unplug_and_replug() -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(vr)
    reader = ccid.open_reader(backend=backend, events=False)
    device = vr.device
    assert device is not None
    device.unplug()
    with pytest.raises(ReaderRemovedError):
        reader.connect()
    reader.close()
    backend.plug(device)
    with ccid.open_reader(backend=backend, events=False) as again, again.connect() as card:
        assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"


MARK = b"\xa5\x5a\xc3\x3c"


def _chained_echo(reader: ccid.Reader, piece: int) -> tuple[bytes, bytes]:
    """A 3,000-byte ECHO at extended-APDU level whose command piece number ``piece``
    (0-based) starts with MARK, so a fault can aim at the middle of the chain."""
    room = reader.descriptor.dwMaxCCIDMessageLength - 10
    data = bytearray((i * 7) & 0xFF for i in range(3000))
    at = piece * room - 7  # the APDU's 7-byte header comes first
    data[at : at + len(MARK)] = MARK
    apdu = bytes([0x80, 0x10, 0, 0, 0]) + len(data).to_bytes(2, "big") + bytes(data) + b"\0\0"
    assert len(apdu) > 3 * room
    return apdu, bytes(data) + b"\x90\x00"


@pytest.mark.parametrize(
    "fault",
    [
        F.TimeExtension(commands=XFR, prefix=MARK, times=3, multiplier=2, interval=0.02),
        F.StaleFrame(commands=XFR, prefix=MARK),
        F.Stall(commands=XFR, prefix=MARK, endpoint="in"),
        F.Stall(commands=XFR, prefix=MARK, endpoint="out"),
        F.SlowCard(commands=XFR, prefix=MARK, delay=0.2),
    ],
    ids=lambda f: type(f).__name__ + getattr(f, "endpoint", ""),
)
def test_recoverable_faults_in_the_middle_of_a_chained_apdu(fault: F.Fault) -> None:
    """The chain (one C call per reply) hands the odd reply to the general code, which
    deals with it, and the chain goes on from where it was."""
    vr, reader, card = session()
    with reader:
        apdu, expected = _chained_echo(reader, 2)
        vr.inject(fault)
        assert card.transmit(apdu, timeout=5) == expected
        assert not vr.has_fault(type(fault))  # it did hit a piece in the middle
        assert card.transmit(apdu) == expected


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (F.WrongSlot(commands=XFR, prefix=MARK), ProtocolError),
        (F.Truncate(commands=XFR, prefix=MARK), ProtocolError),
        (F.NoAnswer(commands=XFR, prefix=MARK), ReaderTimeoutError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, F.Fault) else None,
)
def test_faults_in_the_middle_of_a_chained_apdu_give_their_error(fault: F.Fault,
                                                                 error: type) -> None:
    vr, reader, card = session()
    with reader:
        apdu, expected = _chained_echo(reader, 2)
        vr.inject(fault)
        with pytest.raises(error) as info:
            card.transmit(apdu, timeout=1.0)
        assert info.value.reader == reader.name
        vr.clear_faults()
        assert card.transmit(apdu) == expected
        assert card.transmit(APDU) == ANSWER
