"""Reader sessions: list and open readers, power cards, negotiate, exchange APDUs.

The public face of the library::

    import ccid
    with ccid.open_reader() as reader, reader.connect() as card:
        print(card.atr, card.protocol)
        card.transmit(bytes.fromhex("00A4040000"))

This module is the blocking front door; the work happens in the session core's rooms
(``ccid/session/``: the command channel, slot state, power-up, the exchange drivers, the
pinpad, opening), which other front doors (``ccid.aio``, ``ccid serve``) share.

Thread safety: every slot has its own re-entrant lock (an APDU, a ``with
card.transaction()`` block, a power cycle hold it); replies are routed to their commands
by bSeq, so several slots of a reader that allows it (bMaxCCIDBusySlots) run at once and
threads never see each other's answers. Each slot has a card generation counter bumped on
removal, insertion, reset and power-off; a ``Card`` handle of an older generation raises
``CardResetError`` / ``CardRemovedError`` before anything is sent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, Final

from ccid import trace as _trace
from ccid._args import as_bytes, as_protocol, as_seconds
from ccid.constants import HEADER_SIZE, ExchangeLevel, ICCStatus, PINSupport
from ccid.descriptor import CCIDDescriptor
from ccid.errors import (
    ProtocolError,
    ReaderTimeoutError,
    SharingViolationError,
    SlotError,
    UsageError,
)
from ccid.session.card import MAX_APDU_LENGTH as MAX_APDU_LENGTH  # limits, for callers
from ccid.session.card import Card, Rooms
from ccid.session.channel import DEADLINE_MARGIN as DEADLINE_MARGIN
from ccid.session.channel import Channel
from ccid.session.exchange import Exchange, character_level
from ccid.session.monitor import SlotMonitor, SlotPort
from ccid.session.opening import MAX_MESSAGE_LENGTH as MAX_MESSAGE_LENGTH
from ccid.session.opening import (
    QUIRK_ESCAPE_TIMEOUT,
    Quirks,
    ReaderInfo,
    interface_report,
    list_readers,
    make_inert,
    message_limit,
    read_rates,
    register,
    select,
    unregister,
)
from ccid.session.options import READER_WAIT, Mode, ReaderOptions, check_mode
from ccid.session.pinpad import PinFormat, Pinpad
from ccid.session.powerup import PowerUp
from ccid.session.slot import Change, EventQueue, SlotInfo, SlotState
from ccid.transport.iccd import transport_class

__all__ = [
    "Card",
    "PinFormat",
    "Reader",
    "ReaderInfo",
    "SlotInfo",
    "list_readers",
    "open_reader",
]

log = logging.getLogger(__name__)

#: How long close() waits for calls in flight and the event thread before it leaves the
#: release of the USB handle to a background thread.
CLOSE_WAIT: Final = 5.0


def open_reader(selector: Any = None, backend: Any = None, **options: Any) -> Reader:
    """Open a reader by index, name substring, ``"VID:PID"``, serial, USB path or ReaderInfo.

    Options: ``timeout`` (overall ceiling of one call, seconds, default 60),
    ``poll_interval`` (card polling period without interrupt endpoint, default 0.5 s),
    ``events`` (start the slot monitor, default True), ``allow_bad_firmware``,
    ``check_tck`` (refuse ATRs with a bad TCK, default True), ``auto_get_response``
    (T=0: answer 61xx/6Cxx automatically, default True), ``ifsd`` (T=1, default the
    reader's maximum up to 254), ``quirks`` (apply the database's quirks, default True),
    ``open_timeout`` (wait for each reply while opening, default 5 s; quirks of readers
    known to be slow at plug-in multiply it, for the open only).
    """
    info = select(list_readers(backend), selector)
    return Reader._open(info, options)


class Reader:
    """An open CCID reader interface. Use :func:`open_reader`; close it (or use ``with``)."""

    def __init__(self, info: ReaderInfo, options: dict[str, Any]) -> None:
        self.info = info
        self.name = info.name
        #: The checked options of ``open_reader``.
        self.options = ReaderOptions.from_kwargs(options, self.name)
        self.timeout = self.options.timeout
        self.poll_interval = self.options.poll_interval
        self.check_tck = self.options.check_tck
        self.auto_get_response = self.options.auto_get_response
        #: bInterfaceProtocol of the interface (quirks may depend on it).
        self.interface_protocol: int | None = info.usb.interface_protocol
        #: The descriptor after quirks (``info.descriptor``: as the reader declares it).
        self.descriptor: CCIDDescriptor = info.descriptor
        self.data_rates: tuple[int, ...] = ()
        self.clock_frequencies: tuple[int, ...] = ()
        #: Per-slot data rates (GET_DATA_RATES after each slot's quirks); slot 0's are
        #: ``data_rates``.
        self.slot_data_rates: tuple[tuple[int, ...], ...] = ()
        self.warnings: list[str] = []
        self._slots = [SlotState(i, n) for i, n in enumerate(info.slot_names)]
        self._channel = Channel(self.name, len(self._slots))
        self._events = EventQueue()
        self._port = SlotPort(self.name, self._channel, self._slots, self._events,
                              interrupt=info.has_interrupt,
                              poll_interval=self.options.poll_interval)
        self._channel.on_removed = self._port.gone
        self._quirks = Quirks(info, self.name, enabled=False, escape=self.escape,
                              warn=self._warn)
        self._rooms: Rooms | None = None
        self._monitor: SlotMonitor | None = None
        self._registry_key: tuple[int, str] | None = None
        self._close_lock = threading.Lock()
        self._closing = False
        self._open_wait = READER_WAIT

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def _open(cls, info: ReaderInfo, options: dict[str, Any]) -> Reader:
        reader = cls(info, options)
        try:
            reader._do_open()
        except BaseException:
            reader.close()
            raise
        return reader

    def _do_open(self) -> None:
        info, options, channel = self.info, self.options, self._channel
        self._registry_key = register(self, info)
        quirks = self._quirks = Quirks(info, self.name, enabled=options.quirks,
                                       escape=self.escape, warn=self._warn)
        quirks.check_firmware(options.allow_bad_firmware)
        desc, pinpad_off = quirks.adjust_descriptor(self.descriptor)
        self.descriptor = desc
        channel.configure(message_limit(desc, self.name),
                          max(1, min(desc.bMaxCCIDBusySlots or 1, len(self._slots))))
        wait = options.open_timeout
        for quirk in quirks.hooks("open_timeout"):
            wait = float(quirk.open_timeout(wait))
        self._open_wait = wait
        if _trace.enabled:
            _trace.describe(self.name, {
                "vid": info.vid, "pid": info.pid, "bcdDevice": info.bcd_device,
                "interface": info.interface, "ccid_descriptor": info.usb.raw_descriptor.hex(),
                "interrupt": info.has_interrupt, "manufacturer": info.manufacturer,
                "product": info.product, "serial": info.serial,
            })
        transport = transport_class(info.usb)(info.usb, self.name)
        channel.transport = transport
        transport.open()
        transport.read_size = max(transport.read_size,
                                  channel.engine.max_message_length + HEADER_SIZE)
        self.data_rates, self.clock_frequencies, self.slot_data_rates = read_rates(
            transport, desc, quirks, len(self._slots), wait, self.name)
        self._drain_interrupt()
        self._resync(min(wait, self.timeout))
        if quirks.after_open():
            self._revive()
        self._open_wait = READER_WAIT
        exchange = Exchange(channel, desc, auto_get_response=options.auto_get_response)
        self._rooms = Rooms(
            channel, self._port,
            PowerUp(channel, desc, quirks, options, self.slot_data_rates, exchange, self._warn),
            exchange,
            Pinpad(channel, desc, info.descriptor, quirks, exchange, quirks.state, pinpad_off))
        self._port.report_present()
        if options.events:
            self._monitor = SlotMonitor(self._port)
            self._monitor.start()
        log.debug("%s: open at %s, %s level, %d slot(s), rates %d, quirks %s", self.name,
                  info.usb_path, desc.exchange_level.name, len(self._slots),
                  len(self.data_rates), [q.id for q in quirks.active] or "none")

    def _drain_interrupt(self) -> None:
        transport = self._channel.live()
        if not transport.has_interrupt:
            return
        for _ in range(8):  # a stuck endpoint must not keep us here
            if transport.read_interrupt(0, 5) is None:
                return

    def _resync(self, wait: float) -> None:
        """Forget any stale replies and learn each slot's state."""
        channel = self._channel
        channel.assembler.reset()
        for s in self._slots:
            reply = channel.command(channel.engine.get_slot_status(s.index), wait=wait,
                                    ceiling=min(self.timeout, wait * 2), check=False)
            self._port.learned(s, reply.icc_status)

    def _revive(self) -> None:
        """After an unanswered escape: check the reader still answers, else reset it.

        The Gemalto CT700 hangs after an escape it does not know (every later bulk-OUT
        write times out) until a USB reset: do that here so the open leaves a working
        reader and no half-done command behind.
        """
        try:
            self._resync(QUIRK_ESCAPE_TIMEOUT / 2)
            return
        except (ReaderTimeoutError, ProtocolError, SlotError):
            pass
        self._warn("the reader stopped answering after an unanswered escape; resetting it")
        self._channel.live().reset_device()
        for s in self._slots:
            s.apply(Change.FORGOTTEN, self.name)
        self._resync(self._open_wait)

    def _warn(self, message: str) -> None:
        """A fact about the device (a quirk applied, a failed negotiation): logged once and
        kept in ``warnings``. The ``warnings`` module is for API misuse only."""
        self.warnings.append(message)
        text = message if message.startswith(self.name) else f"{self.name}: {message}"
        log.warning("%s", text)

    def report(self) -> Any:
        """What ``ccid parse`` prints: the descriptor as declared (before quirks) and the
        GET_DATA_RATES / GET_CLOCK_FREQUENCIES answers, asked for even when the descriptor
        declares 0 entries (as libccid's parse tool does), with any request error."""
        return interface_report(self.info, self._channel.live(), self._open_wait,
                                self.warnings)

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Reader {self.name!r} {state}>"

    def __del__(self) -> None:
        # A reader its user lost track of is closed here (the event thread does not hold
        # it), with a ResourceWarning as an unclosed file gives. A fork child never
        # touches the parent's handle.
        try:
            channel = self._channel
            if not channel.closed and not channel.inherited and channel.pid == os.getpid():
                warnings.warn(f"unclosed reader {self.name!r}; close it or use 'with'",
                              ResourceWarning, source=self, stacklevel=2)
                self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._channel.closed

    def close(self) -> None:
        """Stop the monitor, release the interface and every resource. Safe to repeat.

        Calls made after close() raise UsageError. Calls in flight in other threads end at
        their next transfer; the USB handle is released only once no transfer is running
        (neither theirs nor the event thread's). close() waits up to ``CLOSE_WAIT``
        seconds for that, then leaves the release to a background thread that waits for
        the last transfer (bounded by that call's own time ceiling).
        """
        channel = self._channel
        if channel.inherited or channel.pid != os.getpid():
            channel.closed = True
            return
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        channel.closed = True  # new calls refuse from here on; calls in flight stop soon
        self._events.wake()
        deadline = time.monotonic() + CLOSE_WAIT
        monitor, self._monitor = self._monitor, None
        monitor_done = True
        if monitor is not None:
            try:
                monitor_done = monitor.stop(CLOSE_WAIT) is not False
            except Exception:  # a monitor that cannot stop must not keep the handle open
                log.exception("%s: stopping the slot monitor failed", self.name)
        channel.wake_all()
        held = channel.take_permits(deadline)
        if monitor_done and held == channel.busy_width:
            self._finish_close(held, None)
            return
        log.info("%s: close() leaves the release of the USB handle to a background thread "
                 "until the transfer in flight ends", self.name)
        threading.Thread(target=self._finish_close, args=(held, monitor), daemon=True,
                         name=f"ccid-close {self.name}").start()

    def _finish_close(self, held: int, monitor: SlotMonitor | None) -> None:
        """Release the USB handle once no transfer runs; ``held``: busy permits taken."""
        channel = self._channel
        try:
            if monitor is not None:
                monitor.join()
            held = channel.take_permits(None, held)
            transport, channel.transport = channel.transport, None
            if transport is not None:
                transport.close()
        finally:
            channel.release_permits(held)
            unregister(self, self._registry_key)
            self._registry_key = None
            channel.wake_all()

    def mark_inherited(self) -> None:
        """The fork hook's: this process is a child, the handle is its parent's."""
        channel = self._channel
        channel.inherited = True
        if channel.transport is not None:
            channel.transport.mark_inherited()
        make_inert(self.info, channel.transport)
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.abandon()

    # --- what is known ----------------------------------------------------------------

    @property
    def has_interrupt(self) -> bool:
        """Card events come from the interrupt endpoint (else they are polled)."""
        return self.info.has_interrupt

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        """What is known of each slot (no I/O)."""
        return tuple(s.info() for s in self._slots)

    @property
    def exchange_level(self) -> ExchangeLevel:
        return self.descriptor.exchange_level

    @property
    def quirks(self) -> list[Any]:
        """The quirks applied to this reader (from the database)."""
        return self._quirks.active

    @property
    def quirk_state(self) -> dict[str, object]:
        """What the quirks learned about the reader (e.g. Gemalto firmware features)."""
        return self._quirks.state

    @property
    def pin_support(self) -> PINSupport:
        """PIN verification / modification on the reader's pinpad (after quirks)."""
        return PINSupport(self.descriptor.bPINSupport & 0x03)

    @property
    def firmware_features(self) -> Any:
        """What the firmware said of itself (Gemalto GET_FIRMWARE_FEATURES), or None."""
        from ccid.quirks.gemalto import GemaltoFirmwareFeatures

        return self.quirk_state.get(GemaltoFirmwareFeatures.state_key)

    def slot_states(self) -> list[bool]:
        """Card present in each slot, as last known."""
        return [bool(s.present) for s in self._slots]

    def slot_status(self, slot: int = 0) -> ICCStatus:
        """Ask the reader (GetSlotStatus) whether a card is there and powered."""
        s = self._slot(slot)
        channel = self._channel
        with s.lock:
            reply = channel.command(channel.engine.get_slot_status(slot), wait=READER_WAIT,
                                    ceiling=self.timeout, check=False)
        self._port.learned(s, reply.icc_status)
        return reply.icc_status

    def _slot(self, slot: int) -> SlotState:
        self._channel.check_usable()
        if isinstance(slot, bool) or not isinstance(slot, int) or \
                not 0 <= slot < len(self._slots):
            raise UsageError(f"slot {slot!r} does not exist (the reader has "
                             f"{len(self._slots)})", reader=self.name)
        return self._slots[slot]

    # --- events -----------------------------------------------------------------------

    def wait_for_event(self, timeout: float | None = None) -> Any:
        """The next card event (CardInserted, CardRemoved, ...), or None after ``timeout``."""
        channel = self._channel
        if channel.foreign() or (channel.closed and not channel.removed):
            channel.check_usable()
        if timeout is not None:
            timeout = as_seconds(timeout, "timeout", self.name, zero=True)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            # no slices: a close() from another thread wakes the queue (EventQueue.wake)
            left = None if end is None else max(0.0, end - time.monotonic())
            event = self._events.get(left)
            if event is not None:
                return event
            if channel.closed and not channel.removed:
                channel.check_usable()
            if end is not None and time.monotonic() >= end:
                return None

    def events(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield events as they come; stops after ``timeout`` seconds without one."""
        while True:
            event = self.wait_for_event(timeout)
            if event is None:
                return
            yield event
            if type(event).__name__ == "ReaderRemoved":
                return

    # --- commands ---------------------------------------------------------------------

    def escape(self, data: bytes, slot: int = 0, *, timeout: float | None = None) -> bytes:
        """PC_to_RDR_Escape: a vendor command to the reader; returns its answer."""
        s = self._slot(slot)
        data = as_bytes(data, "escape data", self.name, slot)
        ceiling = self.timeout if timeout is None else as_seconds(timeout, "timeout",
                                                                  self.name, slot)
        wait = min(ceiling, max(self._open_wait, READER_WAIT))
        channel = self._channel
        with s.lock:
            reply = channel.command(channel.engine.escape(slot, data), wait=wait,
                                    ceiling=ceiling)
        return reply.data

    def connect(self, slot: int = 0, protocol: Any = None, mode: Mode = "shared", *,
                timeout: float | None = None) -> Card:
        """A handle on the card in ``slot``; powers and negotiates on first use.

        ``protocol``: None (the card's choice), 0/1, "T=0"/"T=1". ``mode``: "shared"
        (other handles may use the card between our APDUs), "exclusive" (no other
        handle), "direct" (no card needed; escape and control only).
        """
        s = self._slot(slot)
        check_mode(mode, self.name, s.index)
        wanted = as_protocol(protocol, self.name, s.index)
        ceiling = self.timeout if timeout is None else as_seconds(timeout, "timeout",
                                                                  self.name, s.index)
        rooms = self._rooms
        if rooms is None:  # only while open() runs (a quirk cannot connect)
            raise UsageError("the reader is still opening", reader=self.name)
        if mode != "direct" and self.descriptor.exchange_level is ExchangeLevel.CHARACTER:
            # Refused before power-up: negotiating T=1 on such a reader would already need
            # character-level exchanges, and the reader's refusal would hide the cause.
            raise character_level(self.name, s.index)
        # Refuse at once, before waiting for the slot lock: an exclusive connect while
        # another thread runs a transaction is a sharing violation, not a wait (pcsc-lite).
        self._claim(s, mode)
        with s.lock:
            self._claim(s, mode)
            card = Card(self, rooms, s, mode)
            try:
                if mode != "direct":
                    if not s.powered:
                        rooms.powerup.power_up(s, wanted, ceiling)
                    elif wanted is not None and s.protocol != wanted:
                        others = [h for h in s.handles if h is not card]
                        if others:
                            raise SharingViolationError(
                                f"the card is in use with T={s.protocol} by another handle; "
                                f"T={wanted} needs it alone", reader=self.name, slot=slot)
                        rooms.powerup.power_up(s, wanted, ceiling)
                card._adopt()
            except BaseException:
                card._release()
                raise
        if mode != "direct":
            log.debug("%s slot %d: connected %s, ATR %s, T=%s", self.name, slot, mode,
                      bytes(s.atr).hex(" ") if s.atr else "-", s.protocol)
        return card

    def _claim(self, s: SlotState, mode: str) -> None:
        with s.state_lock:
            live = list(s.handles)
            if s.exclusive is not None and s.exclusive in live:
                raise SharingViolationError(
                    "the slot is held exclusively by another handle", reader=self.name,
                    slot=s.index)
            if mode == "exclusive" and live:
                raise SharingViolationError(
                    f"cannot connect exclusively: {len(live)} other handle(s) hold the slot",
                    reader=self.name, slot=s.index)

