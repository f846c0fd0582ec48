"""Recording: sinks (a file, a text stream, in-memory captures) and what feeds them.

Trace files are created for the current user only (mode 0600, ``O_NOFOLLOW``); an existing
file is appended to only when it is a regular file owned by the user. A symbolic link, a
file owned by someone else, a FIFO or a device is refused with :class:`UsageError`: a trace
path may come from the environment (``CCID_TRACE``), and must not let whoever set it make
the program write elsewhere.

PINs are masked unless the program itself asks otherwise (``enable(..., mask_pins=False)``
or ``capture(mask_pins=False)``), which is logged as a warning. No environment variable
turns masking off: a variable is inherited by every child process, a choice in code is not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from ccid.errors import UsageError
from ccid.trace.formats import format_record, to_json
from ccid.trace.masking import Masker
from ccid.trace.records import API, DIRECTIONS, META, TraceRecord

__all__ = ["capture", "describe", "disable", "enable", "open_private", "record", "span"]

_log = logging.getLogger("ccid.trace")

Format = Literal["text", "jsonl"]


class _Sink:
    __slots__ = ("fmt", "last_mono", "mask_pins", "own", "records", "stream")

    def __init__(self, stream: IO[str] | None, fmt: Format, mask_pins: bool, own: bool,
                 records: list[TraceRecord] | None = None) -> None:
        self.stream = stream
        self.fmt = fmt
        self.mask_pins = mask_pins
        self.own = own
        self.records = records
        self.last_mono: float | None = None

    def write(self, rec: TraceRecord) -> None:
        if self.records is not None:
            self.records.append(rec)
            return
        assert self.stream is not None
        if self.fmt == "jsonl":
            line = json.dumps(to_json(rec), separators=(",", ":"))
        else:
            line = format_record(rec, self.last_mono)
        self.last_mono = rec.mono
        self.stream.write(line + "\n")
        self.stream.flush()


_lock = threading.Lock()
_main_sink: _Sink | None = None
_captures: list[_Sink] = []
_masker = Masker()


def _refresh() -> None:
    # ``ccid.trace.enabled`` is what the transport tests: keep the package's copy current.
    value = _main_sink is not None or bool(_captures)
    package = sys.modules.get("ccid.trace")
    if package is not None:
        package.enabled = value  # type: ignore[attr-defined]


def _warn_unmasked(where: str) -> None:
    _log.warning("PIN masking is OFF for %s: PINs will be recorded in clear; never share "
                 "this trace", where)


def open_private(path: str | os.PathLike[str]) -> IO[str]:
    """Open ``path`` for appending a trace: created 0600, never through a symbolic link.

    An existing file must be a regular file owned by the current user. Raises
    :class:`UsageError` (naming the path and the reason) otherwise.
    """
    name = os.fspath(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    if os.path.islink(name):
        raise UsageError(f"trace file {name!r} is a symbolic link; refusing to follow it")
    try:
        fd = os.open(name, flags, 0o600)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (getattr(os, "ELOOP", -1), getattr(os, "EMLINK", -1)):
            reason = "it is a symbolic link; refusing to follow it"
        raise UsageError(f"cannot open trace file {name!r}: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"trace file {name!r} is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise UsageError(f"trace file {name!r} belongs to another user (uid "
                             f"{info.st_uid}); refusing to write to it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "a", encoding="utf-8", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def enable(target: str | os.PathLike[str] | IO[str], mask_pins: bool = True,
           fmt: Format | None = None) -> None:
    """Record every frame to a file path or a text stream (replacing any earlier target).

    ``fmt`` is ``"text"`` (pcscd-style lines) or ``"jsonl"``; by default a path ending in
    ``.jsonl`` or ``.json`` gives JSON lines, anything else text. A path is opened with
    :func:`open_private` (0600, no symbolic link, owned by the user). ``mask_pins=False``
    records PINs in clear and says so in a warning.
    """
    global _main_sink
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        chosen: Format = fmt or ("jsonl" if path.suffix in (".jsonl", ".json") else "text")
        if chosen not in ("text", "jsonl"):
            raise UsageError(f"trace format must be 'text' or 'jsonl', not {chosen!r}")
        stream: IO[str] = open_private(path)
        own = True
    elif hasattr(target, "write"):
        chosen = fmt or "text"
        stream = target
        own = False
    else:
        raise UsageError(f"trace target must be a path or a text stream, not {type(target)!r}")
    if chosen not in ("text", "jsonl"):
        raise UsageError(f"trace format must be 'text' or 'jsonl', not {chosen!r}")
    if not mask_pins:
        _warn_unmasked("the trace")
    sink = _Sink(stream, chosen, bool(mask_pins), own)
    with _lock:
        old, _main_sink = _main_sink, sink
        _refresh()
    if old is not None and old.own and old.stream is not None:
        old.stream.close()


def disable() -> None:
    """Stop recording to the target given to :func:`enable` (captures continue)."""
    global _main_sink
    with _lock:
        old, _main_sink = _main_sink, None
        if not _captures:
            _masker.clear()
        _refresh()
    if old is not None and old.own and old.stream is not None:
        old.stream.close()


@contextlib.contextmanager
def capture(mask_pins: bool = True) -> Iterator[list[TraceRecord]]:
    """Collect the records made inside the ``with`` block into a list (tests, tools)."""
    records: list[TraceRecord] = []
    if not mask_pins:
        _warn_unmasked("a capture")
    sink = _Sink(None, "text", bool(mask_pins), False, records)
    with _lock:
        _captures.append(sink)
        _refresh()
    try:
        yield records
    finally:
        with _lock:
            _captures.remove(sink)
            if _main_sink is None and not _captures:
                _masker.clear()
            _refresh()


def _sinks() -> list[_Sink]:
    return ([_main_sink] if _main_sink is not None else []) + _captures


def _emit(make: Callable[[], TraceRecord]) -> None:
    with _lock:
        sinks = _sinks()
        if sinks:
            rec = make()
            for sink in sinks:
                sink.write(rec)


def record(reader: str, direction: str, data: bytes, *, slot: int | None = None) -> None:
    """Record one frame. The transport calls this only when ``ccid.trace.enabled`` is true."""
    if direction not in DIRECTIONS:
        raise UsageError(f"trace direction must be one of {DIRECTIONS}, not {direction!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"a traced frame is bytes, not {type(data).__name__}")
    now, mono = time.time(), time.perf_counter()
    raw = bytes(data)
    if slot is None and direction in ("->", "<-") and len(raw) >= 10:
        slot = raw[5]
    with _lock:
        sinks = _sinks()
        if not sinks:
            return
        spans = _masker.observe(str(reader), direction, raw)
        hidden: TraceRecord | None = None
        for sink in sinks:
            if spans and sink.mask_pins:
                if hidden is None:
                    buf = bytearray(raw)
                    for start, end in spans:
                        buf[start:end] = bytes(end - start)
                    hidden = TraceRecord(now, mono, reader, direction, bytes(buf), slot, spans)
                sink.write(hidden)
            else:
                sink.write(TraceRecord(now, mono, reader, direction, raw, slot))


def describe(reader: str, info: Mapping[str, Any]) -> None:
    """Record facts about a reader (ids, raw descriptors) so that a replay can rebuild it.

    The reader layer calls this at open when tracing is on. Useful keys: ``vid``, ``pid``,
    ``bcdDevice``, ``interface``, ``ccid_descriptor`` (hex of the 54-byte class
    descriptor), ``interrupt`` (bool), ``manufacturer``, ``product``, ``serial``.
    """
    package = sys.modules.get("ccid.trace")
    if package is None or not getattr(package, "enabled", False):
        return
    if not isinstance(info, Mapping):
        raise UsageError(f"reader facts are a mapping, not {type(info).__name__}")
    now, mono = time.time(), time.perf_counter()
    try:
        clean = json.loads(json.dumps(dict(info), default=str))
    except (ValueError, TypeError, RecursionError) as exc:
        raise UsageError(f"reader facts cannot be recorded: {exc}") from None
    _emit(lambda: TraceRecord(now, mono, reader, META, name="reader", info=clean))


class _Span:
    __slots__ = ("name", "reader", "start")

    def __init__(self, reader: str, name: str) -> None:
        self.reader = reader
        self.name = name
        self.start = 0.0

    def __enter__(self) -> _Span:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        end = time.perf_counter()
        _emit(lambda: TraceRecord(time.time(), end, self.reader, API, name=self.name,
                                  duration=end - self.start))


_NO_SPAN = contextlib.nullcontext()


def span(reader: str, name: str) -> contextlib.AbstractContextManager[Any]:
    """Context manager timing an API call (``Card.transmit`` …) for the summary.

    When tracing is off it returns a shared no-op context manager.
    """
    package = sys.modules.get("ccid.trace")
    if package is None or not getattr(package, "enabled", False):
        return _NO_SPAN
    return _Span(reader, name)


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at fork(): the child starts afresh.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def from_environment() -> None:
    """Honour ``CCID_TRACE=path`` (read once, when ``ccid.trace`` is first imported).

    ``CCID_TRACE_PINS`` is not honoured: it would turn masking off in every child process
    that inherits it. It is removed from the environment and a warning says so.
    """
    if os.environ.pop("CCID_TRACE_PINS", None) is not None:
        _log.warning("CCID_TRACE_PINS is ignored (PINs stay masked); a program that needs "
                     "PINs in clear passes mask_pins=False to ccid.trace.enable()")
    path = os.environ.get("CCID_TRACE")
    if path:
        try:
            enable(path)
        except UsageError as exc:
            # A trace is a debugging aid: a wrong path must not stop the library.
            _log.warning("CCID_TRACE=%s cannot be written (%s); continuing without a trace",
                         path, exc.message)
