"""Hardening, end to end through pyusb on virtual readers: the event thread survives
transient errors, card swaps under running exchanges end as card errors, two backends may
both have a ``1-1:1.0``, fork children never inherit a held lock, bad input is a
UsageError that sends nothing, a bad CCID_TRACE only warns, close() waits for transfers in
flight, and voltage classes are tried from 5 V down.

Faults on the interrupt pipe and the check that no USB handle is released under a running
transfer need a pyusb backend that does a little more than ``VirtualBackend``:
:class:`WatchedBackend` below subclasses it (the pyusb backend interface, below our code).
"""

from __future__ import annotations

import collections
import errno
import functools
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import usb.core
from conftest import drain, in_child
from conftest import next_event as _next_event

import ccid
from ccid import events as ev
from ccid import framing, trace
from ccid.constants import Features, Voltage
from ccid.descriptor import parse_ccid_descriptor, parse_clock_frequencies, parse_data_rates
from ccid.errors import (
    CardRemovedError,
    CardResetError,
    CCIDError,
    ProtocolError,
    SharingViolationError,
    UsageError,
)
from ccid.protocol.atr import parse_atr
from ccid.testing import VirtualBackend, VirtualCard, VirtualReader
from ccid.testing.faults import Garbage, NoAnswer, Refuse, SlowCard
from ccid.testing.presets import preset_dump, preset_reader

pytestmark = pytest.mark.timeout(120)

SELECT_MF = bytes.fromhex("00A4000C023F00")
ECHO = bytes.fromhex("8010000003010203")
ECHO_ANSWER = bytes.fromhex("0102039000")
GET_SLOT_STATUS = frozenset({0x65})
WAIT = 10.0  # seconds for an event that must come (the monitor may be backing off)
next_event = functools.partial(_next_event, wait=WAIT,
                               what="no event arrived: the event thread is gone")


class WatchedBackend(VirtualBackend):
    """VirtualBackend that counts transfers running, notes every release of the USB
    handle made while one runs (libusb_close under a pending transfer is undefined
    behaviour on real hardware), and fails interrupt reads with EPIPE on demand."""

    def __init__(self, *devices: Any) -> None:
        self._watch = threading.Lock()
        self.running = 0
        self.released_under_transfer: list[str] = []
        #: interrupt reads still to fail with a stall (EPIPE); -1: all of them
        self.interrupt_stalls = 0
        self.interrupt_reads = 0
        self.cleared: list[int] = []
        super().__init__(*devices)

    def _transfer(self, call: Callable[..., int], *args: Any) -> int:
        with self._watch:
            self.running += 1
        try:
            return call(*args)
        finally:
            with self._watch:
                self.running -= 1

    def bulk_read(self, *args: Any) -> int:
        return self._transfer(super().bulk_read, *args)

    def bulk_write(self, *args: Any) -> int:
        return self._transfer(super().bulk_write, *args)

    def intr_read(self, *args: Any) -> int:
        with self._watch:
            self.interrupt_reads += 1
            stall = self.interrupt_stalls != 0
            if self.interrupt_stalls > 0:
                self.interrupt_stalls -= 1
        if stall:
            raise usb.core.USBError("Pipe error", None, errno.EPIPE)
        return self._transfer(super().intr_read, *args)

    def clear_halt(self, dev_handle: Any, ep: int) -> None:
        self.cleared.append(ep)
        super().clear_halt(dev_handle, ep)

    def release_interface(self, dev_handle: Any, intf: int) -> None:
        if self.running:
            self.released_under_transfer.append("release_interface")
        super().release_interface(dev_handle, intf)

    def close_device(self, dev_handle: Any) -> None:
        if self.running:
            self.released_under_transfer.append("close_device")
        super().close_device(dev_handle)




def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition never met"
        time.sleep(0.005)


# --- 1. the event thread survives transient errors -------------------------------------


