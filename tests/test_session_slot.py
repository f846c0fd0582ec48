"""Slot state as a table (ccid.session.slot): transitions, events, handle checks."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid.errors import CardRemovedError, CardResetError
from ccid.protocol.atr import parse_atr
from ccid.protocol.negotiate import CARD_WAIT_FLOOR
from ccid.session.slot import (
    TABLE,
    CardInserted,
    CardRemoved,
    Change,
    Presence,
    SlotState,
    seen,
    step_for,
)

ATR = parse_atr(bytes.fromhex("3B 00"))


class Sink:
    """Collects events; checks the state lock is free when they arrive."""

    def __init__(self, slot: SlotState) -> None:
        self.slot = slot
        self.events: list[Any] = []

    def put(self, event: Any) -> None:
        assert self.slot.state_lock.acquire(blocking=False), "sink called under state_lock"
        self.slot.state_lock.release()
        self.events.append(event)


def _powered(slot: SlotState) -> None:
    slot.apply(Change.POWERING, "r")
    slot.apply(Change.POWERED, "r")
    slot.negotiated(ATR, 1, 0x96, 7.5)
    slot.t1 = object()


def test_every_presence_has_a_row_for_every_report() -> None:
    for presence in Presence:
        for change in (Change.SEEN_ABSENT, Change.SEEN_PRESENT, Change.SEEN_SWAPPED):
            assert (presence, change) in TABLE
        for change in (Change.POWERING, Change.POWERED, Change.NO_CARD, Change.UNPOWERED,
                       Change.READER_GONE, Change.FORGOTTEN):
            step_for(presence, change)
    with pytest.raises(ValueError, match="learned present"):
        step_for(Presence.ABSENT, Change.LEARNED_PRESENT)


def test_first_status_is_learned_without_event_and_unpowered() -> None:
    slot = SlotState(0, "r 00")
    sink = Sink(slot)
    slot.powered = True  # a card left active by someone else: we reset it
    slot.learn(True, interrupt=True, reader="r", sink=sink)
    assert slot.present is True and not slot.powered and not sink.events
    assert (slot.generation, slot.presence_count) == (0, 0)
    slot.learn(True, interrupt=True, reader="r", sink=sink)
    assert not sink.events
    slot.learn(False, interrupt=True, reader="r", sink=sink)
    assert sink.events == [CardRemoved("r", 0)] and slot.present is False


def test_swap_seen_on_interrupt_moves_counters_twice_and_forgets_the_card() -> None:
    slot = SlotState(1, "r 01")
    sink = Sink(slot)
    slot.learn(True, interrupt=True, reader="r", sink=sink)
    _powered(slot)
    generation, count = slot.mark()
    slot.report(True, True, interrupt=True, reader="r", sink=sink)
    assert sink.events == [CardRemoved("r", 1), CardInserted("r", 1)]
    assert slot.presence_count == count + 2 and slot.generation == generation + 2
    assert not slot.powered and slot.atr is None and slot.t1 is None
    assert slot.wait == CARD_WAIT_FLOOR
    error = slot.staleness(generation, count, "r")
    assert isinstance(error, CardRemovedError)
    assert error.message == "the card was removed since this handle connected; connect again"


def test_polling_sees_a_swap_only_for_a_card_we_powered() -> None:
    assert seen(True, True, interrupt=False, powered=False) is Change.SEEN_PRESENT
    assert seen(True, True, interrupt=False, powered=True) is Change.SEEN_SWAPPED
    assert seen(True, True, interrupt=True, powered=False) is Change.SEEN_SWAPPED
    assert seen(False, True, interrupt=True, powered=True) is Change.SEEN_ABSENT


def test_power_changes_bump_the_generation_only() -> None:
    slot = SlotState(0, "r")
    slot.learn(True, interrupt=True, reader="r", sink=None)
    _powered(slot)
    generation, count = slot.mark()
    slot.apply(Change.UNPOWERED, "r")
    assert (slot.generation, slot.presence_count) == (generation + 1, count)
    assert not slot.powered and slot.protocol is None
    error = slot.staleness(generation, count, "r", " (card mute)")
    assert isinstance(error, CardResetError)
    assert "during the exchange (card mute)" in error.message
    with pytest.raises(CardResetError, match="by someone else"):
        slot.check_handle(generation, count, "r")
    slot.apply(Change.NO_CARD, "r")
    assert slot.present is False and slot.presence_count == count  # no event, no bump


def test_card_gone_under_an_exchange_keeps_its_session_until_it_ends() -> None:
    slot = SlotState(0, "r")
    slot.learn(True, interrupt=True, reader="r", sink=None)
    _powered(slot)
    held = threading.Event()
    release = threading.Event()

    def exchange() -> None:
        with slot.lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=exchange)
    thread.start()
    held.wait(5)
    slot.report(False, True, interrupt=True, reader="r", sink=None)
    assert not slot.powered and slot.t1 is not None and slot.protocol == 1
    assert slot.info().atr is None and slot.info().protocol is None
    release.set()
    thread.join(5)
    slot.exchange_ended()
    assert slot.t1 is None and slot.protocol is None


def test_reader_gone_and_forgotten() -> None:
    slot = SlotState(0, "r")
    sink = Sink(slot)
    slot.learn(True, interrupt=True, reader="r", sink=sink)
    _powered(slot)
    generation, count = slot.mark()
    slot.apply(Change.READER_GONE, "r", sink)
    assert not sink.events  # the reader-level ReaderRemoved is the reader's to send
    assert (slot.generation, slot.presence_count) == (generation + 1, count + 1)
    slot.apply(Change.FORGOTTEN, "r")
    assert slot.present is None


def _ladder(was: bool | None, present: bool, changed: bool, interrupt: bool,
            powered: bool) -> tuple[list[str], bool]:
    """The reader's own if-ladder for a slot report before the table (events, present)."""
    removed = inserted = False
    if was is None:
        inserted = present
    elif was and not present:
        removed = True
    elif not was and present:
        inserted = True
    elif was and present and changed and (interrupt or powered):
        removed = inserted = True
    return (["removed"] * removed + ["inserted"] * inserted), present


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
                max_size=12))
def test_the_table_equals_the_former_if_ladder(reports: list[tuple[bool, ...]]) -> None:
    slot = SlotState(0, "r")
    sink = Sink(slot)
    was: bool | None = None
    for present, changed, interrupt, power in reports:
        if power and slot.present:
            _powered(slot)
        expected, was = _ladder(was, present, changed, interrupt, slot.powered)
        count = slot.presence_count
        sink.events.clear()
        slot.report(present, changed, interrupt=interrupt, reader="r", sink=sink)
        names = ["removed" if isinstance(e, CardRemoved) else "inserted" for e in sink.events]
        assert names == expected
        assert slot.present is was
        assert slot.presence_count == count + len(expected)
