"""The asyncio front door: the blocking API's shapes, awaitable.

::

    import ccid.aio

    async with await ccid.aio.open_reader() as reader:
        async with reader.connect() as card:
            print(card.atr, card.protocol)
            await card.transmit(bytes.fromhex("00A4040000"))
        async for event in reader.events():
            print(event)

Nothing here talks to a card by itself: every call runs the blocking library's own
objects (``ccid.Reader``, ``ccid.Card`` and their session rooms), so each piece is shared,
not copied:

==============================  ==========================================================
piece                           where it lives (what this module runs)
==============================  ==========================================================
opening, registry, quirks       ``ccid.open_reader`` / ``ccid.list_readers``
power-up, ATR, PPS, protocol    ``Reader.connect``, ``Card.reset`` / ``reconnect``
T=0, T=1, APDU level, chaining  the sans-IO drivers of ``ccid.session.exchange``
                                (``Exchange.steps``): the blocking ``Card.transmit`` feeds
                                them with ``Exchange.run``, this module's ``Card.transmit``
                                with its own loop (below)
checks, sharing, generation     ``ccid.Card.transmit_now`` (the argument checks, the
                                generation test, the slot and the reader taken) and
                                ``ccid.Card.exchange_failure`` (removal, reset, swap)
transactions                    ``Card.transaction`` (the slot lock, held by this handle's
                                worker thread for the whole ``async with``)
escape, pinpad                  ``Reader.escape``, ``Card.escape``, ``verify_pin``,
                                ``modify_pin``
abort after timeout/cancel      the channel's general path (``Channel._await``), in the
                                worker; a cancelled task calls the thread-safe
                                ``Card.cancel()`` (same ABORT path)
card events                     the reader's slot monitor and event queue
                                (``Reader.wait_for_event``)
reader hot-plug                 ``ccid.events.watch``
==============================  ==========================================================

An APDU (``transmit``): when the backend can say whether a bulk transfer would wait (the
virtual backend can; libusb through pyusb cannot), the slot and the reader are free, and
tracing is off, the APDU's driver runs on the event loop. Each transfer that would not wait
is made right there; a request that would wait (a reply not there yet, a time extension, a
failure, a timeout and its ABORT) is finished in the handle's worker thread by the
channel's general path, and the driver goes on, on the loop, with its reply. Otherwise the
whole blocking ``Card.transmit`` runs in the worker thread. Either way the loop never waits
on the USB side.

Threads: pyusb is blocking, so each open reader has one worker thread for reader-level
calls (open, connect, escape, close) and each card handle has its own worker thread. A
handle per thread is what the blocking API's sharing rules expect: two handles on one
slot behave like two threads (one waits for the other's transaction), two slots of a
reader that allows it (bMaxCCIDBusySlots) and several readers run at once in one loop. A
worker sleeps in ``queue.SimpleQueue.get`` until a call comes and wakes the loop with
``loop.call_soon_threadsafe``: no polling on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ccid.errors import CCIDError

if TYPE_CHECKING:  # pragma: no cover
    from ccid.protocol.atr import ATR
    from ccid.reader import Card as BlockingCard
    from ccid.reader import Reader as BlockingReader
    from ccid.reader import ReaderInfo, SlotInfo
    from ccid.session.exchange import NowRun

__all__ = ["Card", "Reader", "list_readers", "open_reader", "watch"]

T = TypeVar("T")

#: How long a cancelled call waits for its worker to finish the abort (the blocking
#: library's ABORT procedure is bounded by its own ABORT_WAIT; this is a safety net).
CANCEL_WAIT = 5.0
#: How often a cancelled caller repeats ``cancel()`` while its call has not ended.
CANCEL_RETRY = 0.1
#: The event forwarder's longest sleep in the reader's event queue. Events are handed on
#: the moment they are queued; the wake-up only notices an iterator that was dropped.
EVENT_TICK = 1.0


# --- the worker: one thread, one queue of calls ------------------------------------------


class _Call:
    """One blocking call queued on a worker, and the loop future waiting for it."""

    __slots__ = ("args", "ended", "fn", "future", "loop", "on_end", "state", "worker")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
                 fn: Callable[..., Any], args: tuple[Any, ...], worker: _Worker) -> None:
        self.worker = worker
        self.loop = loop
        self.future = future
        self.fn = fn
        self.args = args
        #: 0 queued, 1 running, 2 skipped (cancelled before it started)
        self.state = 0
        self.ended = False
        self.on_end: asyncio.Future[None] | None = None


def _settle(call: _Call, ok: bool, value: Any) -> None:
    """In the loop thread: hand the worker's outcome to whoever still waits for it."""
    call.ended = True
    call.worker.active -= 1
    future = call.future
    if not future.done():
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    if call.on_end is not None and not call.on_end.done():
        call.on_end.set_result(None)


