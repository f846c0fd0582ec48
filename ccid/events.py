"""Card and reader events: insertion, removal, hardware errors, hot-plug.

An open reader's card events come from its monitor thread (``ccid.session.monitor``) and
are read with ``Reader.wait_for_event`` / ``Reader.events``. :func:`watch` adds reader
arrivals and departures. pyusb has no hot-plug API, so it enumerates every ``interval``
seconds; see its docstring for how it treats open readers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ccid.errors import CCIDError
from ccid.session.options import TICK_SECONDS
from ccid.session.slot import (
    EVENT_QUEUE_MAX,
    CardInserted,
    CardRemoved,
    EventQueue,
    HardwareErrorEvent,
    ReaderRemoved,
)

__all__ = [
    "EVENT_QUEUE_MAX",
    "CardInserted",
    "CardRemoved",
    "Event",
    "EventQueue",
    "HardwareError",
    "HardwareErrorEvent",
    "ReaderAdded",
    "ReaderRemoved",
    "watch",
]

log = logging.getLogger(__name__)

#: Short name, as in the issue's API list.
HardwareError = HardwareErrorEvent


@dataclass(frozen=True, slots=True)
class ReaderAdded:
    """A reader appeared; ``info`` is its ``ccid.ReaderInfo`` when known."""

    reader: str
    info: Any = field(default=None, compare=False)


Event: TypeAlias = (
    CardInserted | CardRemoved | HardwareErrorEvent | ReaderRemoved | ReaderAdded
)


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
                # no time limit needed: close() below wakes this wait
                event = self.reader.wait_for_event(None)
            except CCIDError:
                return
            if event is not None and not self.stop.is_set():
                self.out.put((self.key, event))
                if isinstance(event, ReaderRemoved):
                    return

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(CCIDError):
            self.reader.close()  # ends the wait in _run
        if self.thread is not threading.current_thread():
            self.thread.join(2 * TICK_SECONDS + 1.0)


# One generator with its helpers inside: they share the watch's state (the readers known,
# their forwarders, the queue), and the generator's ``finally`` releases all of it.
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
