"""Threads: many threads transmitting on one reader never see each other's answers, and a
multi-slot reader runs its slots concurrently when bMaxCCIDBusySlots allows (and one after
the other when it does not)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

import ccid
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, preset_reader
from ccid.testing.apps import CallableApp, default_card_os

pytestmark = pytest.mark.timeout(120)

THREADS = 8
PER_THREAD = 40


def echo(payload: bytes) -> bytes:
    return bytes((0x80, 0x10, 0x00, 0x00, len(payload))) + payload


def run_threads(target: Callable[[int], None], n: int) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # report, don't lose it in the thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == []


def open_preset(name: str, **card_kw: Any) -> tuple[Any, ccid.Reader]:
    vr = preset_reader(name, card=VirtualCard(**card_kw))
    backend = VirtualBackend(VirtualDevice(vr))
    return vr, ccid.open_reader(backend=backend, quirks=False)


@pytest.mark.parametrize("name,protocol", [("gemalto-pc-twin", "T=0"),
                                           ("gemalto-pc-twin", "T=1"),
                                           ("extended-apdu", None)])
def test_many_threads_one_handle_zero_mismatches(name: str, protocol: str | None) -> None:
    _, reader = open_preset(name)
    with reader:
        card = reader.connect(protocol=protocol)
        mismatches: list[tuple[bytes, bytes]] = []
        count = [0]
        lock = threading.Lock()

        def work(i: int) -> None:
            for k in range(PER_THREAD):
                payload = f"t{i:02d}-{k:03d}-".encode() + os.urandom(8)
                got = card.transmit(echo(payload))
                with lock:
                    count[0] += 1
                    if got != payload + b"\x90\x00":
                        mismatches.append((payload, got))

        run_threads(work, THREADS)
        assert count[0] == THREADS * PER_THREAD
        assert mismatches == []


def test_many_threads_own_handles_zero_mismatches() -> None:
    _, reader = open_preset("gemalto-pc-twin")
    with reader:
        mismatches: list[bytes] = []

        def work(i: int) -> None:
            card = reader.connect()
            for k in range(PER_THREAD):
                payload = bytes((i, k)) + os.urandom(6)
                if card.transmit(echo(payload)) != payload + b"\x90\x00":
                    mismatches.append(payload)
            card.disconnect()

        run_threads(work, THREADS)
        assert mismatches == []


class Arrival:
    """Card application: the default card OS, plus an event set when "slow" arrives."""

    def __init__(self) -> None:
        self.inner = default_card_os()
        self.slow_arrived = threading.Event()

    def __call__(self, apdu: bytes) -> bytes:
        if b"slow" in apdu:
            self.slow_arrived.set()
        return self.inner.process(apdu)


def two_slots(name: str, delay0: float) -> tuple[Any, ccid.Reader]:
    arrival = Arrival()
    slow_card = VirtualCard(app=CallableApp(arrival), delay=delay0, protocols=(0,))
    slow_card.arrival = arrival
    vr = preset_reader(name, card=slow_card)
    vr.insert(VirtualCard(protocols=(0,)), 1)
    backend = VirtualBackend(VirtualDevice(vr))
    return vr, ccid.open_reader(backend=backend, quirks=False)


def race(vr: Any, reader: ccid.Reader) -> list[str]:
    """Slot 0 (a slow card) starts first; slot 1 (a fast one) follows. Who ends first?"""
    slow = reader.connect(slot=0)
    fast = reader.connect(slot=1)
    order: list[str] = []
    lock = threading.Lock()
    slow_started = threading.Event()

    def on_slot0() -> None:
        slow_started.set()
        assert slow.transmit(echo(b"slow")) == b"slow\x90\x00"
        with lock:
            order.append("slot0")

    thread = threading.Thread(target=on_slot0)
    thread.start()
    slow_started.wait(5)
    if reader.descriptor.bMaxCCIDBusySlots >= 2:
        # slot 1 starts once the slow command is at the card (its answer still to come)
        assert vr.card(0).arrival.slow_arrived.wait(10)
    else:
        threading.Event().wait(0.1)  # let slot 0 go first; slot 1 must then queue
    assert fast.transmit(echo(b"fast")) == b"fast\x90\x00"
    with lock:
        order.append("slot1")
    thread.join(30)
    return order


def test_two_slots_run_concurrently_when_the_reader_allows() -> None:
    vr, reader = two_slots("two-slot-concurrent", delay0=1.0)
    with reader:
        assert reader.descriptor.bMaxCCIDBusySlots >= 2 and len(reader.slots) == 2
        assert race(vr, reader) == ["slot1", "slot0"]  # slot 1 did not wait for slot 0


def test_two_slots_take_turns_when_the_reader_has_one_busy_slot() -> None:
    vr, reader = two_slots("two-slot", delay0=0.5)
    with reader:
        assert reader.descriptor.bMaxCCIDBusySlots == 1
        assert race(vr, reader) == ["slot0", "slot1"]  # never a CMD_SLOT_BUSY error


def test_threads_on_two_slots_zero_mismatches() -> None:
    _, reader = two_slots("two-slot-concurrent", delay0=0.0)
    with reader:
        cards = [reader.connect(slot=0), reader.connect(slot=1)]
        bad: list[bytes] = []

        def work(i: int) -> None:
            card = cards[i % 2]
            for k in range(PER_THREAD):
                payload = bytes((i, k, card.slot)) + os.urandom(5)
                if card.transmit(echo(payload)) != payload + b"\x90\x00":
                    bad.append(payload)

        run_threads(work, THREADS)
        assert bad == []