class _Worker:
    """A daemon thread running queued blocking calls in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        #: Calls submitted and not yet settled (touched in the loop's thread only).
        self.active = 0
        self.thread = threading.Thread(target=self._run, args=(self._queue, self._lock),
                                       name=name, daemon=True)
        self.thread.start()

    @staticmethod
    def _run(calls: queue.SimpleQueue[_Call | None], lock: threading.Lock) -> None:
        # A static method: the thread holds no reference to the worker, so a dropped
        # worker is collected and its finalizer stops the thread.
        while (call := calls.get()) is not None:
            with lock:
                if call.state == 2:
                    continue
                call.state = 1
            _Worker._execute(call)
            del call

    @staticmethod
    def _execute(call: _Call) -> None:
        try:
            value = call.fn(*call.args)
        except BaseException as exc:
            ok, value = False, exc
        else:
            ok = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            call.loop.call_soon_threadsafe(_settle, call, ok, value)

    def submit(self, fn: Callable[..., T], *args: Any) -> tuple[_Call, asyncio.Future[T]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        call = _Call(loop, future, fn, args, self)
        self.active += 1
        if self._stopped:
            # After close or disconnect the blocking object refuses (UsageError) without
            # I/O, or does its little I/O: a thread of its own, so the loop never blocks.
            call.state = 1
            threading.Thread(target=self._execute, args=(call,), daemon=True,
                             name=self.thread.name).start()
        else:
            self._queue.put(call)
        return call, future

    def skip(self, call: _Call) -> bool:
        """Drop ``call`` if it has not started; False when it is running or done."""
        with self._lock:
            if call.state == 0:
                call.state = 2
                self.active -= 1  # never settled
                return True
            return False

    def stop(self) -> None:
        """The thread ends after the calls already queued."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)


async def _run(worker: _Worker, fn: Callable[..., T], *args: Any,
               on_cancel: Callable[[], object] | None = None) -> T:
    """Run ``fn(*args)`` on ``worker``; a cancelled caller stops the call (see below).

    Cancelled before the call started: it never runs. Cancelled while it runs:
    ``on_cancel`` (the handle's thread-safe ``cancel()``) makes the blocking call give up
    the way a timeout does (ABORT), and the caller waits for that, up to ``CANCEL_WAIT``,
    so that the reader is in step again when the CancelledError arrives.
    """
    call, future = worker.submit(fn, *args)
    try:
        return await future
    except asyncio.CancelledError:
        if not worker.skip(call) and not call.ended:
            call.on_end = ended = call.loop.create_future()
            deadline = call.loop.time() + CANCEL_WAIT
            # ``cancel()`` only reaches a call that has begun: one that the worker has
            # taken but not yet started is asked again, every CANCEL_RETRY seconds.
            while not ended.done() and call.loop.time() < deadline:
                if on_cancel is not None:
                    on_cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), CANCEL_RETRY)
        raise


def _stop_worker(worker: _Worker) -> None:
    worker.stop()


# --- opening -------------------------------------------------------------------------------


async def list_readers(backend: Any = None) -> list[ReaderInfo]:
    """Every CCID reader interface on the bus (``ccid.list_readers``, off the loop)."""
    from ccid.reader import list_readers as blocking_list

    return await asyncio.get_running_loop().run_in_executor(None, blocking_list, backend)


async def open_reader(selector: Any = None, backend: Any = None, **options: Any) -> Reader:
    """Open a reader (the arguments of ``ccid.open_reader``); use ``async with``."""
    from ccid.reader import open_reader as blocking_open

    worker = _Worker("ccid-aio open")

    def opening() -> BlockingReader:
        return blocking_open(selector, backend, **options)

    try:
        blocking = await _run(worker, opening)
    except BaseException:
        worker.stop()
        raise
    worker.thread.name = f"ccid-aio {blocking.name}"
    return Reader(blocking, worker)


