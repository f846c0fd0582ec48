"""The command channel: every CCID command of a reader goes out and comes back here.

It owns the transport, frame assembly, the bSeq counter (the engine), the reply mailbox
for readers that run several slots at once, abort, drain and the stall retry. Three paths:

* the **general path**, :meth:`Channel.command`: any command, its reply checked by the
  engine, with time extensions, stale frames, replies in several transfers, other slots'
  replies routed by (bSeq, bSlot), and timeouts ending in ABORT;
* the **fast path**, :meth:`Channel.xfr` / :meth:`Channel.pump`: XfrBlocks of one APDU
  exchange while the caller holds a one-busy-slot reader (:meth:`Channel.hold`): write,
  one read, one reply check in C (``framing.reply_code`` / ``framing.Chain``). Anything
  unexpected in a reply hands over to the general path from the read already made;
* the **no-wait path**, :meth:`Channel.xfr_now` / :meth:`Channel.pump_now`, for
  ``ccid.aio`` on its event loop: the fast path's transfers, made only when the backend
  says they will not wait; anything else is handed back as a callable that goes on through
  the other two paths in a thread that may block.

Whether the channel may be used at all is one check, :meth:`Channel.live`: open, not
unplugged, this process's (a fork child never touches its parent's handle).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from functools import partial
from typing import Any, Final, Protocol

from ccid import trace as _trace
from ccid.engine import Discarded, Engine, FrameAssembler, Pending, Reply
from ccid.errors import (
    CCIDError,
    OperationCancelledError,
    ProtocolError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    TransportError,
    UsageError,
)
from ccid.framing import reply_code as _reply_code
from ccid.session.slot import SlotState
from ccid.transport.usb import UsbTransport

__all__ = [
    "ABORT_SHARE",
    "ABORT_WAIT",
    "AT_FORK",
    "CANCEL_SLICE",
    "CONTINUATION_WAIT",
    "DEADLINE_MARGIN",
    "Channel",
    "LeftChain",
]

log = logging.getLogger("ccid.reader")

#: Longest pause inside one frame before it counts as truncated.
CONTINUATION_WAIT: Final = 0.5
#: Most time given to the abort procedure after a timeout. The abort runs inside the
#: call's own ceiling: waiting for the reply stops ``ABORT_SHARE`` of the call's time (at
#: most ABORT_WAIT) before the ceiling, and the abort uses what is left.
ABORT_WAIT: Final = 1.0
ABORT_SHARE: Final = 0.2
#: What a call may overrun its ceiling by (thread scheduling, the last USB request's own
#: granularity): documented, and checked by the fault-matrix test.
DEADLINE_MARGIN: Final = 0.05
#: Longest single blocking read or lock wait while a call waits: a ``Card.cancel()``, a
#: ``close()`` or the caller's ceiling is noticed within this time.
CANCEL_SLICE: Final = 0.1
#: With the at-fork hook (ccid.session.opening) every inherited channel is marked at once;
#: without it (no fork() on this platform) comparing process ids is the fallback.
AT_FORK: Final = hasattr(os, "register_at_fork")

_monotonic = time.monotonic
_WAIT_SHARE = 1.0 - ABORT_SHARE
_XFR_BLOCK, _DATA_BLOCK = 0x6F, 0x80


def _write_timeout(wait: float, left: float) -> float:
    """How long one bulk-OUT write may take: a healthy reader takes a frame in
    milliseconds, so a wedged one should not cost a whole card timeout (but at least 0.5 s),
    and never past the call's ``left`` seconds."""
    return min(left, max(wait, 0.5))


def _reply_wait(left: float) -> float:
    """The part of ``left`` seconds a reply may take, leaving the abort its share."""
    return left - min(ABORT_WAIT, ABORT_SHARE * left)


def _block_wait(base: float, bwi: int, left: float) -> float:
    """The wait for one block's reply: the slot's wait (times a T=1 WTX multiplier
    ``bwi``), cut to leave the abort its share of the ``left`` seconds."""
    wait = base * bwi if bwi > 1 else base
    return wait if wait <= left * _WAIT_SHARE else _reply_wait(left)


class LeftChain(Exception):
    """A successful reply that the chain driving an exchange does not expect (T=1 error
    recovery, an S-block, a broken response chain): the general code goes on from it."""

    def __init__(self, reply: bytes) -> None:
        super().__init__("reply outside the chain's expected path")
        self.reply = reply