def test_event_thread_survives_an_interrupt_stall() -> None:
    vr = preset_reader("gemalto-pc-twin", card=None)
    backend = WatchedBackend(vr)
    with ccid.open_reader(backend=backend, quirks=False) as reader:
        assert reader.has_interrupt
        drain(reader)
        backend.interrupt_stalls = 1
        wait_until(lambda: backend.interrupt_stalls == 0)
        vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        assert 0x80 & backend.cleared[-1]  # the halt of the interrupt-IN endpoint was cleared
        vr.remove()
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)


def test_event_thread_backs_off_and_keeps_trying() -> None:
    vr = preset_reader("gemalto-pc-twin", card=None)
    backend = WatchedBackend(vr)
    with ccid.open_reader(backend=backend, quirks=False) as reader:
        drain(reader)
        backend.interrupt_stalls = -1  # the endpoint fails, again and again
        start = backend.interrupt_reads
        # the read in progress runs out its tick first, then the failing ones begin
        wait_until(lambda: backend.interrupt_reads > start + 1)
        start = backend.interrupt_reads
        time.sleep(1.0)
        tries = backend.interrupt_reads - start
        # A few quick retries, then waits between tries: no busy loop (a loop without
        # pause makes tens of thousands of calls in a second).
        assert tries < 50
        vr.insert(VirtualCard())
        backend.interrupt_stalls = 0  # the endpoint comes back
        assert next_event(reader) == ev.CardInserted(reader.name, 0)


def test_polling_survives_garbage_busy_and_a_poll_without_answer() -> None:
    vr = preset_reader("gemalto-pc-twin", card=None, has_interrupt=False)
    with ccid.open_reader(backend=VirtualBackend(vr), quirks=False,
                          poll_interval=0.02) as reader:
        assert not reader.has_interrupt
        drain(reader)
        vr.inject(Garbage(commands=GET_SLOT_STATUS, count=2))
        vr.inject(Refuse(commands=GET_SLOT_STATUS, error=0xE0, count=2))  # CMD_SLOT_BUSY
        wait_until(lambda: not vr.has_fault(Refuse))
        vr.insert(VirtualCard())
        assert next_event(reader) == ev.CardInserted(reader.name, 0)
        # One poll gets no answer at all: it times out, is aborted, and polling goes on.
        vr.inject(NoAnswer(commands=GET_SLOT_STATUS, count=1))
        wait_until(lambda: not vr.has_fault(NoAnswer))
        sent = vr.commands_seen
        wait_until(lambda: vr.commands_seen >= sent + 2, 20)  # PC_to_RDR_Abort, next poll
        vr.remove()
        assert next_event(reader) == ev.CardRemoved(reader.name, 0)


# --- 2. a card swapped under a running exchange ----------------------------------------


def test_card_swap_seen_while_an_exchange_holds_the_slot_keeps_its_state() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))
    with ccid.open_reader(backend=VirtualBackend(vr), quirks=False) as reader:
        card = reader.connect()
        assert card.transmit(ECHO) == ECHO_ANSWER
        drain(reader)
        with card.transaction():  # what an exchange in flight holds
            assert vr.remove(0) is not None
            vr.insert(VirtualCard(protocols=(1,)), 0)
            assert next_event(reader) == ev.CardRemoved(reader.name, 0)
            assert next_event(reader) == ev.CardInserted(reader.name, 0)
            # The event thread did not tear down the protocol state under the exchange.
            assert card.protocol == "T=1"
            assert reader.slots[0].atr is None and not reader.slots[0].powered
        with pytest.raises(CardRemovedError):
            card.transmit(ECHO)
        card.reconnect()
        assert card.transmit(ECHO) == ECHO_ANSWER


