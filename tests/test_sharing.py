"""Several handles on one slot: sharing modes, transactions, reset and removal detection.

The seed scenarios (El Capitan):
* SCardConnect: an exclusive holder makes a shared connect fail with the sharing violation
  (never a protocol mismatch), and the other way round;
* SCARD_W_RESET_CARD: a loop selects an applet and sends commands while another handle
  resets the card; the loop's next call must fail with CardResetError before anything
  reaches the card, never succeed with the card's 69 85 (applet no longer selected).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import ccid
from ccid.errors import (
    CardRemovedError,
    CardResetError,
    ProtocolError,
    SharingViolationError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, preset_reader
from ccid.testing.apps import CallableApp, default_card_os

pytestmark = pytest.mark.timeout(60)

SELECT = bytes.fromhex("00A4040006A0000000 18FF")
COMMAND = bytes.fromhex("8034000E0E")
APPLET_ANSWER = bytes(range(14)) + b"\x90\x00"


class Recorder:
    """A card application that remembers every APDU the card received."""

    def __init__(self) -> None:
        self.inner = default_card_os()
        self.seen: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, apdu: bytes) -> bytes:
        with self.lock:
            self.seen.append(bytes(apdu))
        return self.inner.process(apdu)


class RecordingCard(VirtualCard):
    def __init__(self, recorder: Recorder, **kw: Any) -> None:
        super().__init__(app=CallableApp(recorder), **kw)
        self.recorder = recorder

    def power_on(self, *args: Any, **kwargs: Any) -> bytes | None:
        self.recorder.inner.reset()  # a reset deselects the applet, as on a real card
        return super().power_on(*args, **kwargs)


def setup(name: str = "gemalto-pc-twin", **card_kw: Any) -> tuple[Any, Recorder, ccid.Reader]:
    recorder = Recorder()
    vr = preset_reader(name, card=RecordingCard(recorder, **card_kw))
    backend = VirtualBackend(VirtualDevice(vr))
    reader = ccid.open_reader(backend=backend, quirks=False)
    return vr, recorder, reader


@pytest.fixture
def world() -> Any:
    vr, recorder, reader = setup()
    yield vr, recorder, reader
    reader.close()


# --- sharing modes (SCardConnect seed) ---------------------------------------------------


def test_shared_connect_while_exclusive_is_a_sharing_violation(world: Any) -> None:
    _, _, reader = world
    lock = reader.connect(mode="exclusive")
    with pytest.raises(SharingViolationError) as info:
        reader.connect()  # default: shared
    assert not isinstance(info.value, ProtocolError)
    assert info.value.pcsc_code == "SCARD_E_SHARING_VIOLATION"
    with pytest.raises(SharingViolationError):
        reader.connect(protocol="T=1")  # asking for a protocol changes nothing
    with pytest.raises(SharingViolationError):
        reader.connect(mode="exclusive")  # a second lock.py
    lock.disconnect()
    assert reader.connect().transmit(COMMAND)[-2:] == b"\x69\x85"  # free again


def test_exclusive_connect_while_shared_is_a_sharing_violation(world: Any) -> None:
    _, _, reader = world
    shared = reader.connect()
    with pytest.raises(SharingViolationError):
        reader.connect(mode="exclusive")
    other = reader.connect()  # shared with shared is fine
    assert other.transmit(SELECT)[-2:] == b"\x90\x00"
    shared.disconnect()
    with pytest.raises(SharingViolationError):
        reader.connect(mode="exclusive")  # `other` still holds the slot
    other.disconnect()
    reader.connect(mode="exclusive").disconnect()


def test_exclusive_connect_during_a_transaction(world: Any) -> None:
    _, _, reader = world
    card = reader.connect()
    with card.transaction(), pytest.raises(SharingViolationError):
        reader.connect(mode="exclusive")


def test_transaction_holds_the_slot(world: Any) -> None:
    _, recorder, reader = world
    a = reader.connect()
    b = reader.connect()
    sequence = [bytes.fromhex("80100000") + bytes((1, i)) for i in range(5)]
    started = threading.Event()
    done: list[bytes] = []

    def other() -> None:
        started.set()
        done.append(b.transmit(bytes.fromhex("8010000001EE")))

    with a.transaction():
        a.transmit(sequence[0])
        thread = threading.Thread(target=other)
        thread.start()
        started.wait(5)
        thread.join(0.2)  # b is waiting for the slot, not interleaving
        for apdu in sequence[1:]:
            a.transmit(apdu)
        assert done == []
    thread.join(10)
    assert done == [b"\xee\x90\x00"]
    # (the card sees each APDU's first six bytes unchanged; T=0 may append Le)
    echo = [apdu[:6] for apdu in recorder.seen if apdu[:2] == b"\x80\x10"]
    assert echo == [*sequence, bytes.fromhex("8010000001EE")]  # A's five in one block


def test_transaction_on_a_stale_handle_fails(world: Any) -> None:
    _, _, reader = world
    a = reader.connect()
    b = reader.connect()
    b.reset()
    with pytest.raises(CardResetError), a.transaction():
        pass


# --- reset detection (SCARD_W_RESET_CARD seed) ------------------------------------------


def test_reset_by_another_handle_is_reported_before_sending(world: Any) -> None:
    vr, recorder, reader = world
    loop = reader.connect()
    assert loop.transmit(SELECT)[-2:] == b"\x90\x00"
    assert loop.transmit(COMMAND) == APPLET_ANSWER
    resetter = reader.connect()
    resetter.reset()  # the card forgets the selected applet
    seen = len(recorder.seen)
    frames = vr.commands_seen
    with pytest.raises(CardResetError) as info:
        loop.transmit(COMMAND)
    assert info.value.pcsc_code == "SCARD_W_RESET_CARD"
    assert len(recorder.seen) == seen and vr.commands_seen == frames  # nothing was sent
    with pytest.raises(CardResetError):  # and it keeps saying so until the handle accepts
        loop.transmit(COMMAND)
    loop.reconnect()
    assert loop.transmit(COMMAND)[-2:] == b"\x69\x85"  # the card really was reset
    assert loop.transmit(SELECT)[-2:] == b"\x90\x00"
    assert loop.transmit(COMMAND) == APPLET_ANSWER


@pytest.mark.parametrize("how", ["reset", "cold", "disconnect-reset", "disconnect-unpower"])
def test_every_kind_of_reset_is_seen(world: Any, how: str) -> None:
    _, recorder, reader = world
    loop = reader.connect()
    loop.transmit(SELECT)
    other = reader.connect()
    if how == "reset":
        other.reset()
    elif how == "cold":
        other.reset(cold=True)
    else:
        other.disconnect(how.split("-")[1])
    seen = len(recorder.seen)
    with pytest.raises(CardResetError):
        loop.transmit(COMMAND)
    assert len(recorder.seen) == seen


def test_the_seed_loop_never_sees_69_85(world: Any) -> None:
    """The seed's two programs: a loop selecting then commanding, a reset from elsewhere."""
    _, _, reader = world
    loop = reader.connect()
    answers: list[bytes] = []
    failure: list[BaseException] = []
    running = threading.Event()

    def looping() -> None:
        loop.transmit(SELECT)
        try:
            while True:
                answers.append(loop.transmit(COMMAND))
                running.set()
        except CCIDErrorType as exc:
            failure.append(exc)

    thread = threading.Thread(target=looping)
    thread.start()
    assert running.wait(10)
    reset = reader.connect()
    reset.disconnect("reset")  # reset.py: connect(disposition=SCARD_RESET_CARD)
    thread.join(20)
    assert not thread.is_alive()
    assert len(answers) >= 1
    assert all(a == APPLET_ANSWER for a in answers)  # never a 69 85 success
    assert len(failure) == 1 and isinstance(failure[0], CardResetError)