class Caller(Protocol):
    """The handle whose call runs in a thread (``Card``): cancel() sets its flag."""

    slot: int
    cancel_requested: bool


class Wire:
    """The transport side of a channel: frames out (the stall retry), frames in (assembly,
    sliced reads that see a cancel or a close, the stall retry), replies routed to the
    thread that waits for them by (bSeq, bSlot), and draining what nobody waits for."""

    def __init__(self, channel: Channel) -> None:
        self.ch = channel
        # Reply routing: one thread reads bulk-IN at a time and files other threads'
        # replies by (bSeq, bSlot); at most bMaxCCIDBusySlots commands are outstanding.
        self._rx = threading.Condition(threading.Lock())
        self._rx_busy = False
        self._mailbox: dict[tuple[int, int], bytes] = {}
        #: Commands in flight on a several-busy-slots reader: bSeq -> bSlot. The engine
        #: skips these bSeq values when the counter wraps.
        self.outstanding: dict[int, int] = {}
        self._write_lock = threading.Lock()

    def expect(self, seq: int, slot: int) -> None:
        """A command (``seq``, ``slot``) is in flight: route its reply to its caller."""
        with self._rx:
            self.outstanding[seq] = slot

    def done(self, seq: int, slot: int) -> None:
        """The command (``seq``, ``slot``) ended: drop its routing and any late reply."""
        with self._rx:
            if self.outstanding.get(seq) == slot:
                del self.outstanding[seq]
            self._mailbox.pop((seq, slot), None)

    def read_sliced(self, transport: UsbTransport, timeout: float) -> bytes:
        """``transport.read(timeout)`` in reads of at most CANCEL_SLICE, so that a
        ``Card.cancel()`` or a close() ends the wait promptly.

        Where a read that times out loses the packets it took (libusb through pyusb), a
        slice waiting for a reply reads one packet only: a slice ending while a long frame
        comes in would otherwise drop its first packets. The rest of a frame is read whole
        (``read_frame`` goes on once part of it is held; it follows at once on the bus)."""
        if timeout <= CANCEL_SLICE:
            return transport.read(timeout)
        read = transport.read
        if not transport.keeps_partial_reads:
            if self.ch.assembler.pending_bytes:
                return transport.read(timeout)  # the rest of a frame: one transfer
            read = transport.read_packet
        end = _monotonic() + timeout
        while True:
            left = end - _monotonic()
            try:
                return read(left if left < CANCEL_SLICE else CANCEL_SLICE)
            except ReaderTimeoutError:
                stop = self.ch.stop_reason()
                if stop is not None:
                    raise stop from None
                if end - _monotonic() <= 0.001:
                    raise

    def write(self, transport: UsbTransport, frame: bytes, timeout: float) -> None:
        try:
            if self.ch.serial:
                transport.write(frame, timeout)
            else:
                with self._write_lock:
                    transport.write(frame, timeout)
        except (ReaderTimeoutError, TransportError):
            raise
        except ReaderError:
            # bulk-OUT stalled: the halt is cleared and the frame never arrived, so
            # sending it again is safe (once).
            with self._write_lock:
                transport.write(frame, timeout)

    def receive(self, seq: int, slot: int, timeout: float) -> bytes:
        """The next frame for (``seq``, ``slot``) (or a stale one), routing others'
        replies by (bSeq, bSlot)."""
        ch = self.ch
        end = _monotonic() + timeout
        if ch.serial:
            return self.read_frame(end)
        key = (seq, slot)
        with self._rx:
            while True:
                frame = self._mailbox.pop(key, None)
                if frame is not None:
                    return frame
                if not self._rx_busy:
                    self._rx_busy = True
                    break
                left = end - _monotonic()
                if left <= 0:
                    raise ReaderTimeoutError("no reply in time", reader=ch.name)
                self._rx.wait(min(left, CANCEL_SLICE))
                stop = ch.stop_reason()
                if stop is not None:
                    raise stop
        try:
            while True:
                frame = self.read_frame(end)
                fseq = frame[6] if len(frame) > 6 else -1
                fslot = frame[5] if len(frame) > 6 else -1
                if fseq == seq or self.outstanding.get(fseq) != fslot:
                    return frame
                with self._rx:
                    self._mailbox[(fseq, fslot)] = frame
                    self._rx.notify_all()
        finally:
            with self._rx:
                self._rx_busy = False
                self._rx.notify_all()

    def read_serial(self, end: float, wait: float, got: Any = None) -> bytes:
        """:meth:`read_frame` with its common case first: one read, one whole frame.

        ``got``: that read was already made by the caller (its bytes or its exception)."""
        ch = self.ch
        transport = ch.transport
        assembler = ch.assembler
        if transport is None or (got is None and (
                assembler.pending_bytes or not ch.usable())):
            return self.read_frame(end)
        try:
            if got is None:
                got = self.read_sliced(transport, wait)
            elif isinstance(got, BaseException):
                raise got
            frame = assembler.feed(got)
        except (ReaderTimeoutError, TransportError):
            assembler.reset()
            raise
        except ProtocolError as exc:
            raise ProtocolError(exc.message, reader=ch.name) from None
        except ReaderError:
            # A stalled bulk-IN: the transport cleared the halt; the reply may still be
            # there, so read once more before giving up.
            assembler.reset()
            return self.read_frame(end, stalls=1)
        if frame is None:  # the frame spans several transfers
            return self.read_frame(end)
        if _trace.enabled:
            transport.trace_in(frame)
        return frame

    def read_frame(self, end: float, stalls: int = 0) -> bytes:
        ch = self.ch
        transport = ch.live()
        assembler = ch.assembler
        while True:
            left = end - _monotonic()
            partial = assembler.pending_bytes
            if left <= 0:
                # Also with part of a frame held: a reply trickling in must not keep the
                # call alive past its ceiling (the caller aborts the command).
                assembler.reset()
                raise ReaderTimeoutError(
                    f"no complete reply in time ({partial} bytes of a frame came)"
                    if partial else "no reply in time", reader=ch.name)
            cut = partial > 0 and left > CONTINUATION_WAIT
            if cut:
                # The rest of a frame follows at once on a healthy bus: do not wait a
                # whole card timeout for bytes that will never come.
                left = CONTINUATION_WAIT
            try:
                chunk = self.read_sliced(transport, left)
            except ReaderTimeoutError:
                assembler.reset()
                if cut:  # silence within the call's time: the frame was cut short
                    raise ProtocolError(
                        f"reply truncated: the transfer stopped after {partial} bytes",
                        reader=ch.name) from None
                raise
            except (ReaderRemovedError, TransportError):
                assembler.reset()
                raise
            except ReaderError:
                # A stalled bulk-IN: the transport cleared the halt; the reply may still
                # be there, so read once more before giving up.
                assembler.reset()
                stalls += 1
                if stalls > 1:
                    raise
                continue
            try:
                frame = assembler.feed(chunk)
            except ProtocolError as exc:
                raise ProtocolError(exc.message, reader=ch.name) from None
            if frame is not None:
                if _trace.enabled:
                    transport.trace_in(frame)
                return frame

    def drain(self, quiet: float) -> None:
        """Drop frames nobody waits for until the reader is ``quiet`` seconds silent (at
        most 16 of them); other slots' replies still reach their callers."""
        ch = self.ch
        transport = ch.transport
        if transport is None:
            return
        if not ch.serial:
            self._drain_routed(quiet)
            return
        ch.assembler.reset()
        for _ in range(16):
            try:
                transport.read(quiet)
            except ReaderTimeoutError:
                break
            except ReaderRemovedError:
                ch.lost()
                raise
            except CCIDError:
                break
        ch.assembler.reset()

    def _drain_routed(self, quiet: float) -> None:
        """:meth:`drain` with other slots' commands in flight: their replies go to the
        mailbox by bSeq, only frames nobody waits for are dropped."""
        ch = self.ch
        end = _monotonic() + quiet
        with self._rx:
            while self._rx_busy:
                # Another thread is reading: it routes every frame by bSeq itself.
                left = end - _monotonic()
                if left <= 0:
                    return
                self._rx.wait(left)
            self._rx_busy = True
        try:
            for _ in range(16):
                try:
                    frame = self.read_frame(_monotonic() + quiet)
                except ReaderTimeoutError:
                    break
                except ReaderRemovedError:
                    ch.lost()
                    raise
                except ProtocolError:
                    continue  # an unreadable frame nobody can claim
                except CCIDError:
                    break
                fseq = frame[6] if len(frame) > 6 else -1
                fslot = frame[5] if len(frame) > 6 else -1
                with self._rx:
                    if self.outstanding.get(fseq) == fslot:
                        self._mailbox[(fseq, fslot)] = frame
                        self._rx.notify_all()
        finally:
            with self._rx:
                self._rx_busy = False
                self._rx.notify_all()

    def wake_all(self) -> None:
        """Wake the threads waiting for the mailbox (close())."""
        with self._rx:
            self._rx.notify_all()


