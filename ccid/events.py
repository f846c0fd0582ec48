"""Card and reader events: insertion, removal, hardware errors, hot-plug.

A :class:`SlotMonitor` watches one open reader from a daemon thread. With an interrupt-IN
endpoint it blocks in the USB read (the CPU is idle while no card moves) and decodes
NotifySlotChange / HardwareError; without one it polls every slot with GetSlotStatus every
``reader.poll_interval`` seconds. Either way it reports to the reader through three hooks,
and the reader turns them into events, generation bumps and errors for stale handles:

* ``reader._notify_slot(slot, present, changed)``: ``changed`` with ``present`` means
  the card may have been swapped since the reader last knew (removed then inserted);
* ``reader._notify_hardware_error(slot, seq, code)``;
* ``reader._notify_removed()``: the reader was unplugged (the monitor then stops).

:func:`watch` adds reader arrivals and departures. pyusb has no hot-plug API, so it
enumerates every ``interval`` seconds; see its docstring for how it treats open readers.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ccid.constants import ICCStatus
from ccid.errors import (
    CCIDError,
    ProtocolError,
    ReaderRemovedError,
    SharingViolationError,
    SlotBusyError,
    UsageError,
)

__all__ = [
    "CardInserted",
    "CardRemoved",
    "Event",
    "EventQueue",
    "HardwareError",
    "HardwareErrorEvent",
    "ReaderAdded",
    "ReaderRemoved",
    "SlotMonitor",
    "watch",
]

log = logging.getLogger(__name__)

#: How long one interrupt read or one wait lasts, so that stop() (and so a reader's
#: close()) returns promptly. Interrupt messages are one packet each: a read that times out
#: loses none.
TICK_SECONDS = 0.05
#: Failures in a row the monitor retries at once (a stall is cleared by the first retry).
QUICK_RETRIES = 3
#: After QUICK_RETRIES failures in a row the monitor waits between tries: this long first,
#: doubling up to BACKOFF_MAX. It never gives up: only unplug or close() end it.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class CardInserted:
    """A card arrived in ``slot`` of ``reader`` (or was there when the reader opened: that
    one is reported first). ``atr``: the card's ATR when the reader has read it (the card
    was powered by this process), else None; read it with ``reader.connect()``."""

    reader: str
    slot: int
    atr: bytes | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CardRemoved:
    """The card left ``slot`` of ``reader``."""

    reader: str
    slot: int


@dataclass(frozen=True, slots=True)
class HardwareErrorEvent:
    """RDR_to_PC_HardwareError: the reader reported ``code`` (e.g. overcurrent) for a slot."""

    reader: str
    slot: int
    seq: int
    code: int


#: Short name, as in the issue's API list.
HardwareError = HardwareErrorEvent


@dataclass(frozen=True, slots=True)
class ReaderRemoved:
    """The reader was unplugged (or disappeared from enumeration)."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReaderAdded:
    """A reader appeared; ``info`` is its ``ccid.ReaderInfo`` when known."""

    reader: str
    info: Any = field(default=None, compare=False)


Event: TypeAlias = (
    CardInserted | CardRemoved | HardwareErrorEvent | ReaderRemoved | ReaderAdded
)


#: Most events a reader keeps for ``wait_for_event``; see :class:`EventQueue`.
EVENT_QUEUE_MAX = 256


class EventQueue:
    """A reader's pending events, bounded, for a user who may never read them.

    What is dropped, so that memory stays bounded whatever the reader sends:

    * a HardwareErrorEvent equal (slot and code) to one still waiting is coalesced into it
      (``coalesced`` counts them);
    * a slot event (inserted / removed) identical to the last one still waiting for that
      slot is coalesced;
    * when ``limit`` events wait, the oldest one goes (``dropped`` counts them; logged
      once): a slow reader of events sees the latest state, not the whole history.
      ReaderRemoved is always queued.
    """

    def __init__(self, limit: int = EVENT_QUEUE_MAX) -> None:
        self.limit = max(1, limit)
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self.dropped = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Any) -> None:
        with self._cond:
            items = self._items
            if isinstance(event, HardwareErrorEvent):
                if any(isinstance(e, HardwareErrorEvent) and e.slot == event.slot and
                       e.code == event.code for e in items):
                    self.coalesced += 1
                    return
            elif isinstance(event, CardInserted | CardRemoved):
                last = next((e for e in reversed(items) if
                             isinstance(e, CardInserted | CardRemoved) and
                             e.slot == event.slot), None)
                if last is not None and type(last) is type(event):
                    self.coalesced += 1
                    return
            while len(items) >= self.limit:
                items.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("%s: more than %d events waiting; the oldest are dropped",
                                getattr(event, "reader", "?"), self.limit)
            items.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest event, or None when none comes within ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait_for(lambda: bool(self._items), timeout)
            if not self._items:
                return None
            return self._items.popleft()


