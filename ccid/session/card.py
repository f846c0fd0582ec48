"""A handle on the card in one slot: what ``Reader.connect`` returns.

A handle remembers the slot's card generation when it connects; once the card was
removed, swapped, reset or powered off by someone else, every call raises
CardRemovedError / CardResetError before anything is sent. Calls of all handles on a slot
take the slot's lock one at a time (``transaction()`` holds it across calls), and
``cancel()`` ends a call waiting in another thread as a timeout would.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccid import trace as _trace
from ccid._args import as_bytes, as_protocol, as_seconds
from ccid.constants import ICCStatus
from ccid.errors import (
    CardError,
    CardMuteError,
    CardRemovedError,
    CardResetError,
    CCIDError,
    NoCardError,
    OperationCancelledError,
    ProtocolError,
    ReaderTimeoutError,
    SharingViolationError,
    SlotError,
    UsageError,
)
from ccid.protocol.atr import ATR
from ccid.session.channel import CANCEL_SLICE, Channel
from ccid.session.exchange import Exchange, NowRun
from ccid.session.monitor import SlotPort
from ccid.session.options import Disposition, check_disposition
from ccid.session.pinpad import PinFormat, Pinpad
from ccid.session.powerup import PowerUp
from ccid.session.slot import Change, SlotState

if TYPE_CHECKING:
    from ccid.reader import Reader

__all__ = ["MAX_APDU_LENGTH", "Card", "Rooms", "card_changed"]

#: Longest command APDU: extended, 4 header + 3 Lc + 65535 data + 2 Le (ISO/IEC 7816-4).
MAX_APDU_LENGTH = 65544

_monotonic = time.monotonic
_NO_SPAN = contextlib.nullcontext()


@dataclass(frozen=True, slots=True, eq=False)
class Rooms:
    """The rooms of one open reader that its card handles work through."""

    channel: Channel
    port: SlotPort
    powerup: PowerUp
    exchange: Exchange
    pinpad: Pinpad


def card_changed(rooms: Rooms, s: SlotState, generation: int, presence: int,
                 exc: CCIDError) -> CardError | None:
    """After an exchange failed the way a removed or swapped card makes it fail: the
    CardRemovedError / CardResetError to raise instead, else None (slot lock held).

    The slot's counters tell when the event thread saw the change; otherwise the reader is
    asked (GetSlotStatus): a card absent or no longer powered was removed or swapped (or
    reset) under the exchange.
    """
    channel = rooms.channel
    name = channel.name
    why = f" ({exc.message})"
    if s.presence_count == presence and s.generation == generation and not (
            channel.closed or channel.removed):
        try:
            reply = channel.command(channel.engine.get_slot_status(s.index), wait=1.0,
                                    ceiling=2.0, check=False)
        except CCIDError:
            return None
        status = reply.icc_status
        if status == ICCStatus.ABSENT:
            rooms.port.seen(s.index, False, True)
        elif status == ICCStatus.INACTIVE:
            s.apply(Change.UNPOWERED, name)
            return CardResetError(f"the card is no longer powered{why}; call reconnect()",
                                  reader=name, slot=s.index)
    s.exchange_ended()  # a teardown the event thread could only mark
    return s.staleness(generation, presence, name, why)


class Card:
    """A handle on the card in one slot. Obtain with ``Reader.connect``."""

    def __init__(self, reader: Reader, rooms: Rooms, slot: SlotState, mode: str) -> None:
        self.reader = reader
        self._rooms = rooms
        self._s = slot
        self.slot = slot.index
        self.mode = mode
        self._generation = -1
        self._presence = -1
        self._connected = False
        #: Calls of this handle in flight (any thread), and whether cancel() asked them
        #: to stop; the flag is cleared when the last of them ends.
        self._calls = 0
        #: cancel() asked the calls in flight to stop (the command channel looks at it).
        self.cancel_requested = False
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<Card {self.reader.name!r} slot {self.slot} {self.protocol} {state}>"

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *exc: object) -> None:
        channel = self._rooms.channel
        if self._connected and not channel.inherited and channel.pid == os.getpid() and \
                not channel.closed:
            with contextlib.suppress(CCIDError):
                self.disconnect()
        self._release()

    # --- bookkeeping ------------------------------------------------------------------

    def _enter(self, ceiling: float) -> float:
        """Start one call of this handle: take the slot within ``ceiling`` seconds and
        return the time left. Pair with :meth:`_leave`.

        Another handle's transaction holds the slot: wait for its end (other threads), or
        refuse at once in the transaction's own thread (it could only wait for itself).
        """
        s = self._s
        if s.owner is not None:
            self._refuse_own_transaction(threading.get_ident())
        with self._calls_lock:
            self._calls += 1
        tls = self._rooms.channel.tls
        tls.card = self
        try:
            if s.lock.acquire(False):
                return ceiling
            return self._wait_slot(ceiling)
        except BaseException:
            tls.card = None
            self._done()
            raise

    def _refuse_own_transaction(self, thread: int) -> None:
        """Another handle's transaction in this ``thread``: it could only wait for itself."""
        s = self._s
        owner = s.owner
        if owner is not None and owner is not self and s.owner_thread == thread:
            raise SharingViolationError(
                "another handle on this card holds a transaction in this thread; use that "
                "handle, or end its transaction first", reader=self.reader.name,
                slot=self.slot)

    def _wait_slot(self, ceiling: float) -> float:
        """Wait for the slot lock held by another thread; the ceiling left once taken."""
        s = self._s
        start = _monotonic()
        end = start + ceiling
        while True:
            left = end - _monotonic()
            if left <= 0:
                owner = s.owner
                if owner is not None and owner is not self:
                    raise SharingViolationError(
                        f"another handle holds a transaction on this card; waited the "
                        f"call's timeout of {ceiling:g} s for it to end",
                        reader=self.reader.name, slot=self.slot)
                raise ReaderTimeoutError(
                    f"the slot stayed busy with another thread's call for the call's timeout "
                    f"of {ceiling:g} s", reader=self.reader.name, slot=self.slot)
            if s.lock.acquire(timeout=min(left, CANCEL_SLICE)):
                return max(0.0, end - _monotonic())
            if self.cancel_requested:
                raise OperationCancelledError(
                    "the call was cancelled (Card.cancel()) while it waited for the slot",
                    reader=self.reader.name, slot=self.slot)
            self._rooms.channel.check_usable()

    def _leave(self) -> None:
        """End a call started by :meth:`_enter` (the slot lock is released)."""
        self._rooms.channel.tls.card = None
        self._s.lock.release()
        self._done()

    def _done(self) -> None:
        with self._calls_lock:
            self._calls -= 1
            if not self._calls:
                self.cancel_requested = False

    def _adopt(self) -> None:
        s = self._s
        with s.state_lock:
            s.handles.add(self)
            if self.mode == "exclusive":
                s.exclusive = self
            self._generation = s.generation
            self._presence = s.presence_count
        self._connected = True

    def _release(self) -> None:
        s = self._s
        with s.state_lock:
            s.handles.discard(self)
            if s.exclusive is self:
                s.exclusive = None
        self._connected = False

    def _check_connected(self) -> None:
        """Refuse on a closed, removed or foreign reader, or a disconnected handle."""
        channel = self._rooms.channel
        if not channel.usable():
            channel.check_usable()
        if not self._connected:
            raise UsageError("the card handle is disconnected", reader=self.reader.name,
                             slot=self.slot)

    def _check(self) -> None:
        """Refuse before anything is sent when the card changed under this handle."""
        self._check_connected()
        if self.mode == "direct":
            return
        self._s.check_handle(self._generation, self._presence, self.reader.name)

    # --- properties -------------------------------------------------------------------

    @property
    def atr(self) -> ATR | None:
        """The parsed ATR (``bytes(card.atr)`` for the raw bytes); None in direct mode."""
        return self._s.atr if self._generation == self._s.generation else None

    @property
    def protocol(self) -> str | None:
        """"T=0" or "T=1" (None in direct mode)."""
        p = self._s.protocol
        return None if p is None else f"T={p}"

    @property
    def connected(self) -> bool:
        return self._connected

    # --- operations -------------------------------------------------------------------

    def transmit(self, apdu: bytes, *, timeout: float | None = None,
                 raw: bool = False) -> bytes:
        """Send a command APDU; return response data + SW1 SW2.

        ``raw=True`` (T=0 only) returns 61xx / 6Cxx as the card gave them.
        """
        apdu, ceiling = self._transmit_args(apdu, timeout)
        if _trace.enabled:  # the one trace test of an APDU when tracing is off
            with _trace.span(self.reader.name, "Card.transmit"):
                return self._transmit(apdu, ceiling, raw)
        return self._transmit(apdu, ceiling, raw)

    def _transmit_args(self, apdu: Any, timeout: float | None) -> tuple[bytes, float]:
        """The checked APDU and the call's ceiling, before anything is sent."""
        reader = self.reader
        if type(apdu) is not bytes:
            apdu = as_bytes(apdu, "the APDU", reader.name, self.slot)
        if self.mode == "direct":
            raise UsageError("a direct-mode handle cannot transmit APDUs", reader=reader.name,
                             slot=self.slot)
        if len(apdu) < 4 or len(apdu) > MAX_APDU_LENGTH:
            raise UsageError(
                f"APDU of {len(apdu)} bytes is shorter than its 4-byte header" if len(apdu) < 4
                else f"APDU of {len(apdu)} bytes is longer than any command APDU (at most "
                f"{MAX_APDU_LENGTH}: 4 header + 3 Lc + 65535 data + 2 Le)",
                reader=reader.name, slot=self.slot)
        ceiling = reader.timeout if timeout is None else as_seconds(timeout, "timeout",
                                                                     reader.name, self.slot)
        return apdu, ceiling

    def _transmit(self, apdu: bytes, ceiling: float, raw: bool) -> bytes:
        ceiling = self._enter(ceiling)
        try:
            self._check()
            try:
                return self._rooms.exchange.transmit(self._s, apdu, ceiling, raw)
            except CCIDError as exc:
                failure = self.exchange_failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
        finally:
            self._leave()

    def exchange_failure(self, exc: BaseException) -> BaseException:
        """What a failed exchange raises: ``exc``, or the card's removal, reset or change
        that it shows, said as such."""
        reader = self.reader
        s = self._s
        if isinstance(exc, NoCardError):
            self._rooms.port.seen(self.slot, False, True)
            return CardRemovedError(f"the card was removed ({exc.message})",
                                    reader=reader.name, slot=self.slot)
        if isinstance(exc, SlotError):
            if exc.bStatus is not None and exc.bStatus & 0x03 == ICCStatus.INACTIVE:
                s.apply(Change.UNPOWERED, reader.name)
                return CardResetError(
                    f"the card is no longer powered ({exc.message}); call reconnect()",
                    reader=reader.name, slot=self.slot)
            return exc
        if isinstance(exc, (ProtocolError, CardMuteError)):
            # T=1 giving up, or a mute card: a card pulled out or swapped mid-exchange
            # looks like this; say so when it is what happened.
            changed = card_changed(self._rooms, s, self._generation, self._presence, exc)
            return exc if changed is None else changed
        return exc

    def transmit_now(self, apdu: bytes, timeout: float | None = None, raw: bool = False
                     ) -> NowRun | None:
        """Start :meth:`transmit` for a caller that must not wait (``ccid.aio`` on its
        event loop): the same checks, the slot and the reader taken only if they are free
        now, and the APDU's driver ready to run. None when this cannot start without
        waiting, or its transfers cannot be made without waiting (a busy slot or reader,
        several busy slots, a backend that cannot tell, tracing on): then run
        :meth:`transmit` in a thread instead. Errors are raised as :meth:`transmit` raises
        them; a failed run's exception goes through :meth:`exchange_failure`."""
        apdu, ceiling = self._transmit_args(apdu, timeout)
        rooms = self._rooms
        channel = rooms.channel
        transport = channel.transport
        if _trace.enabled or transport is None or not channel.serial or \
                not transport.pollable:
            return None
        s = self._s
        if s.owner is not None:
            self._refuse_own_transaction(threading.get_ident())
        # Another call of this thread (another task) may hold the slot's re-entrant lock:
        # the reader's hold below, a plain lock, is what keeps it out then.
        if not s.lock.acquire(False):
            return None
        with self._calls_lock:
            self._calls += 1
        try:
            self._check()
            steps = rooms.exchange.steps(s, apdu, raw)
            held = channel.hold_now()
        except BaseException:
            s.lock.release()
            self._done()
            raise
        if not held:
            s.lock.release()
            self._done()
            return None

        def end() -> None:
            channel.unhold()
            s.lock.release()
            self._done()

        return NowRun(channel, s, steps, _monotonic() + ceiling, held, self, end)

    def cancel(self) -> None:
        """End this handle's calls in flight in other threads (as PC/SC's SCardCancel).

        Safe from any thread. A transmit waiting for the card, or a call waiting for the
        slot, ends within about ``CANCEL_SLICE`` seconds with OperationCancelledError; a
        command in flight is aborted (CCID ABORT) exactly as after a timeout, so the
        reader and the card stay usable. Without a call in flight it does nothing (the
        next call is not affected).
        """
        with self._calls_lock:
            if self._calls:
                self.cancel_requested = True

    @contextlib.contextmanager
    def transaction(self, *, timeout: float | None = None) -> Iterator[Card]:
        """Hold the card for a sequence of APDUs, as PC/SC's SCardBeginTransaction.

        While the block runs, calls of every other handle on this card wait for its end,
        each within its own timeout: a call that runs out of time waiting raises
        SharingViolationError (pcsc-lite answers SCARD_E_SHARING_VIOLATION to another
        handle during a transaction, and its client library retries until the lock goes).
        In the transaction's own thread another handle cannot wait for it, so its calls
        raise SharingViolationError at once. ``timeout`` (default: the reader's) bounds the
        wait for the transaction to begin; ``cancel()`` ends that wait too.
        """
        reader = self.reader
        s = self._s
        ceiling = reader.timeout if timeout is None else as_seconds(timeout, "timeout",
                                                                     reader.name, self.slot)
        self._enter(ceiling)
        self._rooms.channel.tls.card = None
        self._done()  # a transaction holds the slot, it is not a call in flight
        try:
            self._check()
            owner, thread = s.owner, s.owner_thread
            s.owner, s.owner_thread = self, threading.get_ident()
            try:
                yield self
            finally:
                s.owner, s.owner_thread = owner, thread
        finally:
            s.lock.release()

    def reset(self, cold: bool = False, *, protocol: Any = None) -> None:
        """Reset the card (warm by default) and renegotiate; other handles see CardResetError."""
        reader = self.reader
        s = self._s
        wanted = as_protocol(protocol, reader.name, self.slot)
        ceiling = self._enter(reader.timeout)
        try:
            self._check_connected()
            if cold and s.powered:
                self._rooms.powerup.power_off(s)
            if wanted is None and s.protocol is not None and self._generation == s.generation:
                wanted = s.protocol
            self._rooms.powerup.power_up(s, wanted, ceiling)
            self._generation, self._presence = s.mark()
        finally:
            self._leave()

    def reconnect(self, protocol: Any = None) -> None:
        """Accept a reset or a new card: power it if needed and take the new generation."""
        reader = self.reader
        s = self._s
        wanted = as_protocol(protocol, reader.name, self.slot)
        ceiling = self._enter(reader.timeout)
        try:
            self._check_connected()
            if self.mode != "direct" and (not s.powered or
                                          (wanted is not None and wanted != s.protocol)):
                self._rooms.powerup.power_up(s, wanted, ceiling)
            self._generation, self._presence = s.mark()
        finally:
            self._leave()

    def disconnect(self, disposition: Disposition = "leave") -> None:
        """Release the handle; "reset", "unpower" or "eject" act on the card first."""
        check_disposition(disposition, self.reader.name, self.slot)
        if not self._connected:
            return
        reader = self.reader
        s = self._s
        try:
            if disposition != "leave" and self.mode != "direct":
                with s.lock:
                    self._rooms.channel.check_usable()
                    if disposition == "reset":
                        self._rooms.powerup.power_up(s, s.protocol, reader.timeout)
                    elif disposition == "unpower":
                        self._rooms.powerup.power_off(s)
                    else:
                        self._rooms.powerup.eject(s)
        finally:
            self._release()

    def escape(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """PC_to_RDR_Escape on this handle's slot."""
        self._rooms.channel.check_usable()
        return self.reader.escape(data, self.slot, timeout=timeout)

    def secure(self, payload: bytes, *, timeout: float) -> bytes:
        """PC_to_RDR_Secure with a ready PIN_VERIFY / PIN_MODIFY structure (``payload``:
        abData, as a PC/SC client's SCardControl brings it); the card's response.
        ``verify_pin`` / ``modify_pin`` build the structure themselves."""
        reader = self.reader
        payload = as_bytes(payload, "the PIN structure", reader.name, self.slot)
        seconds = as_seconds(timeout, "PIN entry timeout", reader.name, self.slot)
        with self.transaction():
            return self._rooms.pinpad.secure(self._s, payload, seconds)

    # --- PIN entry on the reader's pinpad ---------------------------------------------

    def verify_pin(self, apdu_template: bytes, *, pin_format: PinFormat = "ascii",
                   min_digits: int | None = None, max_digits: int | None = None,
                   timeout: float = 30.0) -> bytes:
        """Let the user type the PIN on the reader's pinpad; return the card's response.

        ``apdu_template``: the VERIFY command, either its 4-byte header (``00 20 00 80``:
        the PIN block of ``pin_format`` is appended) or a whole APDU whose data starts with
        the block's padding. ``min_digits`` / ``max_digits`` default to what the reader's
        firmware says (Gemalto firmware features), else 4 and 12 (at most what the block
        holds). ``timeout``: seconds the user has (1..255). The response (data + SW1 SW2)
        is returned as by ``transmit``; 63Cx means a wrong PIN. Raises UsageError when the
        reader has no usable pinpad, PinCancelledError / PinTimeoutError when the user
        cancels or does not finish.
        """
        return self._pin_operation(0, apdu_template, pin_format, min_digits, max_digits,
                                   timeout, confirm=False, current=True)

    def modify_pin(self, apdu_template: bytes, *, pin_format: PinFormat = "ascii",
                   min_digits: int | None = None, max_digits: int | None = None,
                   confirm: bool = True, current: bool = True,
                   timeout: float = 30.0) -> bytes:
        """Let the user change the PIN on the pinpad (CHANGE REFERENCE DATA).

        ``apdu_template``: the command's 4-byte header (``00 24 00 80``: the current PIN's
        block, then the new PIN's, are appended) or a whole APDU. ``current``: the user
        types the current PIN first; ``confirm``: the new PIN twice. Other arguments and
        errors as ``verify_pin``.
        """
        return self._pin_operation(1, apdu_template, pin_format, min_digits, max_digits,
                                   timeout, confirm=confirm, current=current)

    def _pin_operation(self, operation: int, template: bytes, pin_format: str,
                       min_digits: int | None, max_digits: int | None, timeout: float,
                       *, confirm: bool, current: bool) -> bytes:
        reader = self.reader
        pinpad = self._rooms.pinpad
        payload, apdu, seconds = pinpad.structure(
            operation, template, pin_format, min_digits, max_digits, timeout,
            confirm=confirm, current=current, slot=self.slot, direct=self.mode == "direct")
        name = "Card.verify_pin" if operation == 0 else "Card.modify_pin"
        span = _trace.span(reader.name, name) if _trace.enabled else _NO_SPAN
        with span:
            self._enter(reader.timeout + seconds)
            try:
                self._check()
                response = pinpad.enter(self._s, payload, len(apdu), seconds)
            finally:
                self._leave()
        if len(response) == 2 and response[0] == 0x61 and pinpad.tpdu:
            # T=0 at TPDU level: the reader hands back 61xx; fetch the rest.
            return self.transmit(bytes((apdu[0], 0xC0, 0x00, 0x00, response[1])))
        return response