def test_swapping_cards_under_busy_threads_gives_only_card_errors() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))
    reader = ccid.open_reader(backend=VirtualBackend(vr), quirks=False)
    stop = threading.Event()
    kinds: collections.Counter[str] = collections.Counter()
    strange: list[BaseException] = []

    def hammer() -> None:
        card = None
        while not stop.is_set():
            try:
                if card is None:
                    card = reader.connect()
                card.transmit(ECHO)
                kinds["ok"] += 1
            except ProtocolError as exc:  # e.g. T1Error: a swap must not look like this
                strange.append(exc)
            except CCIDError as exc:
                kinds[type(exc).__name__] += 1
                if card is not None:
                    try:
                        card.reconnect()
                    except CCIDError:
                        pass
            except BaseException as exc:  # AttributeError from torn-down state, ...
                strange.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IFSD negotiation cut short by a swap
        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            pulled = vr.remove(0)
            time.sleep(0.003)
            vr.insert(pulled, 0)
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(30)
    reader.close()
    assert not strange, strange[:5]
    assert kinds["ok"] > 0 and kinds["CardRemovedError"] + kinds["CardResetError"] > 0


@pytest.mark.parametrize("events", [False, True])
def test_card_swapped_in_the_middle_of_a_t1_exchange_is_a_card_error(events: bool) -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))
    xfr_blocks: list[bytes] = []

    def swap_at_second_block(frame: bytes) -> list[bytes] | None:
        if frame[0] == 0x6F:
            xfr_blocks.append(frame)
            if len(xfr_blocks) == 2:  # the response comes in several blocks: swap now
                vr.insert(vr.remove(0), 0)
        return None

    with ccid.open_reader(backend=VirtualBackend(vr), quirks=False, events=events,
                          ifsd=32) as reader:
        card = reader.connect()
        assert card.transmit(ECHO) == ECHO_ANSWER
        vr.responder = swap_at_second_block
        with pytest.raises((CardRemovedError, CardResetError)):
            card.transmit(bytes.fromhex("80100000C8") + bytes(200))
        assert len(xfr_blocks) >= 2
        vr.responder = None
        card.reconnect()
        assert card.transmit(ECHO) == ECHO_ANSWER


# --- 3. the in-process registry --------------------------------------------------------


def test_two_backends_with_the_same_usb_path_open_side_by_side() -> None:
    first = VirtualBackend(preset_reader("gemalto-pc-twin"))
    second = VirtualBackend(preset_reader("short-apdu"))
    with ccid.open_reader(backend=first, events=False) as a, \
            ccid.open_reader(backend=second, events=False) as b:
        assert a.info.usb_path == b.info.usb_path
        with a.connect() as ca, b.connect() as cb:
            assert ca.transmit(SELECT_MF)[-2:] == b"\x90\x00"
            assert cb.transmit(SELECT_MF)[-2:] == b"\x90\x00"
        # the same reader on the same backend still conflicts
        with pytest.raises(SharingViolationError, match="already open in this process"):
            ccid.open_reader(backend=second, events=False)


# --- 4. fork: locks held by parent threads ---------------------------------------------