class SlotMonitor:
    """One daemon thread feeding a reader's slot changes back to it (see module docstring).

    Transient errors do not end it: a stalled interrupt endpoint is cleared (by the
    transport) and read again, a poll that finds the reader busy or gets no answer in time
    is skipped. After ``QUICK_RETRIES`` failures in a row it backs off (``BACKOFF_FIRST``
    doubling to ``BACKOFF_MAX``) and keeps trying. Only the reader's unplug (reported as
    ReaderRemoved) or its close ends the thread.
    """

    def __init__(self, reader: Any, *, interrupt: bool | None = None,
                 poll_interval: float | None = None) -> None:
        # A weak reference: the thread must not keep a reader its user dropped alive (the
        # reader's finalizer closes it, and stops this thread).
        try:
            self._ref: Callable[[], Any] = weakref.ref(reader)
        except TypeError:
            self._ref = lambda: reader
        self._name = str(getattr(reader, "name", "?"))
        self._interrupt = interrupt
        self._poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Exception that ended the thread (None while running or after a clean stop).
        self.error: BaseException | None = None
        #: Most recent transient error the thread went on after (kept after recovery).
        self.last_error: CCIDError | None = None
        #: Transient errors seen since start().
        self.failures = 0

    @property
    def reader(self) -> Any:
        """The watched reader (None once it was garbage-collected)."""
        return self._ref()

    # -- control ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def uses_interrupt(self) -> bool:
        """True when slot changes come from the interrupt endpoint, False when polled."""
        if self._interrupt is not None:
            return self._interrupt
        return bool(getattr(self.reader, "has_interrupt", False))

    def start(self) -> None:
        """Start the thread (no-op if it already runs)."""
        with self._lock:
            if self.running:
                return
            self._stop.clear()
            self.error = None
            self.failures = 0
            name = f"ccid-monitor {self._name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and wait for it up to ``timeout`` seconds (one tick, or
        the poll in flight). True when it has ended; else :meth:`join` waits for the rest."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stopping = thread
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a stopped thread to end; True when it has (or there was none)."""
        thread = self._stopping
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._stopping = None
        return True

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except ReaderRemovedError:
            if not self._stop.is_set():
                self._removed()
        except Exception as exc:  # never let a daemon thread die silently
            self.error = exc
            log.exception("slot monitor of %s crashed", self._name)

    def _loop(self) -> None:
        interrupt = self.uses_interrupt
        slots = self._slot_count()
        last: dict[int, int] = {}
        failures = 0
        while not self._stop.is_set():
            if self.reader is None:
                return  # the reader was dropped by its user (and closed by its finalizer)
            try:
                if interrupt:
                    if not self._read_interrupt(slots):
                        return  # the reader was closed
                else:
                    self._poll_round(slots, last)
            except ReaderRemovedError:
                raise
            except UsageError:
                return  # closed under our feet (or a fork child): nothing to watch
            except CCIDError as exc:
                if self._stop.is_set():
                    return
                failures += 1
                self._failed(exc, failures)
                if failures > QUICK_RETRIES:
                    exponent = min(failures - QUICK_RETRIES - 1, 16)
                    self._stop.wait(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** exponent))
            else:
                if failures:
                    log.info("slot monitor of %s recovered after %d failure(s)",
                             self._name, failures)
                failures = 0
            if not interrupt:
                self._stop.wait(self._interval())

    def _failed(self, exc: CCIDError, failures: int) -> None:
        self.failures += 1
        self.last_error = exc
        name = self._name
        if failures == 1:
            log.warning("slot monitor of %s: %s; trying again", name, exc)
        elif failures == QUICK_RETRIES + 1:
            log.warning("slot monitor of %s: %d failures in a row (last: %s); backing off",
                        name, failures, exc)
        else:
            log.debug("slot monitor of %s: failure %d in a row: %s", name, failures, exc)

    def _interval(self) -> float:
        interval = self._poll_interval
        if interval is None:
            interval = float(getattr(self.reader, "poll_interval", 0.5))
        return max(0.01, interval)

    def _removed(self) -> None:
        self._stop.set()
        reader = self.reader
        if reader is not None:
            reader._notify_removed()

    def _slot_count(self) -> int:
        slots = getattr(self.reader, "slots", 1)
        return slots if isinstance(slots, int) else len(slots)

    def _read_interrupt(self, slots: int) -> bool:
        """One interrupt read (up to one tick) and its notices; False once closed."""
        from ccid.engine import HardwareErrorNotice, SlotChange, parse_interrupt

        reader = self.reader
        transport = None if reader is None else reader._transport
        del reader  # not held across the read: the user may drop the reader meanwhile
        if transport is None:  # closed
            return False
        # blocks in libusb for up to one tick: no CPU used while no card moves
        data = transport.read_interrupt(0, int(TICK_SECONDS * 1000))
        if self._stop.is_set():
            return False
        if not data:
            return True
        reader = self.reader
        if reader is None:
            return False
        try:
            notices = parse_interrupt(bytes(data), slots)
        except ProtocolError as exc:
            log.warning("ignoring malformed interrupt message %s: %s",
                        bytes(data).hex(" "), exc)
            return True
        for notice in notices:
            if isinstance(notice, SlotChange):
                if notice.changed:
                    reader._notify_slot(notice.slot, notice.present, True)
            elif isinstance(notice, HardwareErrorNotice):
                reader._notify_hardware_error(notice.slot, notice.seq, notice.code)
        return True

    def _poll_round(self, slots: int, last: dict[int, int]) -> None:
        """GetSlotStatus on every slot; a slot whose poll fails is skipped this round and
        the first failure is raised once the other slots have been looked at."""
        failed: CCIDError | None = None
        for slot in range(slots):
            if self._stop.is_set():
                return
            try:
                status = self._poll(slot)
            except (ReaderRemovedError, UsageError):
                raise
            except CCIDError as exc:
                failed = failed or exc
                continue
            if status is None:
                continue
            before = last.get(slot)
            last[slot] = status
            present = status != ICCStatus.ABSENT
            # A powered card found present but unpowered was pulled out and put back
            # (or powered off by someone): the reader decides, knowing what it did.
            swapped = before == ICCStatus.ACTIVE and status == ICCStatus.INACTIVE
            changed = swapped or (before is not None and
                                  (before == ICCStatus.ABSENT) != (not present))
            reader = self.reader
            if reader is None:
                return
            reader._notify_slot(slot, present, changed)
        if failed is not None:
            raise failed

    def _poll(self, slot: int) -> int | None:
        reader = self.reader
        if reader is None:
            return None
        try:
            result = reader._poll_slot(slot)
        except (SharingViolationError, SlotBusyError):
            return None  # the slot is busy with a long command: look again next time
        # A ReaderTimeoutError (another slot's long command holding a one-slot-at-a-time
        # reader, or a reader that stopped answering) goes up: the round skips this slot
        # and counts the failure, so a reader that never answers is polled less often.
        if isinstance(result, tuple):  # (present, active) form
            present, active = result[0], result[1]
            if not present:
                return int(ICCStatus.ABSENT)
            return int(ICCStatus.ACTIVE if active else ICCStatus.INACTIVE)
        return None if result is None else int(result)


# --- watch: readers coming and going, cards in them -------------------------------------


def _reader_key(info: Any) -> str:
    for attr in ("path", "usb_path"):
        value = getattr(info, attr, None)
        if value:
            interface = getattr(info, "interface", "")
            return f"{value}:{interface}"
    return str(getattr(info, "name", info))


class _Forwarder:
    """Copies one open reader's card events into the watch queue, tagged with its key."""

    def __init__(self, key: str, reader: Any, out: queue.Queue[tuple[str, Event]]) -> None:
        self.key = key
        self.reader = reader
        self.out = out
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"ccid-watch {getattr(reader, 'name', '?')}")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                event = self.reader.wait_for_event(TICK_SECONDS)
            except CCIDError:
                return
            if event is not None and not self.stop.is_set():
                self.out.put((self.key, event))
                if isinstance(event, ReaderRemoved):
                    return

    def close(self) -> None:
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(2 * TICK_SECONDS + 1.0)
        with contextlib.suppress(CCIDError):
            self.reader.close()


