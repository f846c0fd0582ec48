"""Card and reader events, end to end through pyusb on virtual readers.

Insertion and removal from the interrupt endpoint (no polling: the virtual reader sees
no GetSlotStatus while the event travels) and by polling a reader without one; removal and
re-insertion between two polls; hardware errors; hot-plug of the reader itself via watch().
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import drain
from conftest import next_event as _next_event

import ccid
from ccid import events as ev
from ccid.errors import CardRemovedError, CardResetError
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, preset_reader

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0  # seconds to wait for an event that must come
next_event = functools.partial(_next_event, wait=WAIT, what="no event arrived")


def open_reader(backend: VirtualBackend, **options: Any) -> ccid.Reader:
    # quirks off: these tests are about events, not about vendor firmware
    return ccid.open_reader(backend=backend, quirks=False, **options)


def plugged(name: str, card: Any = None, **overrides: Any) -> tuple[Any, VirtualBackend]:
    vr = preset_reader(name, card=card, **overrides)
    return vr, VirtualBackend(VirtualDevice(vr))




def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ccid-monitor")]


# --- interrupt endpoint ----------------------------------------------------------------


def test_insert_and_remove_from_the_interrupt_endpoint() -> None:
    vr, backend = plugged("gemalto-pc-twin")
    with open_reader(backend, poll_interval=3600) as reader:
        assert reader.has_interrupt
        assert drain(reader) == []
        seen = vr.commands_seen
        vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        vr.remove()
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)
        # the events came from NotifySlotChange: not a single bulk command was needed
        assert vr.commands_seen == seen
        assert reader.slot_states() == [False]


def test_swap_between_two_interrupt_reads_is_removed_then_inserted() -> None:
    vr, backend = plugged("gemalto-pc-twin", card=VirtualCard())
    with open_reader(backend) as reader:
        card = reader.connect()
        drain(reader)
        with vr.cv:  # both changes land in one NotifySlotChange: present, changed
            vr.remove()
            vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        seen = vr.commands_seen
        with pytest.raises((CardRemovedError, CardResetError)):
            card.transmit(bytes.fromhex("8010000001AA"))
        assert vr.commands_seen == seen  # refused before anything reached the new card


def test_hardware_error_event() -> None:
    vr, backend = plugged("gemalto-pc-twin")
    with open_reader(backend) as reader:
        drain(reader)
        vr.hardware_error(slot=0, seq=7, code=0x01)
        assert next_event(reader) == ev.HardwareErrorEvent(reader.name, 0, 7, 0x01)
        assert ev.HardwareError is ev.HardwareErrorEvent


def test_unplug_is_a_reader_removed_event() -> None:
    vr, backend = plugged("gemalto-pc-twin")
    reader = open_reader(backend)
    try:
        drain(reader)
        backend.unplug(vr)
        assert next_event(reader) == ev.ReaderRemoved(reader.name)
    finally:
        reader.close()


def test_close_stops_the_monitor_promptly() -> None:
    _, backend = plugged("gemalto-pc-twin")
    reader = open_reader(backend)
    monitor = reader._monitor
    assert monitor is not None and monitor.running and monitor.uses_interrupt
    reader.close()
    assert not monitor.running
    assert monitor not in monitor_threads()


def test_malformed_interrupt_is_ignored_not_fatal() -> None:
    vr, backend = plugged("gemalto-pc-twin")
    with open_reader(backend) as reader:
        drain(reader)
        vr.queue_interrupt(b"\x77\x01")  # an unknown interrupt message
        vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        assert reader._monitor is not None and reader._monitor.running


# --- polling (no interrupt endpoint) -------------------------------------------------------


def status_polls(vr: Any) -> int:
    return vr.commands_seen


def test_insert_and_remove_by_polling() -> None:
    vr, backend = plugged("no-interrupt")
    with open_reader(backend, poll_interval=0.02) as reader:
        assert not reader.has_interrupt
        monitor = reader._monitor
        assert monitor is not None and not monitor.uses_interrupt
        assert drain(reader) == []
        before = status_polls(vr)
        vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        vr.remove()
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)
        assert status_polls(vr) > before  # found by GetSlotStatus


def test_removal_and_reinsertion_between_two_polls() -> None:
    vr, backend = plugged("no-interrupt", card=VirtualCard(protocols=(1,)))
    with open_reader(backend, poll_interval=0.05) as reader:
        card = reader.connect()
        assert card.transmit(bytes.fromhex("8010000002CAFE")) == bytes.fromhex("CAFE9000")
        drain(reader)
        with vr.cv:  # no poll can run between the two: the slot is never seen empty
            vr.remove()
            vr.insert(VirtualCard(protocols=(1,)))
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        seen = vr.commands_seen
        with pytest.raises((CardRemovedError, CardResetError)):
            card.transmit(bytes.fromhex("8010000002CAFE"))
        assert vr.commands_seen == seen


def test_own_power_off_is_not_a_swap() -> None:
    _vr, backend = plugged("no-interrupt", card=VirtualCard(protocols=(1,)))
    with open_reader(backend, poll_interval=0.02) as reader:
        card = reader.connect()
        drain(reader)
        card.disconnect("unpower")  # active -> inactive, but we did it
        assert drain(reader) == []


# --- watch: hot-plug -------------------------------------------------------------------


def collect(gen: Iterator[Any], until: Any, limit: int = 20) -> list[Any]:
    out: list[Any] = []
    for event in gen:
        out.append(event)
        if until(event) or len(out) >= limit:
            break
    return out


def test_watch_reports_reader_hotplug_and_cards() -> None:
    first = preset_reader("gemalto-pc-twin", card=VirtualCard())
    backend = VirtualBackend(VirtualDevice(first))
    gen = ccid.watch(backend=backend, interval=0.05, timeout=30, quirks=False)
    try:
        start = collect(gen, lambda e: isinstance(e, ev.CardInserted))
        assert [type(e) for e in start] == [ev.ReaderAdded, ev.CardInserted]
        name_a = start[0].reader
        assert start[1] == ev.CardInserted(name_a, 0)

        second = preset_reader("short-apdu", card=None)
        backend.plug(VirtualDevice(second))
        (added,) = collect(gen, lambda e: isinstance(e, ev.ReaderAdded))
        name_b = added.reader
        assert name_b != name_a and added.info is not None

        second.insert(VirtualCard())
        assert collect(gen, lambda e: isinstance(e, ev.CardInserted)) == [
            ev.CardInserted(name_b, 0)]

        first.remove()
        assert collect(gen, lambda e: isinstance(e, ev.CardRemoved)) == [
            ev.CardRemoved(name_a, 0)]

        backend.unplug(first)
        assert collect(gen, lambda e: isinstance(e, ev.ReaderRemoved)) == [
            ev.ReaderRemoved(name_a)]
        backend.unplug(second)
        assert collect(gen, lambda e: isinstance(e, ev.ReaderRemoved)) == [
            ev.ReaderRemoved(name_b)]
    finally:
        gen.close()
    # the readers watch opened are released: anyone can open the next one
    third = preset_reader("gemalto-pc-twin", card=None)
    backend.plug(VirtualDevice(third))
    with open_reader(backend) as reader:
        assert reader.name


def test_watch_without_cards_never_opens() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard())
    backend = VirtualBackend(VirtualDevice(vr))
    with open_reader(backend) as mine:  # the user holds the reader: watch must not steal it
        events = list(ccid.watch(backend=backend, interval=0.05, timeout=0.3, cards=False))
        assert events == [ev.ReaderAdded(mine.name)]
        events = list(ccid.watch(backend=backend, interval=0.05, timeout=0.3, quirks=False))
        assert events == [ev.ReaderAdded(mine.name)]  # could not open it: no card events
        assert mine.connect().transmit(bytes.fromhex("8010000001AA")) == b"\xaa\x90\x00"


def test_watch_timeout_ends_iteration() -> None:
    backend = VirtualBackend()
    assert list(ccid.watch(backend=backend, interval=0.05, timeout=0.2)) == []


def test_event_types_are_frozen_values() -> None:
    a = ev.CardInserted("r", 0)
    assert a == ev.CardInserted("r", 0) and hash(a) == hash(ev.CardInserted("r", 0))
    with pytest.raises(AttributeError):
        a.slot = 1  # type: ignore[misc]
    assert not hasattr(a, "__dict__")