def hold_during_fork(lock: Any, body: Callable[[], int]) -> int:
    """Fork while another thread of the parent holds ``lock``; run ``body`` in the child."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            return in_child(body)
    finally:
        release.set()
        thread.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_opens_a_reader_although_a_parent_thread_held_the_registry_lock() -> None:
    import ccid.session.opening

    backend = VirtualBackend(preset_reader("gemalto-pc-twin"))

    def child() -> int:
        with ccid.open_reader(backend=backend, events=False) as reader, \
                reader.connect() as card:
            return 0 if card.transmit(ECHO) == ECHO_ANSWER else 1

    # open_reader and close take this lock: a thread doing either at fork() time
    assert hold_during_fork(ccid.session.opening._registry_lock, child) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_lists_readers_although_a_parent_thread_held_the_backend_lock() -> None:
    import ccid.transport.usb

    def child() -> int:
        try:
            ccid.list_readers()  # the default backend: takes the lock
        except CCIDError:
            pass  # no libusb here: an error, not a hang
        return 0

    assert hold_during_fork(ccid.transport.usb._default_lock, child) == 0


# --- 5. bad input at the API edges -----------------------------------------------------


@pytest.mark.parametrize("options", [
    {"timeout": "abc"}, {"timeout": -1}, {"timeout": math.nan}, {"timeout": math.inf},
    {"poll_interval": "abc"}, {"poll_interval": 0}, {"open_timeout": None},
    {"events": "no"}, {"quirks": None}, {"check_tck": "yes"}, {"ifsd": 0}, {"ifsd": "x"},
    {"ifsd": 300}, {"ifsd": True}, {"allow_bad_firmware": 2}, {"auto_get_response": []},
])
def test_bad_open_options_are_usage_errors_and_send_nothing(options: dict[str, Any]) -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(vr)
    with pytest.raises(UsageError) as info:
        ccid.open_reader(backend=backend, **options)
    assert info.value.reader == ccid.list_readers(backend=backend)[0].name
    assert vr.commands_seen == 0
    assert not backend.devices[0].claims
    with ccid.open_reader(backend=backend, events=False) as reader:  # nothing left held
        assert not reader.closed


@pytest.mark.parametrize("backend", [object(), "libusb", 3])
def test_a_backend_that_is_not_a_pyusb_backend_is_a_usage_error(backend: Any) -> None:
    with pytest.raises(UsageError, match="pyusb backend"):
        ccid.list_readers(backend=backend)
    with pytest.raises(UsageError, match="pyusb backend"):
        ccid.open_reader(backend=backend)


@pytest.mark.parametrize("call", [
    lambda: parse_atr("3B00"), lambda: parse_atr(None), lambda: parse_atr(5),
    lambda: parse_atr([0x3B, 300]), lambda: parse_ccid_descriptor("x" * 54),
    lambda: parse_ccid_descriptor(None), lambda: parse_ccid_descriptor(54),
    lambda: parse_data_rates("abcd"), lambda: parse_data_rates(None),
    lambda: parse_clock_frequencies(3), lambda: parse_data_rates(b"\x01\0\0\0", "1"),
])
def test_parsers_given_no_bytes_raise_usage_error(call: Callable[[], Any]) -> None:
    with pytest.raises(UsageError):
        call()


def test_parsers_still_take_bytes_like_values() -> None:
    raw = bytes.fromhex("3B00")
    assert parse_atr(bytearray(raw)) == parse_atr(raw) == parse_atr(list(raw))
    assert parse_data_rates(memoryview(b"\x80\x25\0\0")) == (9600,)


def test_split_extended_with_no_room_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        framing.split_extended(b"\x00\xa4\x04\x00", 0)


@pytest.fixture
def session() -> Any:
    vr = preset_reader("gemalto-pc-twin")
    with ccid.open_reader(backend=VirtualBackend(vr), events=False, quirks=False) as reader:
        card = reader.connect()
        yield vr, reader, card


CALLS_ON_A_READER: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("escape int", lambda r, c: r.escape(3)),
    ("escape str", lambda r, c: r.escape("x")),
    ("escape None", lambda r, c: r.escape(None)),
    ("escape values", lambda r, c: r.escape([1, 256])),
    ("escape timeout str", lambda r, c: r.escape(b"\x00", timeout="x")),
    ("escape timeout 0", lambda r, c: r.escape(b"\x00", timeout=0)),
    ("escape slot True", lambda r, c: r.escape(b"\x00", slot=True)),
    ("card escape int", lambda r, c: c.escape(3)),
    ("connect protocol", lambda r, c: r.connect(protocol=3)),
    ("connect mode", lambda r, c: r.connect(mode="x")),
    ("connect timeout", lambda r, c: r.connect(timeout="x")),
    ("reset protocol", lambda r, c: c.reset(protocol="T=9")),
    ("reconnect protocol", lambda r, c: c.reconnect(protocol=[1])),
    ("disconnect disposition", lambda r, c: c.disconnect("foo")),
    ("wait_for_event negative", lambda r, c: r.wait_for_event(-1)),
    ("wait_for_event str", lambda r, c: r.wait_for_event("1")),
    ("events negative", lambda r, c: next(r.events(-1))),
]


@pytest.mark.parametrize("call", [c for _, c in CALLS_ON_A_READER],
                         ids=[n for n, _ in CALLS_ON_A_READER])
def test_misuse_of_a_reader_is_a_usage_error_naming_it_and_sends_nothing(
        session: Any, call: Callable[[Any, Any], Any]) -> None:
    vr, reader, card = session
    seen = vr.commands_seen
    with pytest.raises(UsageError) as info:
        call(reader, card)
    assert info.value.reader == reader.name
    assert vr.commands_seen == seen
    assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"  # and the session goes on


TRANSMIT_MISUSE: list[tuple[str, Callable[[Any], Any]]] = [
    ("int", lambda c: c.transmit(5)),
    ("hex text", lambda c: c.transmit("00A4040000")),
    ("None", lambda c: c.transmit(None)),
    ("values over 255", lambda c: c.transmit([0x00, 0xA4, 0x04, 0x00, 300])),
    ("timeout text", lambda c: c.transmit(SELECT_MF, timeout="x")),
    ("timeout negative", lambda c: c.transmit(SELECT_MF, timeout=-1)),
    ("timeout nan", lambda c: c.transmit(SELECT_MF, timeout=math.nan)),
]


@pytest.mark.parametrize("call", [c for _, c in TRANSMIT_MISUSE],
                         ids=[n for n, _ in TRANSMIT_MISUSE])
def test_transmit_misuse_is_a_usage_error_and_sends_nothing(
        session: Any, call: Callable[[Any], Any]) -> None:
    vr, reader, card = session
    seen = vr.commands_seen
    with pytest.raises(UsageError) as info:
        call(card)
    assert (info.value.reader, info.value.slot) == (reader.name, 0)
    assert vr.commands_seen == seen


def test_transmit_takes_bytes_like_values(session: Any) -> None:
    _, _, card = session
    for apdu in (SELECT_MF, bytearray(SELECT_MF), memoryview(SELECT_MF), list(SELECT_MF)):
        assert card.transmit(apdu)[-2:] == b"\x90\x00"


# --- 6. a bad CCID_TRACE path ----------------------------------------------------------


def test_bad_ccid_trace_path_warns_once_and_the_library_works(tmp_path: Any) -> None:
    script = (
        "import ccid\n"
        "from ccid.testing import preset\n"
        "for _ in range(2):\n"
        "    with ccid.open_reader(backend=preset('gemalto-pc-twin'), events=False) as r:\n"
        "        print(r.connect().transmit(bytes.fromhex('00A4000C023F00')).hex())\n"
    )
    target = tmp_path / "no" / "such" / "directory" / "trace.log"
    env = {**os.environ, "CCID_TRACE": str(target)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9000", "9000"]
    assert done.stderr.count("CCID_TRACE") == 1
    assert "Traceback" not in done.stderr
    assert not target.exists()


# --- 7. close() while transfers are in flight ------------------------------------------


def test_close_while_threads_transmit_waits_for_their_transfers() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,), delay=0.2))
    backend = WatchedBackend(vr)
    # no event thread: close() goes straight for the handle, nothing else delays it
    reader = ccid.open_reader(backend=backend, quirks=False, events=False)
    outcomes: list[str] = []
    strange: list[BaseException] = []
    started = threading.Barrier(5)

    def transmit_until_closed() -> None:
        card = reader.connect()
        started.wait()
        while True:
            try:
                assert card.transmit(ECHO) == ECHO_ANSWER
            except CCIDError as exc:
                outcomes.append(type(exc).__name__)
                return
            except BaseException as exc:
                strange.append(exc)
                return

    threads = [threading.Thread(target=transmit_until_closed) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    wait_until(lambda: backend.running > 0)  # a transfer is on its way
    reader.close()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not strange, strange
    assert outcomes == ["UsageError"] * 4  # the reader was closed, not unplugged
    assert backend.released_under_transfer == []
    assert not backend.devices[0].claims
    card = None
    with pytest.raises(UsageError, match="closed"):
        card = reader.connect()
    assert card is None


def test_close_while_the_polling_thread_is_mid_poll() -> None:
    vr = preset_reader("gemalto-pc-twin", has_interrupt=False)
    backend = WatchedBackend(vr)
    reader = ccid.open_reader(backend=backend, quirks=False, poll_interval=0.01)
    with reader.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    vr.inject(SlowCard(commands=GET_SLOT_STATUS, delay=2.5, count=None))
    wait_until(lambda: backend.running > 0)  # the monitor waits for its poll's answer
    reader.close()
    assert backend.released_under_transfer == []
    assert not backend.devices[0].claims
    assert not [t for t in threading.enumerate() if t.name.startswith("ccid-monitor")
                and reader.name in t.name]
    with pytest.raises(UsageError, match="closed"):
        reader.escape(b"\x00")
    with pytest.raises(UsageError, match="closed"):
        reader.wait_for_event(0)


def test_close_from_two_threads_at_once() -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = WatchedBackend(vr)
    reader = ccid.open_reader(backend=backend)
    threads = [threading.Thread(target=reader.close) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_until(lambda: not backend.devices[0].claims)
    assert backend.released_under_transfer == []
    with ccid.open_reader(backend=backend, events=False) as again:  # registry free
        assert not again.closed


# --- 9. voltage classes, 5 V first -----------------------------------------------------


@pytest.mark.parametrize(("support", "features", "card_classes", "expected"), [
    (0x07, 0, Voltage.V1_8, [1, 2, 3]),  # 5 V, 3 V, then 1.8 V
    (0x05, 0, Voltage.V1_8, [1, 3]),  # classes the reader lacks are skipped
    (0x06, 0, Voltage.V1_8, [2, 3]),
    (0x07, 0, Voltage.V3_0, [1, 2]),  # stops at the first class the card takes
    (0x07, Features.AUTO_VOLTAGE, Voltage.V1_8, [0]),  # the reader chooses
])
def test_voltage_classes_are_tried_from_5_v_down(support: int, features: int,
                                                  card_classes: Voltage,
                                                  expected: list[int]) -> None:
    dump = preset_dump("gemalto-pc-twin")
    dump = {**dump, "bVoltageSupport": support, "dwFeatures": dump["dwFeatures"] | features}
    vr = VirtualReader.from_descriptor_dump(dump)
    vr.insert(VirtualCard(voltages=card_classes))
    with ccid.open_reader(backend=VirtualBackend(vr), quirks=False, events=False) as reader, \
            trace.capture() as records, reader.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    sent = [r.data for r in records if r.direction == "->"]
    powers = [frame for frame in sent if frame[0] in (0x62, 0x63)]  # IccPowerOn / Off
    assert [frame[7] for frame in powers if frame[0] == 0x62] == expected  # bPowerSelect
    # each refused class is deactivated before the next is tried (ISO/IEC 7816-3 6.2.4)
    assert [frame[0] for frame in powers] == [0x62, 0x63] * (len(expected) - 1) + [0x62]


def test_message_parsers_refuse_text_with_a_usage_error() -> None:
    from ccid.errors import UsageError
    from ccid.messages import parse_interrupt, parse_message

    for call in (lambda: parse_message("65 00"), lambda: parse_interrupt("50 02", 1),
                 lambda: parse_message(5)):
        with pytest.raises(UsageError):
            call()
