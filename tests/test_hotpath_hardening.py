"""The per-APDU path under hostile replies, end to end on virtual readers: a reply that
trickles in ends at the call's ceiling (then ABORT, and the reader goes on); the clean-up
after a bad reply on one slot leaves another slot's reply alone; a card swapped under a
T=0 or chained exchange is a card error."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import ccid
from ccid.constants import ExchangeLevel, MessageType
from ccid.errors import (
    CardRemovedError,
    CardResetError,
    ProtocolError,
    ReaderTimeoutError,
)
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice
from ccid.testing import faults as F
from ccid.testing.apps import CallableApp, default_card_os
from ccid.testing.presets import PRESETS, preset_reader

pytestmark = pytest.mark.timeout(120)

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})
APDU = bytes.fromhex("801000000401020304")
ANSWER = bytes.fromhex("010203049000")


def session(kind: str, card: VirtualCard | None = None,
            **options: Any) -> tuple[Any, ccid.Reader, ccid.Card]:
    vr = preset_reader(kind, card=card if card is not None else VirtualCard())
    options.setdefault("events", False)
    reader = ccid.open_reader(backend=VirtualBackend(vr), **options)
    return vr, reader, reader.connect()


KINDS = ["extended-apdu", "two-slot-concurrent", "gemalto-pc-twin"]


def card_for(kind: str) -> VirtualCard:
    return VirtualCard(protocols=(1,)) if kind == "gemalto-pc-twin" else VirtualCard()


# --- 1. a trickling reply --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("piece", "pad"), [(1, 40), (64, 192)], ids=["byte", "packet"])
def test_reply_trickling_in_ends_at_the_ceiling_then_the_reader_goes_on(
        kind: str, piece: int, pad: int) -> None:
    vr, reader, card = session(kind, card_for(kind))
    with reader:
        # One piece every 0.3 s (inside the wait for the rest of a frame) of a frame padded
        # (within dwMaxCCIDMessageLength) to 4 pieces or more: past the 0.6 s ceiling.
        vr.inject(F.Trickle(commands=XFR, piece=piece, interval=0.3, pad=pad))
        with pytest.raises(ReaderTimeoutError, match="aborted") as info:
            card.transmit(APDU, timeout=0.6)
        assert info.value.reader == reader.name
        vr.clear_faults()
        assert card.transmit(APDU) == ANSWER
        assert card.transmit(APDU) == ANSWER


@pytest.mark.parametrize("kind", KINDS)
def test_reply_with_long_gaps_is_truncated_and_its_rest_never_reaches_the_next_command(
        kind: str) -> None:
    vr, reader, card = session(kind, card_for(kind))
    with reader:
        # A byte every 0.9 s: after the first one the driver gives up on the frame (the
        # rest of a frame follows at once on a healthy bus); ABORT stops the rest.
        vr.inject(F.Trickle(commands=XFR, piece=1, interval=0.9))
        with pytest.raises(ProtocolError, match="truncated"):
            card.transmit(APDU, timeout=5.0)
        vr.clear_faults()
        for _ in range(4):  # spans the time the dropped pieces were due
            assert card.transmit(APDU) == ANSWER
            threading.Event().wait(0.4)


# --- 2. clean-up after a bad reply on a reader with several busy slots -----------------


class Arrival:
    """Card application: the default card OS, and an event set when an APDU arrives."""

    def __init__(self) -> None:
        self.inner = default_card_os()
        self.arrived = threading.Event()

    def __call__(self, apdu: bytes) -> bytes:
        self.arrived.set()
        return self.inner.process(apdu)


def test_a_bad_reply_on_one_slot_leaves_the_other_slots_reply_alone() -> None:
    arrival = Arrival()
    vr = preset_reader("two-slot-concurrent", card=VirtualCard(app=CallableApp(arrival)))
    vr.insert(VirtualCard(), 1)
    reader = ccid.open_reader(backend=VirtualBackend(VirtualDevice(vr)), events=False)
    with reader:
        assert reader.descriptor.bMaxCCIDBusySlots >= 2
        slot0, slot1 = reader.connect(slot=0), reader.connect(slot=1)
        # Slot 0: a stream of time extensions, 10 ms apart, then its answer; slot 1: a
        # reply of the wrong type while that stream runs. Cleaning up after slot 1 must
        # not read (and lose) slot 0's frames.
        vr.inject(F.TimeExtension(commands=XFR, slot=0, times=8, interval=0.01, count=None),
                  F.WrongType(commands=XFR, slot=1, count=None))
        got: list[Any] = []
        for _ in range(12):
            arrival.arrived.clear()
            result: list[Any] = []

            def on_slot0(out: list[Any] = result) -> None:
                try:
                    out.append(slot0.transmit(APDU, timeout=2.0))
                except ccid.CCIDError as exc:
                    out.append(exc)

            thread = threading.Thread(target=on_slot0)
            thread.start()
            assert arrival.arrived.wait(10)
            with pytest.raises(ProtocolError, match="wrong message type"):
                slot1.transmit(APDU, timeout=2.0)
            thread.join(30)
            assert not thread.is_alive()
            got.extend(result)
        assert got == [ANSWER] * 12
        vr.clear_faults()
        assert slot1.transmit(APDU) == ANSWER


# --- 3. a card swapped under a running exchange ----------------------------------------


def swap_on(vr: Any, nth: int, keep: VirtualCard) -> None:
    """Swap the card in slot 0 when the ``nth`` XfrBlock of the exchange arrives."""
    seen: list[int] = []

    def responder(frame: bytes) -> None:
        if frame[0] == MessageType.PC_to_RDR_XfrBlock:
            seen.append(1)
            if len(seen) == nth:
                vr.remove(0)
                vr.insert(keep, 0)
        return None

    vr.responder = responder


@pytest.mark.parametrize("events", [False, True])
def test_card_swapped_in_the_middle_of_a_t0_exchange_is_a_card_error(events: bool) -> None:
    vr, reader, card = session("gemalto-pc-twin", VirtualCard(protocols=(0,)), events=events)
    with reader:
        assert card.protocol == "T=0"
        swap_on(vr, 2, VirtualCard(protocols=(0,)))
        # Case 4: the data goes out, 61xx comes back, GET RESPONSE goes to the new card.
        with pytest.raises((CardRemovedError, CardResetError)):
            card.transmit(APDU)
        vr.responder = None
        card.reconnect()
        assert card.transmit(APDU) == ANSWER


@pytest.mark.parametrize("events", [False, True])
def test_card_swapped_in_the_middle_of_a_chained_response_is_a_card_error(
        events: bool) -> None:
    vr, reader, card = session("extended-apdu", events=events)
    with reader:
        big = 65_000
        # An echo whose answer is longer than one message: the reader chains it.
        apdu = bytes.fromhex("80100000") + b"\x00" + big.to_bytes(2, "big") + bytes(big) \
            + b"\x00\x00"
        swap_on(vr, 2, VirtualCard())
        with pytest.raises((CardRemovedError, CardResetError)):
            card.transmit(apdu)
        vr.responder = None
        card.reconnect()
        assert card.transmit(APDU) == ANSWER


# --- 4. bulk-IN reads never overflow (the virtual backend fails them as libusb does) ---


@pytest.mark.parametrize("packet", [8, 64, 512])
@pytest.mark.parametrize("kind", sorted(set(PRESETS) - {"ct700", "iccd-token"}))
def test_reads_take_whole_packets_on_every_preset(kind: str, packet: int) -> None:
    vr = preset_reader(kind, bulk_packet_size=packet, interrupt_packet_size=min(packet, 64))
    with ccid.open_reader(backend=VirtualBackend(vr), events=False) as reader, \
            reader.connect() as card:
        # Long answers: frames of many packets, and of every size up to the longest.
        size = 4000 if reader.exchange_level is ExchangeLevel.EXTENDED_APDU else 255
        data = bytes(i & 0xFF for i in range(size))
        if size <= 255:
            apdu = bytes.fromhex("80100000") + bytes((size,)) + data
        else:
            apdu = bytes.fromhex("80100000") + b"\x00" + size.to_bytes(2, "big") + data
        assert card.transmit(apdu) == data + b"\x90\x00"
        assert card.transmit(APDU) == ANSWER