CCIDErrorType = ccid.errors.CCIDError


def test_removal_is_reported_before_sending(world: Any) -> None:
    vr, _, reader = world
    card = reader.connect()
    card.transmit(SELECT)
    # the card present at open is reported first
    assert type(reader.wait_for_event(5)).__name__ == "CardInserted"
    vr.remove()
    assert type(reader.wait_for_event(5)).__name__ == "CardRemoved"
    fresh = Recorder()
    vr.insert(RecordingCard(fresh))
    assert type(reader.wait_for_event(5)).__name__ == "CardInserted"
    frames = vr.commands_seen
    with pytest.raises(CardRemovedError) as info:
        card.transmit(COMMAND)
    assert info.value.pcsc_code == "SCARD_W_REMOVED_CARD"
    assert fresh.seen == [] and vr.commands_seen == frames
    new = reader.connect()
    assert new.transmit(SELECT)[-2:] == b"\x90\x00"


def test_removal_during_use_without_waiting_for_the_event(world: Any) -> None:
    vr, _, reader = world
    card = reader.connect()
    vr.remove()
    with pytest.raises(CardRemovedError):
        card.transmit(COMMAND)


def test_disconnected_handle_is_a_usage_error(world: Any) -> None:
    _, _, reader = world
    card = reader.connect()
    card.disconnect()
    with pytest.raises(UsageError):
        card.transmit(COMMAND)