# --- the reader ---------------------------------------------------------------------------


class Reader:
    """An open reader, asyncio side. Obtain with ``await ccid.aio.open_reader(...)``.

    ``blocking`` is the ``ccid.Reader`` underneath: its properties (no I/O) can be read
    directly; a blocking call on it from the event loop blocks the loop.
    """

    def __init__(self, blocking: BlockingReader, worker: _Worker) -> None:
        self.blocking = blocking
        self._worker = worker
        self._cards: weakref.WeakSet[Card] = weakref.WeakSet()
        self._inbox: asyncio.Queue[Any] | None = None
        weakref.finalize(self, _stop_worker, worker)

    def __repr__(self) -> str:
        return f"<ccid.aio.Reader {self.name!r} {'closed' if self.closed else 'open'}>"

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- no I/O: straight from the blocking reader ---

    @property
    def name(self) -> str:
        return self.blocking.name

    @property
    def info(self) -> ReaderInfo:
        return self.blocking.info

    @property
    def closed(self) -> bool:
        return self.blocking.closed

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        return self.blocking.slots

    @property
    def exchange_level(self) -> Any:
        return self.blocking.exchange_level

    @property
    def has_interrupt(self) -> bool:
        return self.blocking.has_interrupt

    def slot_states(self) -> list[bool]:
        """Card present in each slot, as last known (no I/O)."""
        return self.blocking.slot_states()

    # --- calls ---

    async def close(self) -> None:
        """Close the reader (``Reader.close`` in the worker); safe to repeat."""
        for card in list(self._cards):
            card._worker.stop()
        try:
            await _run(self._worker, self.blocking.close)
        finally:
            self._worker.stop()

    async def slot_status(self, slot: int = 0) -> Any:
        """GetSlotStatus (``Reader.slot_status``)."""
        return await _run(self._worker, self.blocking.slot_status, slot)

    async def escape(self, data: bytes, slot: int = 0, *, timeout: float | None = None
                     ) -> bytes:
        """PC_to_RDR_Escape (``Reader.escape``)."""
        return await _run(self._worker, _call_kw(self.blocking.escape, timeout=timeout),
                          data, slot)

    def connect(self, slot: int = 0, protocol: Any = None, mode: str = "shared", *,
                timeout: float | None = None) -> _Connecting:
        """A card handle (``Reader.connect``): ``async with reader.connect() as card`` or
        ``card = await reader.connect()``."""
        return _Connecting(self, slot, protocol, mode, timeout)

    async def _connect(self, slot: int, protocol: Any, mode: str,
                       timeout: float | None) -> Card:
        blocking = await _run(self._worker, _call_kw(self.blocking.connect, timeout=timeout),
                              slot, protocol, mode)
        card = Card(self, blocking)
        self._cards.add(card)
        return card

    async def wait_for_event(self, timeout: float | None = None) -> Any:
        """The next card event, or None after ``timeout`` seconds (``wait_for_event``)."""
        async with contextlib.aclosing(self.events(timeout)) as events:
            async for event in events:
                return event
        return None

    async def events(self, timeout: float | None = None) -> AsyncGenerator[Any, None]:
        """Yield card events as they come; stops after ``timeout`` seconds without one, or
        after ReaderRemoved (as ``Reader.events``).

        From the first call on, the reader's events come here: one thread per reader
        sleeps in the blocking ``wait_for_event`` and hands each event to the loop.
        """
        from ccid.events import ReaderRemoved

        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = _forward_events(self.blocking.wait_for_event, ReaderRemoved)
        while True:
            try:
                if timeout is None:
                    item = await inbox.get()
                else:
                    item = await asyncio.wait_for(inbox.get(), timeout)
            except asyncio.TimeoutError:
                return
            if isinstance(item, BaseException):
                inbox.put_nowait(item)  # every later call sees it too
                raise item
            yield item
            if isinstance(item, ReaderRemoved):
                return


