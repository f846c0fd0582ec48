"""Card events of one open reader: a monitor thread, and the port it reports through.

A :class:`SlotMonitor` watches one reader from a daemon thread. With an interrupt-IN
endpoint it blocks in the USB read (the CPU is idle while no card moves) and decodes
NotifySlotChange / HardwareError; without one it polls every slot with GetSlotStatus every
``poll_interval`` seconds. Either way it reports to the reader's :class:`SlotPort`, which
turns reports into slot-table changes (``ccid.session.slot``), generation bumps and events
sent to the reader's event sink:

* :meth:`SlotPort.seen` (slot, present, changed): ``changed`` with ``present`` means the
  card may have been swapped since the reader last knew (removed then inserted);
* :meth:`SlotPort.hardware_error` (slot, seq, code);
* :meth:`SlotPort.gone`: the reader was unplugged (the monitor then stops).
"""

from __future__ import annotations

import logging
import threading

from ccid.constants import ICCStatus
from ccid.errors import (
    CCIDError,
    ProtocolError,
    ReaderRemovedError,
    SharingViolationError,
    SlotBusyError,
    UsageError,
)
from ccid.session.channel import Channel
from ccid.session.options import READER_WAIT, TICK_SECONDS, WAKEABLE_TICK_SECONDS
from ccid.session.slot import (
    CardInserted,
    EventSink,
    HardwareErrorEvent,
    ReaderRemoved,
    SlotState,
)

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "QUICK_RETRIES", "SlotMonitor",
           "SlotPort"]

log = logging.getLogger("ccid.events")

#: Failures in a row the monitor retries at once (a stall is cleared by the first retry).
QUICK_RETRIES = 3
#: After QUICK_RETRIES failures in a row the monitor waits between tries: this long first,
#: doubling up to BACKOFF_MAX. It never gives up: only unplug or close() end it.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0


class SlotPort:
    """Where slot changes of one reader come in (its monitor, its calls) and events go
    out (its sink)."""

    def __init__(self, name: str, channel: Channel, slots: list[SlotState], sink: EventSink,
                 *, interrupt: bool, poll_interval: float) -> None:
        self.name = name
        self.channel = channel
        self.slots = slots
        self.sink = sink
        self.interrupt = interrupt
        self.poll_interval = poll_interval

    def seen(self, slot: int, present: bool, changed: bool) -> None:
        """The reader reported slot ``slot``: update it, bump generations, send events."""
        if 0 <= slot < len(self.slots):
            self.slots[slot].report(present, changed, interrupt=self.interrupt,
                                    reader=self.name, sink=self.sink)

    def learned(self, s: SlotState, status: ICCStatus) -> None:
        """A GetSlotStatus answer of ours for ``s``."""
        s.learn(status != ICCStatus.ABSENT, interrupt=self.interrupt, reader=self.name,
                sink=self.sink)

    def report_present(self) -> None:
        """Cards present at open are the first events (as pcsc_scan and pyscard's
        CardMonitor report them)."""
        for s in self.slots:
            with s.state_lock:
                present = s.present
                atr = bytes(s.atr) if s.powered and s.atr is not None else None
            if present:
                self.sink.put(CardInserted(self.name, s.index, atr))

    def hardware_error(self, slot: int, seq: int, code: int) -> None:
        self.sink.put(HardwareErrorEvent(self.name, slot, seq, code))

    def gone(self) -> None:
        """The reader was unplugged: every handle is stale, ReaderRemoved goes out once."""
        from ccid.session.slot import Change

        if not self.channel.mark_removed():
            return
        for s in self.slots:
            s.apply(Change.READER_GONE, self.name)
        self.sink.put(ReaderRemoved(self.name))

    def poll(self, slot: int) -> ICCStatus:
        """A GetSlotStatus that does not wait behind a long command (monitor polling)."""
        self.channel.check_usable()
        s = self.slots[slot]
        if not s.lock.acquire(timeout=0.05):
            raise SharingViolationError("slot busy", reader=self.name, slot=slot)
        channel = self.channel
        if channel.serial and channel.busy.locked():
            # Another slot holds the reader for a whole APDU exchange (hold): look again
            # at the next poll rather than wait behind it.
            s.lock.release()
            raise SharingViolationError("reader busy", reader=self.name, slot=slot)
        try:
            reply = channel.command(channel.engine.get_slot_status(slot), wait=READER_WAIT,
                                    ceiling=READER_WAIT * 2, check=False)
        finally:
            s.lock.release()
        return reply.icc_status