class Channel:
    """One reader's command channel (see the module docstring).

    Over 500 lines on purpose: the general path, the fast path and the no-wait path of the
    asyncio door are three ways through the same per-frame steps (``_lean``, ``_settle``,
    ``_write_read``, the abort) and their invariants (who holds the reader, what a partial
    frame means); split into classes they would reach into each other's private steps.
    """

    def __init__(self, name: str, slot_count: int) -> None:
        self.name = name
        self.engine = Engine(max_message_length=0, reader_name=name, slot_count=slot_count)
        self.transport: UsbTransport | None = None
        self.assembler = FrameAssembler()
        #: Called (once) when a transfer finds the reader unplugged.
        self.on_removed: Any = None
        self.pid = os.getpid()
        self.closed = False
        self.removed = False
        self.inherited = False
        self.wire = Wire(self)
        self.engine.busy_seqs = self.wire.outstanding
        #: The Card whose call runs in this thread (its cancel() flag is looked at).
        self.tls = threading.local()
        # One outstanding command at a time (the common case): a plain lock, no routing.
        self.serial = True
        self.busy: Any = threading.Lock()
        #: Permits of ``busy``: close() takes them all to know no transfer is in flight.
        self.busy_width = 1

    def configure(self, max_message_length: int, busy_slots: int) -> None:
        """Set dwMaxCCIDMessageLength and bMaxCCIDBusySlots (after the descriptor's quirks)."""
        self.engine.max_message_length = max_message_length
        self.assembler = FrameAssembler(max_message_length)
        self.serial = busy_slots == 1
        self.busy = threading.Lock() if busy_slots == 1 else \
            threading.BoundedSemaphore(busy_slots)
        self.busy_width = busy_slots

    # --- the one live check ---------------------------------------------------------------

    def foreign(self) -> bool:
        """True in a fork child (this handle belongs to the parent process)."""
        return self.inherited or (not AT_FORK and self.pid != os.getpid())

    def usable(self) -> bool:
        """The one live check: open, not unplugged, this process's handle."""
        return not (self.closed or self.removed or self.inherited) and (
            AT_FORK or self.pid == os.getpid())

    def check_usable(self) -> None:
        """UsageError (fork child, closed) or ReaderRemovedError, before anything is sent."""
        if self.foreign():
            raise UsageError(
                f"this reader was opened in process {self.pid} before fork(); open the "
                "reader again in the child (after the parent has closed it)",
                reader=self.name)
        if self.closed:
            raise UsageError("the reader is closed", reader=self.name)
        if self.removed:
            raise ReaderRemovedError("the reader was unplugged", reader=self.name)

    def live(self) -> UsbTransport:
        """The transport of a usable reader, else the error :meth:`check_usable` says."""
        transport = self.transport
        if transport is None or not self.usable():
            self.check_usable()
            if transport is None:
                raise UsageError("the reader is closed", reader=self.name)
        return transport

    def _lean(self, held: bool) -> UsbTransport | None:
        """The transport when the fast path may skip the general machinery: the caller
        holds a one-busy-slot reader that is live, with no partial frame pending."""
        transport = self.transport
        if held and self.serial and transport is not None and \
                not self.assembler.pending_bytes and self.usable():
            return transport
        return None

    def mark_removed(self) -> bool:
        """The reader was unplugged: True the first time (the caller reports it)."""
        if self.removed:
            return False
        self.removed = True
        return True

    def lost(self) -> None:
        if self.closed:
            # The transport was released by close() while this call was on its way to
            # it: the caller closed the reader, it was not unplugged.
            raise UsageError("the reader is closed", reader=self.name)
        if not self.removed:
            if self.on_removed is not None:
                self.on_removed()
            self.removed = True

    def stop_reason(self) -> CCIDError | None:
        """Why a waiting call must stop now: ``Card.cancel()`` on its slot, or close()."""
        card = getattr(self.tls, "card", None)
        if card is not None and card.cancel_requested:
            return OperationCancelledError("the call was cancelled (Card.cancel())",
                                           reader=self.name, slot=card.slot)
        if self.closed:
            return UsageError("the reader was closed during the call", reader=self.name)
        return None

    # --- holding the reader ---------------------------------------------------------------

    def acquire_busy(self, deadline: float, slot: int | None) -> None:
        """Take a permit of ``busy`` before ``deadline`` (cancel and close are seen)."""
        busy = self.busy
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                raise ReaderTimeoutError(
                    "the reader stayed busy with other slots' commands until the call's "
                    "ceiling", reader=self.name, slot=slot)
            if busy.acquire(timeout=min(left, CANCEL_SLICE)):
                return
            stop = self.stop_reason()
            if stop is not None:
                raise stop

    def hold(self, deadline: float) -> bool:
        """Take a one-busy-slot reader for a whole APDU exchange; True when taken (then
        :meth:`unhold` it).

        As pcscd does: another slot's command cannot slip between the TPDUs, T=1 blocks
        or chained pieces of an APDU, and the per-block path skips a lock round trip.
        Readers with several busy slots keep per-command routing.
        """
        if not self.serial:
            return False
        if not self.busy.acquire(False):
            self.acquire_busy(deadline, None)
        return True

    def unhold(self) -> None:
        self.busy.release()

    # --- the general path -----------------------------------------------------------------

    def command(self, pending: Pending, *, wait: float, ceiling: float,
                check: bool = True) -> Reply:
        """Send ``pending`` and return its reply.

        ``wait`` bounds each wait for a frame (times a time-extension multiplier);
        ``ceiling`` bounds the whole call, time extensions included. On timeout the
        command is aborted (class ABORT + PC_to_RDR_Abort) and ReaderTimeoutError raised.
        """
        reply: Reply = self._send(pending, wait, ceiling, check, False)
        return reply

    def _send(self, pending: Pending, wait: float, ceiling: float, check: bool,
              raw: bool) -> Any:
        """:meth:`command`; ``raw``: return a successful reply as its frame (no Reply)."""
        transport = self.live()
        deadline = _monotonic() + ceiling
        busy = self.busy
        if not busy.acquire(False):
            self.acquire_busy(deadline, pending.slot)
        try:
            write_timeout = _write_timeout(wait, deadline - _monotonic())
            if write_timeout <= 0:
                raise ReaderTimeoutError(
                    f"the call's ceiling of {ceiling:.1f} s was reached before the command "
                    "could be sent", reader=self.name, slot=pending.slot)
            wire = self.wire
            if self.serial:
                wire.write(transport, pending.frame, write_timeout)
                return self._await(pending, wait, deadline, ceiling, check, raw)
            wire.expect(pending.seq, pending.slot)
            try:
                wire.write(transport, pending.frame, write_timeout)
                return self._await(pending, wait, deadline, ceiling, check, raw)
            finally:
                wire.done(pending.seq, pending.slot)
        except ReaderRemovedError:
            self.lost()
            raise
        finally:
            busy.release()

    # One loop for every wait: its branches are the cases of CCID 6.2 (time extension,
    # stale frame, failure, timeout and abort) and are read best together.
    def _await(self, pending: Pending, wait: float, deadline: float, ceiling: float,
               check: bool, raw: bool = False, first: Any = None) -> Any:
        """Wait for the reply to ``pending``: time extensions, stale frames, timeouts
        (ABORT). ``first``: the outcome of a first read the caller already made on a serial
        reader (the bytes it returned, or the exception it raised)."""
        multiplier = 1
        serial = self.serial
        engine = self.engine
        wire = self.wire
        hard = deadline
        # The abort runs inside the call's ceiling: the reply must come early enough to
        # leave it its share (see ABORT_SHARE).
        span = deadline - _monotonic()
        if span > 0:
            deadline -= min(ABORT_WAIT, ABORT_SHARE * span)
        while True:
            now = _monotonic()
            remaining = deadline - now
            if remaining <= 0:
                self.abort(pending.slot, hard)
                raise ReaderTimeoutError(
                    f"no answer within the call's ceiling of {ceiling:.1f} s "
                    f"({pending.extensions} time extensions); the command was aborted",
                    reader=self.name, slot=pending.slot)
            this_wait = wait * multiplier
            if this_wait > remaining:
                this_wait = remaining
            try:
                if first is not None:
                    got, first = first, None
                    frame = wire.read_serial(now + this_wait, this_wait, got)
                elif serial:
                    frame = wire.read_serial(now + this_wait, this_wait)
                else:
                    frame = wire.receive(pending.seq, pending.slot, this_wait)
            except ReaderTimeoutError:
                if _monotonic() < deadline and this_wait < remaining:
                    self.abort(pending.slot, hard)
                    raise ReaderTimeoutError(
                        f"the reader did not answer within {this_wait:.1f} s; the command "
                        "was aborted", reader=self.name, slot=pending.slot) from None
                if this_wait >= remaining:
                    # The ceiling ran out (maybe a hair early, or mid-frame): reading on
                    # would pick up the rest of the frame as a new one.
                    deadline = 0.0
                continue  # the ceiling check above aborts and raises
            except (ProtocolError, OperationCancelledError):
                # An unreadable reply (truncated, garbage): the reader may still be busy
                # with the command or still sending; ABORT leaves the slot clean. A
                # cancelled call is aborted as a timed-out one is.
                self.abort(pending.slot, hard)
                raise
            # The common case first: the complete, successful reply to this command.
            if raw and not _reply_code(frame, len(frame), pending.expect_type,
                                       pending.slot, pending.seq,
                                       engine.max_message_length) & 0xC0FF:
                return frame  # status OK and bmCommandStatus 0
            try:
                event = engine.receive(frame, pending)
            except ProtocolError:
                self.recover()
                raise
            if isinstance(event, Reply):
                if check and event.bStatus & 0xC0:
                    raise engine.error_for(event, pending)
                return frame if raw else event
            stop = self.stop_reason()
            if stop is not None:  # a time extension or a stale frame: a wait goes on
                if isinstance(stop, OperationCancelledError):
                    self.abort(pending.slot, hard)
                raise stop
            if isinstance(event, Discarded):
                continue
            multiplier = max(1, event.multiplier)

    # --- the fast path --------------------------------------------------------------------

    def xfr(self, s: SlotState, data: bytes, deadline: float, bwi: int = 0,
            level: int = 0, held: bool = False) -> bytes:
        """One XfrBlock; returns its successful DataBlock whole (bChainParameter at [9],
        abData from [10]): no Reply object on the per-block path. ``held``: the caller
        holds the reader (:meth:`hold`)."""
        seq, frame = self.engine.xfr_frame(s.index, data, bwi, level)
        reply: bytes = self._exchange(s, seq, frame, deadline, bwi, held)
        return reply

    def _exchange(self, s: SlotState, seq: int, frame: bytes, deadline: float, bwi: int,
                  held: bool, nowait: bool = False) -> Any:
        """Write an XfrBlock ``frame`` (bSeq ``seq``) and return its successful DataBlock.
        ``nowait``: see :meth:`xfr_now`."""
        left = deadline - _monotonic()
        if left <= 0:
            raise ReaderTimeoutError("the call's time ceiling was reached", reader=self.name,
                                     slot=s.index)
        wait = _block_wait(s.wait, bwi, left)
        transport = self._lean(held)
        if nowait and (transport is None or not transport.ready(False)):
            return partial(self._exchange, s, seq, frame, deadline, bwi, held)
        if transport is not None:
            # The per-block path of chunked exchanges: write, one read, one reply check.
            got = self._write_read(transport, frame, wait, left, nowait)
            if type(got) is bytes and not _reply_code(
                    got, len(got), _DATA_BLOCK, s.index, seq,
                    self.engine.max_message_length) & 0xC0FF:
                if _trace.enabled:
                    transport.trace_in(got)
                return got
            if nowait:
                return partial(self._settle, s.index, seq, frame, got, wait, deadline, left)
            return self._settle(s.index, seq, frame, got, wait, deadline, left)
        pending = Pending(_XFR_BLOCK, s.index, seq, _DATA_BLOCK, frame)
        if held:
            return self._write_await(self.live(), pending, wait, deadline, left)
        transport = self.transport
        busy = self.busy
        # One outstanding command on a healthy reader (the common case): what _send does,
        # without its generality.
        if self.serial and transport is not None and self.usable() and busy.acquire(False):
            try:
                return self._write_await(transport, pending, wait, deadline, left)
            finally:
                busy.release()
        reply: bytes = self._send(pending, wait, left, True, True)
        return reply

    def _write_read(self, transport: UsbTransport, frame: bytes, wait: float,
                    left: float, nowait: bool = False) -> Any:
        """Write ``frame``, then make one read: its bytes, or the exception it raised
        (returned: :meth:`_settle` goes on from it). A failed write raises. ``nowait``:
        only read when the backend says the reply is there; else None (no read made)."""
        try:
            self.wire.write(transport, frame, _write_timeout(wait, left))
        except ReaderRemovedError:
            self.lost()
            raise
        if nowait and not transport.ready(True):
            return None
        try:
            return self.wire.read_sliced(transport, wait)
        except CCIDError as exc:
            return exc

    def _settle(self, slot: int, seq: int, frame: bytes, got: Any, wait: float,
                deadline: float, left: float) -> bytes:
        """The reply to ``frame`` through the general path (time extensions, stale
        frames, failures, a frame in several transfers, timeouts), from the read already
        made (``got``: its bytes or its exception)."""
        try:
            reply: bytes = self._await(Pending(_XFR_BLOCK, slot, seq, _DATA_BLOCK, frame),
                                       wait, deadline, left, True, True, got)
            return reply
        except ReaderRemovedError:
            self.lost()
            raise

    def _write_await(self, transport: UsbTransport, pending: Pending, wait: float,
                     deadline: float, left: float) -> bytes:
        """Write one command and wait for its reply frame; the caller holds the reader."""
        try:
            self.wire.write(transport, pending.frame, _write_timeout(wait, left))
            frame: bytes = self._await(pending, wait, deadline, left, True, True)
            return frame
        except ReaderRemovedError:
            self.lost()
            raise

    def pump(self, s: SlotState, chain: Any, frame: bytes, deadline: float, held: bool,
             resume: tuple[Any, float, float] | None = None, nowait: bool = False) -> Any:
        """Drive a :class:`ccid.framing.Chain` from its first ``frame`` to its end; returns
        the response, or raises.

        One framing call per reply checks it and builds the next frame. A successful reply
        the chain does not expect (T=1 error recovery, S-blocks, a chaining fault) ends the
        pump with :class:`LeftChain` carrying it; the chain's fields say where it stopped.
        ``nowait`` (:meth:`pump_now`): make only the transfers the backend says will not
        wait, and return a callable that goes on from anything else. ``resume``: ``frame``
        was written already by such a call, which made the read (its bytes or exception;
        None: not made), with this wait and time left.
        """
        next_seq = self.engine.next_seq
        step = chain.step
        transport = self._lean(held)
        while True:
            if resume is not None:
                got, wait, left = resume
                resume = None
                reply = self._settle(s.index, chain.seq, frame, got, wait, deadline, left)
                transport = self._lean(held)
            elif transport is None or (nowait and not transport.ready(False)):
                if nowait:
                    return partial(self.pump, s, chain, frame, deadline, held)
                reply = self._exchange(s, chain.seq, frame, deadline, 0, held)
            else:
                # The lean loop: the reader is held, so nobody else closes it, forks from
                # this exchange or leaves a partial frame; unplugging shows as an error.
                left = deadline - _monotonic()
                if left <= 0:
                    raise ReaderTimeoutError("the call's time ceiling was reached",
                                             reader=self.name, slot=s.index)
                wait = _block_wait(s.wait, 0, left)
                got = self._write_read(transport, frame, wait, left, nowait)
                if type(got) is bytes:
                    following = step(next_seq(), got)
                    if following is not None:
                        if _trace.enabled:
                            transport.trace_in(got)
                        if not following:
                            return chain.response()
                        frame = following
                        continue
                if nowait:
                    return partial(self.pump, s, chain, frame, deadline, held, (got, wait, left))
                reply = self._settle(s.index, chain.seq, frame, got, wait, deadline, left)
                transport = self._lean(held)
            following = step(next_seq(), reply)
            if following:
                frame = following
            elif following is None:
                raise LeftChain(reply)
            else:
                return chain.response()

    # --- without waiting: the asyncio door's transfers --------------------------------------

    def hold_now(self) -> bool:
        """:meth:`hold` a one-busy-slot reader if it is free now; False otherwise."""
        return self.serial and self.busy.acquire(False)

    def xfr_now(self, s: SlotState, data: bytes, deadline: float, bwi: int, level: int,
                held: bool) -> Any:
        """:meth:`xfr` as far as it goes without waiting: the DataBlock frame, or a
        callable that finishes the exchange from where this stopped (in a thread that may
        block). Only the clean case runs here (a held reader whose backend says a transfer
        would not wait, one whole successful reply); time extensions, failures, timeouts and
        aborts are the general path's, in that callable."""
        seq, frame = self.engine.xfr_frame(s.index, data, bwi, level)
        return self._exchange(s, seq, frame, deadline, bwi, held, True)

    def pump_now(self, s: SlotState, chain: Any, frame: bytes, deadline: float, held: bool
                 ) -> Any:
        """:meth:`pump` as far as it goes without waiting: the response, or a callable
        that goes on from where this stopped (see :meth:`xfr_now`)."""
        return self.pump(s, chain, frame, deadline, held, None, True)

    # --- abort and drain ------------------------------------------------------------------

    def abort(self, slot: int, end: float) -> None:
        """ABORT class request, then PC_to_RDR_Abort, then wait for its answer (CCID 5.3.1),
        all before ``end`` (the call's ceiling) and within ABORT_WAIT."""
        transport = self.transport
        if transport is None or self.closed:
            return
        end = min(end, _monotonic() + ABORT_WAIT)
        if end - _monotonic() <= 0.002:
            log.info("%s: no time left in the call to abort the command", self.name)
            return
        seq = self.engine.next_seq()
        try:
            transport.abort(slot, seq, max(0.001, end - _monotonic()))
        except ReaderRemovedError:
            self.lost()
            raise
        except CCIDError as exc:
            log.info("%s: ABORT class request failed: %s", self.name, exc)
        abort = self.engine.abort(slot, seq=seq)
        abort.stale = 0
        tls = self.tls
        caller = getattr(tls, "card", None)
        tls.card = None  # the abort itself is not cancellable
        try:
            left = end - _monotonic()
            if left <= 0.001:
                return
            wire = self.wire
            wire.write(transport, abort.frame, left)
            wire.expect(abort.seq, abort.slot)
            try:
                while _monotonic() < end:
                    try:
                        frame = wire.receive(abort.seq, abort.slot,
                                             max(0.001, end - _monotonic()))
                    except ProtocolError:
                        continue  # the rest of the aborted command's reply: skip it
                    if len(frame) >= 7 and frame[6] == abort.seq:
                        return
            finally:
                wire.done(abort.seq, abort.slot)
        except ReaderRemovedError:
            self.lost()
            raise
        except CCIDError as exc:
            log.info("%s: PC_to_RDR_Abort got no answer: %s", self.name, exc)
            quiet = min(0.02, end - _monotonic())
            if quiet > 0:
                self.wire.drain(quiet)
        finally:
            tls.card = caller

    def recover(self) -> None:
        """After a mismatched reply: drop whatever is queued so the next command is clean."""
        with contextlib.suppress(ReaderTimeoutError, ProtocolError):
            self.wire.drain(0.02)

    # --- closing --------------------------------------------------------------------------

    def wake_all(self) -> None:
        """Wake the threads waiting for the mailbox (close())."""
        self.wire.wake_all()

    def take_permits(self, deadline: float | None, held: int = 0) -> int:
        """Take the busy permits (no transfer runs once all are held), up to ``deadline``
        (None: wait as long as it takes), ``held`` of them already taken; returns how many
        are held."""
        while held < self.busy_width:
            if deadline is None:
                self.busy.acquire()
            elif not self.busy.acquire(timeout=max(0.0, deadline - _monotonic())):
                break
            held += 1
        return held

    def release_permits(self, held: int) -> None:
        for _ in range(held):
            self.busy.release()
