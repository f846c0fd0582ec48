"""Card.cancel() and transactions with pcsc-lite's semantics, end to end on virtual readers.

A transaction holds the card: another handle's call waits for it to end within its own
timeout (then SharingViolationError); in the transaction's own thread it cannot wait, so it
is refused at once. ``Card.cancel()`` ends a call in flight in another thread, the command
aborted as after a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import ccid
from ccid.constants import MessageType
from ccid.errors import (
    CCIDError,
    OperationCancelledError,
    ReaderTimeoutError,
    SharingViolationError,
)
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing import faults as F
from ccid.testing.presets import preset_reader

pytestmark = pytest.mark.timeout(60)

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})
APDU = bytes.fromhex("801000000401020304")
ANSWER = bytes.fromhex("010203049000")
KINDS = ["gemalto-pc-twin", "extended-apdu"]


def session(kind: str, **options: Any) -> tuple[Any, ccid.Reader]:
    vr = preset_reader(kind, card=VirtualCard())
    options.setdefault("events", False)
    return vr, ccid.open_reader(backend=VirtualBackend(vr), **options)


def in_thread(body: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``body`` in a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(body())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("protocol", ["T=0", "T=1"])
@pytest.mark.parametrize("kind", KINDS)
def test_cancel_ends_a_transmit_in_flight_and_the_reader_goes_on(kind: str,
                                                                 protocol: str) -> None:
    vr, reader = session(kind)
    with reader:
        card = reader.connect(protocol=protocol if kind == "gemalto-pc-twin" else None)
        vr.inject(F.SlowCard(commands=XFR, delay=30.0))
        thread, out = in_thread(lambda: card.transmit(APDU, timeout=40))
        time.sleep(0.3)
        assert thread.is_alive()
        card.cancel()
        # A correctness bound, not a benchmark: without cancel() the call lasts 30 s.
        thread.join(10)
        assert not thread.is_alive(), "cancel() did not end the call"
        assert isinstance(out[0], OperationCancelledError), out
        assert out[0].reader == reader.name and out[0].pcsc_code == "SCARD_E_CANCELLED"
        vr.clear_faults()
        assert card.transmit(APDU) == ANSWER
        assert card.transmit(APDU) == ANSWER


def test_cancel_without_a_call_in_flight_changes_nothing() -> None:
    _, reader = session("gemalto-pc-twin")
    with reader:
        card = reader.connect()
        card.cancel()
        assert card.transmit(APDU) == ANSWER


def test_cancel_ends_a_wait_for_another_handles_transaction() -> None:
    _, reader = session("gemalto-pc-twin")
    with reader:
        a = reader.connect()
        b = reader.connect()
        with a.transaction():
            thread, out = in_thread(lambda: b.transmit(APDU, timeout=40))
            time.sleep(0.3)
            assert thread.is_alive()
            b.cancel()
            thread.join(10)
            assert not thread.is_alive()
            assert isinstance(out[0], OperationCancelledError), out
        assert b.transmit(APDU) == ANSWER


@pytest.mark.parametrize("kind", KINDS)
def test_same_thread_other_handle_is_refused_during_a_transaction(kind: str) -> None:
    vr, reader = session(kind)
    with reader:
        a = reader.connect()
        b = reader.connect()
        with a.transaction():
            before = vr.commands_seen
            with pytest.raises(SharingViolationError, match="transaction in this thread"):
                b.transmit(APDU)
            assert vr.commands_seen == before  # nothing went to the card
            assert a.transmit(APDU) == ANSWER  # the holder goes on
        assert b.transmit(APDU) == ANSWER


def test_other_thread_waits_its_timeout_then_sharing_violation() -> None:
    _, reader = session("gemalto-pc-twin")
    with reader:
        a = reader.connect()
        b = reader.connect()
        release = threading.Event()

        def hold() -> None:
            with a.transaction():
                release.wait(30)

        holder, _ = in_thread(hold)
        time.sleep(0.2)
        thread, out = in_thread(lambda: b.transmit(APDU, timeout=0.5))
        thread.join(10)  # the transaction lasts 30 s: the call must not wait for it
        assert not thread.is_alive()
        assert isinstance(out[0], SharingViolationError), out
        assert "transaction" in str(out[0]) and "0.5" in str(out[0])
        # transaction() has a timeout too
        with pytest.raises(SharingViolationError), b.transaction(timeout=0.3):
            pass
        release.set()
        holder.join(10)
        assert b.transmit(APDU) == ANSWER


def test_other_thread_gets_the_card_when_the_transaction_ends() -> None:
    _, reader = session("gemalto-pc-twin")
    with reader:
        a = reader.connect()
        b = reader.connect()
        order: list[str] = []
        with a.transaction():
            thread, out = in_thread(lambda: (b.transmit(APDU, timeout=20),
                                             order.append("b"))[0])
            time.sleep(0.3)
            order.append("a")
            assert a.transmit(APDU) == ANSWER
        thread.join(10)
        assert out == [ANSWER] and order == ["a", "b"]


def test_slot_busy_with_another_threads_call_is_a_timeout() -> None:
    vr, reader = session("gemalto-pc-twin")
    with reader:
        a = reader.connect()
        b = reader.connect()
        vr.inject(F.SlowCard(commands=XFR, delay=5.0))
        thread, _ = in_thread(lambda: a.transmit(APDU, timeout=20))
        time.sleep(0.3)
        with pytest.raises(ReaderTimeoutError, match="another thread's call"):
            b.transmit(APDU, timeout=0.5)
        thread.join(20)


def test_reader_and_card_driven_from_a_worker_thread() -> None:
    """Open in one thread, use in another, close in a third."""
    box: dict[str, Any] = {}

    def opener() -> None:
        box["vr"], box["reader"] = session("gemalto-pc-twin")

    t, out = in_thread(opener)
    t.join(10)
    reader = box["reader"]
    t, out = in_thread(lambda: reader.connect().transmit(APDU))
    t.join(10)
    assert out == [ANSWER]
    t, out = in_thread(reader.close)
    t.join(10)
    assert out == [None] and reader.closed
    with pytest.raises(CCIDError):
        reader.connect()
