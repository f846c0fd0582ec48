"""PIN entry on a TPDU-level pinpad with a T=1 card: the T=1 prologue in PC_to_RDR_Secure,
the card's block back, and the session's T=1 sequence numbers in step afterwards."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import ccid
from ccid.constants import HEADER_SIZE
from ccid.errors import PinCancelledError, ProtocolError, SlotError
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing.apps import PIN, FileSystem
from ccid.testing.faults import PinCancelled
from ccid.testing.reader import PinEntry, VirtualReader

pytestmark = pytest.mark.timeout(60)

VERIFY = bytes.fromhex("00200080")
CHANGE = bytes.fromhex("00240080")
READ_SECRET = (bytes.fromhex("00A4020C020002"), bytes.fromhex("00B0000006"))
PADDED = b"1234" + b"\xff" * 4
#: Offset of bTeoPrologue in a verify structure (bPINOperation first).
TEO_VERIFY = 12


def pinpad(entry: PinEntry) -> tuple[VirtualReader, VirtualCard]:
    """A GemPC Pinpad (TPDU level) with a T=1 card holding PIN 1234."""
    vr = VirtualReader.from_database("08E6:3478", pin_entry=entry,
                                     prompts=["Enter PIN", "New PIN", "Confirm PIN"])
    card = VirtualCard(app=FileSystem(pins={0x80: PIN(PADDED)}), protocols=(1,))
    vr.insert(card)
    return vr, card


@contextmanager
def connected(vr: VirtualReader) -> Iterator[tuple[ccid.Reader, ccid.Card]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # escapes the firmware ignores
        with ccid.open_reader(backend=VirtualBackend(vr), events=False) as reader, \
                reader.connect() as card:
            assert card.protocol == "T=1"
            assert reader.exchange_level.name == "TPDU"
            yield reader, card


def ordinary_exchanges(card: ccid.Card, times: int = 3) -> None:
    """Plain T=1 exchanges after the PIN entry: each must get its answer at once."""
    for _ in range(times):
        assert card.transmit(READ_SECRET[0])[-2:] == b"\x90\x00"


def test_verify_pin_then_ordinary_exchanges_keep_the_sequence() -> None:
    vr, vcard = pinpad(PinEntry("1234"))
    with connected(vr) as (_, card):
        card.transmit(READ_SECRET[0])  # N(S) 1 from here: the prologue must follow it
        assert card.verify_pin(VERIFY) == b"\x90\x00"
        ordinary_exchanges(card)
        card.transmit(READ_SECRET[0])
        assert card.transmit(READ_SECRET[1]) == b"secret\x90\x00"
        assert card.verify_pin(VERIFY) == b"\x90\x00"  # twice in a row
        ordinary_exchanges(card, 2)
    # No block went wrong: the card never had to ask for a repeat or resynchronise.
    assert vcard.t1.nr == vcard.t1.ns


def test_wrong_pin_is_the_cards_answer() -> None:
    vr, _ = pinpad(PinEntry("9999"))
    with connected(vr) as (_, card):
        assert card.verify_pin(VERIFY)[:1] == b"\x63"
        ordinary_exchanges(card)


def test_modify_pin_carries_both_pins_then_exchanges_go_on() -> None:
    apdus: list[bytes] = []

    def app(apdu: bytes) -> bytes:
        apdus.append(bytes(apdu))
        return b"\x90\x00"

    vr = VirtualReader.from_database("08E6:3478",
                                     pin_entry=PinEntry("1234", new_pin="5678", confirm="5678"))
    vr.insert(VirtualCard(app=app, protocols=(1,)))
    with connected(vr) as (_, card):
        assert card.transmit(READ_SECRET[0]) == b"\x90\x00"
        assert card.modify_pin(CHANGE) == b"\x90\x00"
        assert apdus[-1] == CHANGE + b"\x10" + b"1234" + b"\xff" * 4 + b"5678" + b"\xff" * 4
        for _ in range(3):
            assert card.transmit(READ_SECRET[0]) == b"\x90\x00"
        assert len(apdus) == 5


def test_cancelled_entry_moves_no_sequence_number() -> None:
    vr, _ = pinpad(PinEntry("1234"))
    with connected(vr) as (_, card):
        vr.inject(PinCancelled())
        with pytest.raises(PinCancelledError):
            card.verify_pin(VERIFY)
        ordinary_exchanges(card)
        assert card.verify_pin(VERIFY) == b"\x90\x00"


class _Corrupt:
    """A quirk-shaped hook that spoils one byte of bTeoPrologue before it is sent."""

    id = "test-corrupt-prologue"

    def __init__(self, index: int, change: Any) -> None:
        self.index, self.change = index, change

    def adjust_pin_structure(self, structure: bytes) -> bytes:
        at = TEO_VERIFY + self.index
        return structure[:at] + bytes((self.change(structure[at]) & 0xFF,)) + \
            structure[at + 1:]


@pytest.mark.parametrize(("index", "change"), [
    (0, lambda b: b | 0x12),  # NAD
    (1, lambda b: b | 0x80),  # PCB: not an I-block
    (1, lambda b: b | 0x20),  # PCB: chaining, the pinpad sends one block
    (2, lambda b: b + 1),  # LEN
], ids=["nad", "pcb-r-block", "pcb-more", "len"])
def test_a_bad_prologue_is_the_readers_error(index: int, change: Any) -> None:
    vr, _ = pinpad(PinEntry("1234"))
    with connected(vr) as (reader, card):
        reader.quirks.append(_Corrupt(index, change))
        with pytest.raises(SlotError) as caught:
            card.verify_pin(VERIFY)
        assert caught.value.bError == HEADER_SIZE + TEO_VERIFY + index
        reader.quirks.pop()
        ordinary_exchanges(card)
        assert card.verify_pin(VERIFY) == b"\x90\x00"


def test_a_wrong_sequence_number_is_refused_by_the_card() -> None:
    vr, _ = pinpad(PinEntry("1234"))
    with connected(vr) as (reader, card):
        reader.quirks.append(_Corrupt(1, lambda b: b ^ 0x40))  # N(S) flipped
        with pytest.raises(ProtocolError, match="did not take"):
            card.verify_pin(VERIFY)
        reader.quirks.pop()
        ordinary_exchanges(card)  # the session's N(S) never moved: still the card's
        assert card.verify_pin(VERIFY) == b"\x90\x00"


def test_pin_bytes_never_reach_the_host_side_block() -> None:
    vr, vcard = pinpad(PinEntry("1234"))
    seen: list[bytes] = []
    original = vcard.t1.receive

    def spy(block: bytes) -> bytes | None:
        seen.append(bytes(block))
        return original(block)

    vcard.t1.receive = spy  # type: ignore[method-assign]
    with connected(vr) as (_, card):
        assert card.verify_pin(VERIFY) == b"\x90\x00"
    pin_blocks = [b for b in seen if b"1234" in b]
    assert len(pin_blocks) == 1  # the one block the pinpad built; never resent