class SlotMonitor:
    """One daemon thread feeding a reader's slot changes back to it (see module docstring).

    Transient errors do not end it: a stalled interrupt endpoint is cleared (by the
    transport) and read again, a poll that finds the reader busy or gets no answer in time
    is skipped. After ``QUICK_RETRIES`` failures in a row it backs off (``BACKOFF_FIRST``
    doubling to ``BACKOFF_MAX``) and keeps trying. Only the reader's unplug (reported as
    ReaderRemoved) or its close ends the thread.
    """

    def __init__(self, reader: SlotPort) -> None:
        self.reader = reader
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

    # -- control ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def uses_interrupt(self) -> bool:
        """True when slot changes come from the interrupt endpoint, False when polled."""
        return self.reader.interrupt

    def start(self) -> None:
        """Start the thread (no-op if it already runs)."""
        with self._lock:
            if self.running:
                return
            self._stop.clear()
            self.error = None
            self.failures = 0
            name = f"ccid-monitor {self.reader.name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def abandon(self) -> None:
        """In a fork child: the thread does not exist here; only mark it stopped."""
        self._stop.set()
        self._thread = None

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and wait for it up to ``timeout`` seconds (one tick, or
        the poll in flight). True when it has ended; else :meth:`join` waits for the rest."""
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stopping = thread
        transport = self.reader.channel.transport
        if thread is not None and transport is not None and self.uses_interrupt:
            transport.wake_interrupt()
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
            log.exception("slot monitor of %s crashed", self.reader.name)

    def _loop(self) -> None:
        interrupt = self.uses_interrupt
        slots = len(self.reader.slots)
        last: dict[int, int] = {}
        failures = 0
        while not self._stop.is_set():
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
                             self.reader.name, failures)
                failures = 0
            if not interrupt:
                self._stop.wait(self._interval())

    def _failed(self, exc: CCIDError, failures: int) -> None:
        self.failures += 1
        self.last_error = exc
        name = self.reader.name
        if failures == 1:
            log.warning("slot monitor of %s: %s; trying again", name, exc)
        elif failures == QUICK_RETRIES + 1:
            log.warning("slot monitor of %s: %d failures in a row (last: %s); backing off",
                        name, failures, exc)
        else:
            log.debug("slot monitor of %s: failure %d in a row: %s", name, failures, exc)

    def _interval(self) -> float:
        return max(0.01, self.reader.poll_interval)

    def _removed(self) -> None:
        self._stop.set()
        self.reader.gone()

    def _read_interrupt(self, slots: int) -> bool:
        """One interrupt read (up to one tick) and its notices; False once closed."""
        from ccid.messages import HardwareError, parse_interrupt

        transport = self.reader.channel.transport
        if transport is None:  # closed
            return False
        # blocks in libusb for up to one tick: no CPU used while no card moves
        tick = WAKEABLE_TICK_SECONDS if transport.interrupt_wakeable else TICK_SECONDS
        data = transport.read_interrupt(0, int(tick * 1000))
        if self._stop.is_set():
            return False
        if not data:
            return True
        try:
            message = parse_interrupt(bytes(data), slots)
        except ProtocolError as exc:
            log.warning("ignoring malformed interrupt message %s: %s",
                        bytes(data).hex(" "), exc)
            return True
        if isinstance(message, HardwareError):
            self.reader.hardware_error(message.bSlot, message.bSeq, message.bHardwareErrorCode)
            return True
        for slot, change in enumerate(message.slots):
            if change.changed:
                self.reader.seen(slot, change.present, True)
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
            self.reader.seen(slot, present, changed)
        if failed is not None:
            raise failed

    def _poll(self, slot: int) -> int | None:
        try:
            return int(self.reader.poll(slot))
        except (SharingViolationError, SlotBusyError):
            return None  # the slot is busy with a long command: look again next time
        # A ReaderTimeoutError (another slot's long command holding a one-slot-at-a-time
        # reader, or a reader that stopped answering) goes up: the round skips this slot
        # and counts the failure, so a reader that never answers is polled less often.