def _call_kw(fn: Callable[..., T], **kwargs: Any) -> Callable[..., T]:
    def call(*args: Any) -> T:
        return fn(*args, **kwargs)
    return call


class _Connecting:
    """``reader.connect()``: awaitable, and an async context manager that disconnects."""

    def __init__(self, reader: Reader, slot: int, protocol: Any, mode: str,
                 timeout: float | None) -> None:
        self._reader = reader
        self._args = (slot, protocol, mode, timeout)
        self._card: Card | None = None

    def __await__(self) -> Generator[Any, None, Card]:
        return self._reader._connect(*self._args).__await__()

    async def __aenter__(self) -> Card:
        self._card = await self._reader._connect(*self._args)
        return self._card

    async def __aexit__(self, *exc: object) -> None:
        if self._card is not None:
            await self._card.__aexit__(*exc)


# --- events: the blocking reader's queue, handed to the loop ------------------------------


def _forward_events(wait: Callable[[float], Any], last: type) -> asyncio.Queue[Any]:
    """An asyncio queue fed by a thread that sleeps in ``wait`` (the blocking reader's
    ``wait_for_event``). The thread ends after ``last`` (ReaderRemoved) or an error (the
    reader was closed), which it puts in the queue too."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def forward() -> None:
        while True:
            try:
                event = wait(EVENT_TICK)
            except CCIDError as exc:
                event = exc
            if event is None:
                continue
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, event)
            except RuntimeError:  # the loop is closed
                return
            if isinstance(event, BaseException | last):
                return

    threading.Thread(target=forward, name="ccid-aio events", daemon=True).start()
    return inbox


async def watch(backend: Any = None, interval: float = 0.5, timeout: float | None = None,
                *, cards: bool = True, **open_options: Any) -> AsyncGenerator[Any, None]:
    """Reader arrivals and departures, and card events (``ccid.watch`` in a thread).

    Leaving the ``async for`` (or closing the generator) stops the watch and closes the
    readers it opened within ``interval`` seconds.
    """
    from ccid.events import watch as blocking_watch

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    finished: asyncio.Future[None] = loop.create_future()
    done = object()

    def post(item: Any) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(inbox.put_nowait, item)

    def run() -> None:
        try:
            for event in blocking_watch(backend, interval, timeout, cards=cards, stop=stop,
                                        **open_options):
                if stop.is_set():
                    break
                post(event)
        except BaseException as exc:
            post(exc)
        finally:
            post(done)

    thread = threading.Thread(target=run, name="ccid-aio watch", daemon=True)
    thread.start()
    try:
        while True:
            item = await inbox.get()
            if item is done:
                finished.set_result(None)
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not finished.done():
            # Wait (off the loop) for the watch to close the readers it opened.
            await loop.run_in_executor(None, thread.join, interval + 5.0)


# --- the card handle ----------------------------------------------------------------------


class Card:
    """A card handle, asyncio side. Obtain with ``reader.connect()``.

    Calls on one handle run in order on the handle's own worker thread. ``blocking`` is
    the ``ccid.Card`` underneath.
    """

    def __init__(self, reader: Reader, blocking: BlockingCard) -> None:
        self.reader = reader
        self.blocking = blocking
        self._worker = _Worker(f"ccid-aio {reader.name} slot {blocking.slot}")
        # The task inside ``async with card.transaction()``; other tasks wait for it.
        self._owner: asyncio.Task[Any] | None = None
        self._released: asyncio.Future[None] | None = None
        weakref.finalize(self, _stop_worker, self._worker)

    def __repr__(self) -> str:
        return f"<ccid.aio.Card {self.reader.name!r} slot {self.slot} {self.protocol}>"

    async def __aenter__(self) -> Card:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await _run(self._worker, self.blocking.__exit__, None, None, None)
        finally:
            self._worker.stop()

    # --- no I/O ---

    @property
    def slot(self) -> int:
        return self.blocking.slot

    @property
    def mode(self) -> str:
        return self.blocking.mode

    @property
    def atr(self) -> ATR | None:
        return self.blocking.atr

    @property
    def protocol(self) -> str | None:
        return self.blocking.protocol

    @property
    def connected(self) -> bool:
        return self.blocking.connected

    # --- calls ---

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._owner is not None:
            await self._my_turn()
        return await _run(self._worker, fn, *args, on_cancel=self._cancel)

    async def _my_turn(self) -> None:
        me = asyncio.current_task()
        while self._owner is not None and self._owner is not me:
            assert self._released is not None
            await asyncio.shield(self._released)

    def _cancel(self) -> None:
        cancel: Callable[[], object] | None = getattr(self.blocking, "cancel", None)
        if cancel is not None:
            cancel()

    async def transmit(self, apdu: bytes, *, timeout: float | None = None,
                       raw: bool = False) -> bytes:
        """Send a command APDU; return data + SW1 SW2 (``Card.transmit``). Cancelling the
        task aborts the command like a timeout does; the handle stays usable."""
        if self._owner is not None:
            await self._my_turn()
        if not self._worker.active:  # calls queued on the handle go first, in order
            run = self.blocking.transmit_now(apdu, timeout, raw)
            if run is not None:
                return await self._drive(run)
        if timeout is None and not raw:
            return await self._call(self.blocking.transmit, apdu)
        return await self._call(_call_kw(self.blocking.transmit, timeout=timeout, raw=raw),
                                apdu)

    async def _drive(self, run: NowRun) -> bytes:
        """Run an APDU's driver on the loop: each transfer that would not wait is made
        here, the rest of a request in this handle's worker thread (see the module
        docstring)."""
        steps = run.steps
        try:
            try:
                request = next(steps)
                while True:
                    try:
                        got = run.io(request)
                        if type(got) is not bytes:
                            got = await _run(self._worker, run.later, got,
                                             on_cancel=self._cancel)
                    except BaseException as exc:
                        request = steps.throw(exc)
                    else:
                        request = steps.send(got)
            except StopIteration as end:
                response: bytes = end.value
                return response
        except CCIDError as exc:
            failure = self.blocking.exchange_failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            run.end()

    async def reset(self, cold: bool = False, *, protocol: Any = None) -> None:
        """Reset and renegotiate (``Card.reset``); other handles see CardResetError."""
        await self._call(_call_kw(self.blocking.reset, protocol=protocol), cold)

    async def reconnect(self, protocol: Any = None) -> None:
        """Accept a reset or a new card (``Card.reconnect``)."""
        await self._call(self.blocking.reconnect, protocol)

    async def disconnect(self, disposition: str = "leave") -> None:
        """Release the handle (``Card.disconnect``); its worker thread ends."""
        try:
            await self._call(self.blocking.disconnect, disposition)
        finally:
            if not self.blocking.connected:
                self._worker.stop()

    async def escape(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """PC_to_RDR_Escape on this handle's slot (``Card.escape``)."""
        return await self._call(_call_kw(self.blocking.escape, timeout=timeout), data)

    async def verify_pin(self, apdu_template: bytes, **options: Any) -> bytes:
        """PIN entry on the pinpad (``Card.verify_pin``, same options)."""
        return await self._call(_call_kw(self.blocking.verify_pin, **options), apdu_template)

    async def modify_pin(self, apdu_template: bytes, **options: Any) -> bytes:
        """PIN change on the pinpad (``Card.modify_pin``, same options)."""
        return await self._call(_call_kw(self.blocking.modify_pin, **options), apdu_template)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Card]:
        """Hold the slot for a sequence of APDUs: other handles, threads and tasks wait.

        The blocking ``Card.transaction`` is entered on this handle's worker thread and
        left there, so the slot lock is held by that thread for the whole block.
        """
        await self._my_turn()
        me = asyncio.current_task()
        assert me is not None
        held = self.blocking.transaction()
        self._owner = me
        self._released = asyncio.get_running_loop().create_future()
        entered = False

        def enter() -> None:
            nonlocal entered
            held.__enter__()
            entered = True

        def leave() -> None:
            # Queued after ``enter`` on the same thread: runs once it has finished, even
            # when the task gave up waiting for the slot.
            if entered:
                held.__exit__(None, None, None)

        try:
            try:
                await _run(self._worker, enter)
            except BaseException:
                self._worker.submit(leave)
                raise
            try:
                yield self
            finally:
                await _run(self._worker, leave)
        finally:
            released, self._released, self._owner = self._released, None, None
            released.set_result(None)