def watch(backend: Any = None, interval: float = 0.5, timeout: float | None = None, *,
          cards: bool = True, readers: dict[str, Any] | None = None,
          stop: threading.Event | None = None, **open_options: Any) -> Iterator[Event]:
    """Yield reader arrivals and departures, and card events of every reader seen.

    Readers present when the watch starts are reported as :class:`ReaderAdded` first.
    Enumeration happens every ``interval`` seconds (pyusb has no hot-plug notification);
    an unplug seen by an open reader's monitor is reported at once.

    With ``cards=True`` each reader is opened (with ``open_options``) to follow its slots:
    cards already present are reported as :class:`CardInserted` after the reader, then
    every change. The readers are closed when the iteration ends. A reader that cannot be
    opened (claimed by another process, or already open in this one: ``watch`` never
    steals a reader from its user) is still reported, only without card events.
    ``cards=False`` never opens anything.

    Iteration ends after ``timeout`` seconds (None: never); close the generator (or break
    out of the loop) to stop early and release the readers.

    ``readers``, when given, is kept filled with the readers this watch opened, by name,
    so that the caller can connect to a card it was told about (``ccid scan`` does).
    ``stop``, when given and set (from any thread), ends the iteration within ``interval``
    seconds: how a watch running in another thread is stopped (``ccid.aio.watch``).
    """
    from ccid.reader import list_readers, open_reader

    deadline = None if timeout is None else time.monotonic() + timeout
    events: queue.Queue[tuple[str, Event]] = queue.Queue()
    known: dict[str, Any] = {}
    forwarders: dict[str, _Forwarder] = {}

    def gone(key: str, name: str) -> None:
        del known[key]
        if readers is not None:
            readers.pop(name, None)
        fwd = forwarders.pop(key, None)
        if fwd is not None:
            fwd.close()
        events.put((key, ReaderRemoved(name)))

    def enumerate_once() -> None:
        try:
            infos = list_readers(backend=backend)
        except CCIDError as exc:
            log.warning("reader enumeration failed: %s", exc)
            return
        current = {_reader_key(i): i for i in infos}
        for key, info in list(known.items()):
            if key not in current:
                gone(key, str(getattr(info, "name", key)))
        for key, info in current.items():
            if key in known:
                continue
            known[key] = info
            name = str(getattr(info, "name", key))
            events.put((key, ReaderAdded(name, info)))
            if cards:
                follow(key, info, name)

    def follow(key: str, info: Any, name: str) -> None:
        try:
            reader = open_reader(info, backend=backend, **open_options)
        except CCIDError as exc:
            log.info("watching %s without card events: %s", name, exc)
            return
        if readers is not None:
            readers[reader.name] = reader
        # Cards already present come first from the reader's own events.
        forwarders[key] = _Forwarder(key, reader, events)

    try:
        enumerate_once()
        next_scan = time.monotonic() + interval
        while stop is None or not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline and events.empty():
                return
            wait = next_scan - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            try:
                key, event = events.get(timeout=max(0.0, wait))
            except queue.Empty:
                pass
            else:
                if isinstance(event, ReaderRemoved) and key in forwarders:
                    # seen by the reader's own monitor: report it once, now
                    gone(key, event.reader)
                    continue
                if key in known or isinstance(event, ReaderRemoved):
                    yield event
                continue
            if time.monotonic() >= next_scan:
                enumerate_once()
                next_scan = time.monotonic() + interval
    finally:
        for fwd in forwarders.values():
            fwd.close()
