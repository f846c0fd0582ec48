"""The wire, readable: every CCID frame with its time, direction and reader.

Tracing is off by default and then costs one attribute test in the transport
(``if trace.enabled:``). Turn it on with :func:`enable` or the ``CCID_TRACE=path``
environment variable (read when this module is first imported; a path ending in
``.jsonl`` selects the JSON-lines form).

Two forms:

* text, the lines users already paste from pcscd logs, prefixed with the elapsed time in
  microseconds since the previous line (as pcscd prints it), a timestamp and the reader::

      00000012 2024-05-01T12:00:00.123456 [Gemalto PC Twin 00 00] -> 000000 65 00 00 ...

  The 6-digit number after the arrow is, as in libccid's logs, an index (ours: the slot).
* JSON lines: one object per frame with everything :func:`replay` needs.

PIN bytes (data of VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, and the PIN
structure of PC_to_RDR_Secure) are written as ``**`` unless ``mask_pins=False``: a trace
is meant to be attached to public bug reports. :func:`load` reads both forms and also plain
pcscd/libccid debug logs, so a user's log can be summarised and replayed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from ccid.constants import ClassRequest, CommandStatus, MessageType, describe_error
from ccid.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ccid.testing import VirtualBackend

__all__ = [
    "DIRECTIONS",
    "CallStat",
    "ReplayScript",
    "Summary",
    "TraceError",
    "TraceRecord",
    "capture",
    "describe",
    "disable",
    "enable",
    "enabled",
    "format_record",
    "load",
    "loads",
    "mask_spans",
    "record",
    "replay",
    "span",
    "summarize",
]

#: True while at least one sink (file, stream or capture) is active.
enabled: bool = False

#: Frame directions: bulk OUT/IN, control setup(+data OUT) / data IN, interrupt IN.
DIRECTIONS = ("->", "<-", "ctrl->", "ctrl<-", "int<-")
_API = "api"  # an API-level call (span), with a name and a duration
_META = "meta"  # facts about a reader (descriptor, ids) recorded at open, for replay

#: ISO 7816-4 instructions whose command data is a PIN (or PUK + new PIN).
PIN_INS = frozenset({0x20, 0x24, 0x2C})

_INS_NAMES: dict[int, str] = {
    0x04: "DEACTIVATE FILE",
    0x0E: "ERASE BINARY",
    0x20: "VERIFY",
    0x22: "MANAGE SECURITY ENVIRONMENT",
    0x24: "CHANGE REFERENCE DATA",
    0x2A: "PERFORM SECURITY OPERATION",
    0x2C: "RESET RETRY COUNTER",
    0x44: "ACTIVATE FILE",
    0x46: "GENERATE KEY PAIR",
    0x47: "GENERATE ASYMMETRIC KEY PAIR",
    0x70: "MANAGE CHANNEL",
    0x82: "EXTERNAL AUTHENTICATE",
    0x84: "GET CHALLENGE",
    0x86: "GENERAL AUTHENTICATE",
    0x87: "GENERAL AUTHENTICATE",
    0x88: "INTERNAL AUTHENTICATE",
    0xA4: "SELECT",
    0xB0: "READ BINARY",
    0xB1: "READ BINARY",
    0xB2: "READ RECORD",
    0xC0: "GET RESPONSE",
    0xCA: "GET DATA",
    0xCB: "GET DATA",
    0xD6: "UPDATE BINARY",
    0xDA: "PUT DATA",
    0xDB: "PUT DATA",
    0xDC: "UPDATE RECORD",
    0xE2: "APPEND RECORD",
}

_STD_REQUESTS = {0x00: "GET_STATUS", 0x06: "GET_DESCRIPTOR", 0x09: "SET_CONFIGURATION",
                 0x0B: "SET_INTERFACE", 0x01: "CLEAR_FEATURE"}


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One traced frame (or API call, or reader fact).

    ``data`` holds the bytes as sent or received; masked bytes are zero there and listed
    in ``masked`` as (start, end) spans, so the PIN itself is never kept.
    """

    time: float  # wall clock, seconds since the epoch
    mono: float  # monotonic seconds, for durations
    reader: str
    direction: str
    data: bytes = b""
    slot: int | None = None
    masked: tuple[tuple[int, int], ...] = ()
    name: str | None = None  # api: call name; meta: what the info describes
    duration: float | None = None  # api: seconds spent in the call
    info: Mapping[str, Any] | None = field(default=None, compare=False)

    def tokens(self) -> list[str]:
        """Two-character hex tokens, ``**`` for masked bytes."""
        out = [f"{b:02X}" for b in self.data]
        for start, end in self.masked:
            for i in range(start, min(end, len(out))):
                out[i] = "**"
        return out

    def hex(self) -> str:
        return " ".join(self.tokens())

    def matches(self, frame: bytes, *, ignore: Iterable[int] = ()) -> bool:
        """True when ``frame`` equals this record's data, masked bytes and ``ignore`` aside."""
        if len(frame) != len(self.data):
            return False
        skip = set(ignore)
        for start, end in self.masked:
            skip.update(range(start, end))
        if not skip:
            return bytes(frame) == self.data
        return all(i in skip or a == b for i, (a, b) in enumerate(zip(frame, self.data)))


# --- PIN masking ---------------------------------------------------------------------


def _t1_block(payload: bytes, edc_masked: bool = False) -> tuple[int, bytes] | None:
    """(PCB, INF) when ``payload`` is a well-formed T=1 block with a valid LRC or CRC.

    A block whose EDC was masked in a trace is accepted on its length alone.
    """
    from ccid.framing import T1BlockError, check_t1_block

    if len(payload) < 4:
        return None
    if edc_masked:
        if payload[2] != 0xFF and len(payload) - 3 - payload[2] in (1, 2):
            return payload[1], payload[3 : 3 + payload[2]]
        return None
    for crc in (False, True):
        try:
            _, pcb, inf = check_t1_block(payload, crc)
        except T1BlockError:
            continue
        return pcb, inf
    return None


def _apdu_data_offset(apdu: bytes) -> int | None:
    """Offset of the command data in a command APDU (short or extended), None if none."""
    if len(apdu) <= 5:
        return None
    if apdu[4] == 0 and len(apdu) > 7:
        return 7  # extended Lc
    return 5


class _ChainState:
    """Per (reader, slot) memory of a command split over several frames."""

    __slots__ = ("level_pin", "t1_first", "t1_pin")

    def __init__(self) -> None:
        self.t1_first = True  # next T=1 I-block starts an APDU
        self.t1_pin = False  # the APDU being chained over T=1 is a PIN command
        self.level_pin = False  # same, chained with wLevelParameter (extended APDU level)


class _XfrView:
    """What an XfrBlock payload is: an APDU (or its start), a chained piece, or a T=1 block."""

    __slots__ = ("apdu", "apdu_offset", "continuation", "kind", "pin")

    def __init__(self) -> None:
        self.kind = "apdu"  # "apdu" | "t1-i" | "t1-r" | "t1-s" | "chained"
        self.apdu: bytes | None = None  # bytes starting with CLA INS, when known
        self.apdu_offset = 10  # where ``apdu`` starts in the frame
        self.continuation = False
        self.pin = False


def _view_xfr(frame: bytes, state: _ChainState, update: bool,
              masked: tuple[tuple[int, int], ...] = ()) -> _XfrView:
    """Classify the payload of a PC_to_RDR_XfrBlock (best effort, as the level is unknown)."""
    view = _XfrView()
    payload = frame[10:]
    level = frame[8] | (frame[9] << 8)
    edc_masked = bool(masked) and masked[-1][1] >= len(frame)
    block = _t1_block(payload, edc_masked)
    if block is not None:
        pcb, inf = block
        if pcb & 0x80 == 0:  # I-block
            more = bool(pcb & 0x20)
            if state.t1_first:
                view.kind = "t1-i"
                view.apdu = inf
                view.apdu_offset = 13
                view.pin = len(inf) >= 2 and inf[1] in PIN_INS
                pin_chain = view.pin
            else:
                view.kind = "chained"
                view.continuation = True
                view.apdu_offset = 13
                view.pin = state.t1_pin
                pin_chain = state.t1_pin
            if update:
                state.t1_first = not more
                state.t1_pin = pin_chain and more
        else:
            view.kind = "t1-r" if pcb & 0xC0 == 0x80 else "t1-s"
        return view
    if level in (0x0002, 0x0003):  # continuation of an extended APDU
        view.kind = "chained"
        view.continuation = True
        view.pin = state.level_pin
        if update and level == 0x0002:
            state.level_pin = False
        return view
    view.apdu = payload
    view.pin = len(payload) >= 2 and payload[1] in PIN_INS
    if update:
        state.level_pin = view.pin and level == 0x0001
    return view


def _pin_spans(frame: bytes, state: _ChainState) -> tuple[tuple[int, int], ...]:
    msg = frame[0]
    if msg == MessageType.PC_to_RDR_Secure:
        # bPINOperation stays readable (verify or modify); the PIN structure and the
        # APDU template that follow are masked whole.
        return ((11, len(frame)),) if len(frame) > 11 else ()
    if msg != MessageType.PC_to_RDR_XfrBlock:
        return ()
    view = _view_xfr(frame, state, update=True)
    if not view.pin:
        return ()
    edc = 0
    if view.kind in ("t1-i",) or (view.kind == "chained" and view.apdu_offset == 13):
        edc = len(frame) - 13 - frame[12]  # the EDC bytes would give the INF away
    end = len(frame) - edc
    if view.continuation:
        start = view.apdu_offset
    else:
        assert view.apdu is not None
        off = _apdu_data_offset(view.apdu)
        if off is None:
            return ()
        start = view.apdu_offset + off
    spans = [(start, end)] if start < end else []
    if edc:
        spans.append((end, len(frame)))
    return tuple(spans)


def mask_spans(frame: bytes, *, state: _ChainState | None = None) -> tuple[tuple[int, int], ...]:
    """(start, end) byte spans of ``frame`` (a PC_to_RDR message) that hold PIN material."""
    if len(frame) < 10:
        return ()
    return _pin_spans(frame, state if state is not None else _ChainState())


# --- sinks and recording ---------------------------------------------------------------

_Format = Literal["text", "jsonl"]


class _Sink:
    __slots__ = ("fmt", "last_mono", "mask_pins", "own", "records", "stream")

    def __init__(self, stream: IO[str] | None, fmt: _Format, mask_pins: bool, own: bool,
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
            line = json.dumps(_to_json(rec), separators=(",", ":"))
        else:
            line = format_record(rec, self.last_mono)
        self.last_mono = rec.mono
        self.stream.write(line + "\n")
        self.stream.flush()


_lock = threading.Lock()
_main_sink: _Sink | None = None
_captures: list[_Sink] = []
_chains: dict[tuple[str, int], _ChainState] = {}


def _refresh() -> None:
    global enabled
    enabled = _main_sink is not None or bool(_captures)


def enable(target: str | os.PathLike[str] | IO[str], mask_pins: bool = True,
           fmt: _Format | None = None) -> None:
    """Record every frame to a file path or a text stream (replacing any earlier target).

    ``fmt`` is ``"text"`` (pcscd-style lines) or ``"jsonl"``; by default a path ending in
    ``.jsonl`` or ``.json`` gives JSON lines, anything else text.
    """
    global _main_sink
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        chosen: _Format = fmt or ("jsonl" if path.suffix in (".jsonl", ".json") else "text")
        stream: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the sink
        own = True
    elif hasattr(target, "write"):
        chosen = fmt or "text"
        stream = target
        own = False
    else:
        raise UsageError(f"trace target must be a path or a text stream, not {type(target)!r}")
    if chosen not in ("text", "jsonl"):
        raise UsageError(f"trace format must be 'text' or 'jsonl', not {chosen!r}")
    sink = _Sink(stream, chosen, mask_pins, own)
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
        _chains.clear()
        _refresh()
    if old is not None and old.own and old.stream is not None:
        old.stream.close()


@contextlib.contextmanager
def capture(mask_pins: bool = True) -> Iterator[list[TraceRecord]]:
    """Collect the records made inside the ``with`` block into a list (tests, tools)."""
    records: list[TraceRecord] = []
    sink = _Sink(None, "text", mask_pins, False, records)
    with _lock:
        _captures.append(sink)
        _refresh()
    try:
        yield records
    finally:
        with _lock:
            _captures.remove(sink)
            _refresh()


def _sinks() -> list[_Sink]:
    return ([_main_sink] if _main_sink is not None else []) + _captures


def _emit(make: Any) -> None:
    with _lock:
        for sink in _sinks():
            sink.write(make(sink))


def record(reader: str, direction: str, data: bytes, *, slot: int | None = None) -> None:
    """Record one frame. The transport calls this only when :data:`enabled` is true."""
    if direction not in DIRECTIONS:
        raise UsageError(f"trace direction must be one of {DIRECTIONS}, not {direction!r}")
    now, mono = time.time(), time.perf_counter()
    raw = bytes(data)
    if slot is None and direction in ("->", "<-") and len(raw) >= 10:
        slot = raw[5]
    with _lock:
        spans: tuple[tuple[int, int], ...] = ()
        if direction == "->" and len(raw) >= 10:
            state = _chains.setdefault((reader, raw[5]), _ChainState())
            spans = _pin_spans(raw, state)
        for sink in _sinks():
            if spans and sink.mask_pins:
                hidden = bytearray(raw)
                for start, end in spans:
                    hidden[start:end] = bytes(end - start)
                rec = TraceRecord(now, mono, reader, direction, bytes(hidden), slot, spans)
            else:
                rec = TraceRecord(now, mono, reader, direction, raw, slot)
            sink.write(rec)


def describe(reader: str, info: Mapping[str, Any]) -> None:
    """Record facts about a reader (ids, raw descriptors) so that a replay can rebuild it.

    The reader layer calls this at open when tracing is on. Useful keys: ``vid``, ``pid``,
    ``bcdDevice``, ``interface``, ``ccid_descriptor`` (hex of the 54-byte class
    descriptor), ``interrupt`` (bool), ``manufacturer``, ``product``, ``serial``.
    """
    if not enabled:
        return
    now, mono = time.time(), time.perf_counter()
    clean = json.loads(json.dumps(dict(info), default=str))
    rec = TraceRecord(now, mono, reader, _META, name="reader", info=clean)
    _emit(lambda _sink: rec)


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
        if not enabled:
            return
        end = time.perf_counter()
        rec = TraceRecord(time.time(), end, self.reader, _API, name=self.name,
                          duration=end - self.start)
        _emit(lambda _sink: rec)


_NO_SPAN = contextlib.nullcontext()


def span(reader: str, name: str) -> contextlib.AbstractContextManager[Any]:
    """Context manager timing an API call (``Card.transmit`` …) for the summary.

    When tracing is off it returns a shared no-op context manager.
    """
    if not enabled:
        return _NO_SPAN
    return _Span(reader, name)


# --- text and JSON forms ---------------------------------------------------------------


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t).isoformat(timespec="microseconds")


def format_record(rec: TraceRecord, previous_mono: float | None = None) -> str:
    """One text line: delta µs, timestamp, [reader], then the pcscd-style payload."""
    delta = 0 if previous_mono is None else round((rec.mono - previous_mono) * 1e6)
    delta = max(0, min(delta, 99_999_999))
    head = f"{delta:08d} {_stamp(rec.time)} [{rec.reader}]"
    if rec.direction == _API:
        return f"{head} api {rec.name} {rec.duration or 0.0:.6f} sec"
    if rec.direction == _META:
        return f"{head} meta {json.dumps(rec.info, separators=(',', ':'))}"
    index = rec.slot if rec.slot is not None else 0
    body = rec.hex()
    return f"{head} {rec.direction} {index:06X} {body}".rstrip()


def _to_json(rec: TraceRecord) -> dict[str, Any]:
    obj: dict[str, Any] = {"t": round(rec.time, 6), "m": round(rec.mono, 9),
                           "reader": rec.reader, "dir": rec.direction}
    if rec.direction == _API:
        obj["name"] = rec.name
        obj["dur"] = rec.duration
        return obj
    if rec.direction == _META:
        obj["name"] = rec.name
        obj["info"] = rec.info
        return obj
    obj["slot"] = rec.slot
    obj["hex"] = rec.hex()
    return obj


def _from_hex(text: str) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    tokens = text.split()
    out = bytearray()
    spans: list[tuple[int, int]] = []
    for i, tok in enumerate(tokens):
        if tok == "**":
            out.append(0)
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
        else:
            out.append(int(tok, 16))
    return bytes(out), tuple(spans)


def _from_json(obj: Mapping[str, Any]) -> TraceRecord:
    direction = obj["dir"]
    t = float(obj.get("t", 0.0))
    mono = float(obj.get("m", t))
    reader = str(obj.get("reader", ""))
    if direction == _API:
        return TraceRecord(t, mono, reader, _API, name=str(obj.get("name")),
                           duration=float(obj.get("dur") or 0.0))
    if direction == _META:
        return TraceRecord(t, mono, reader, _META, name=str(obj.get("name")),
                           info=obj.get("info"))
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    data, spans = _from_hex(str(obj.get("hex", "")))
    slot = obj.get("slot")
    return TraceRecord(t, mono, reader, direction, data, None if slot is None else int(slot),
                       spans)


_HEX = r"(?:[0-9A-Fa-f]{2}|\*\*)"
_FRAME_RE = re.compile(
    r"(?P<dir>ctrl->|ctrl<-|int<-|->|<-) (?P<idx>[0-9A-Fa-f]{6}) ?"
    rf"(?P<hex>{_HEX}(?: {_HEX})*)?\s*$"
)
_OURS_RE = re.compile(r"^(?P<delta>\d{8}) (?P<stamp>\S+) \[(?P<reader>[^\]]*)\] (?P<rest>.*)$")
_DELTA_RE = re.compile(r"^(?P<delta>\d{8}) ")
_API_RE = re.compile(r"^api (?P<name>.+) (?P<dur>\d+\.\d+) sec$")
# Wall-clock prefixes of system logs: "2024-05-01 12:00:00.123" or macOS "12/11/2015 15:18:48,217"
_ISO_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?")
_DMY_RE = re.compile(r"^(\d\d)/(\d\d)/(\d{4}) (\d\d):(\d\d):(\d\d)(?:[.,](\d+))?")


def _log_time(line: str) -> float | None:
    """Seconds since the epoch from a syslog-style line prefix, None when there is none."""
    m = _ISO_RE.match(line)
    if m:
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _DMY_RE.match(line)
        if not m:
            return None
        day, month, year = int(m[1]), int(m[2]), int(m[3])
    try:
        stamp = datetime(year, month, day, int(m[4]), int(m[5]), int(m[6])).timestamp()
    except ValueError:
        return None
    return stamp + (float("0." + m[7]) if m[7] else 0.0)


def _parse_text(lines: Iterable[str]) -> list[TraceRecord]:
    """Our text lines, or pcscd / libccid debug logs (frame lines picked out of the rest)."""
    out: list[TraceRecord] = []
    clock = 0.0  # pcscd logs give µs since the previous line: add them all up
    first_stamp: float | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        ours = _OURS_RE.match(line)
        if ours:
            clock += int(ours["delta"]) / 1e6
            try:
                wall = datetime.fromisoformat(ours["stamp"]).timestamp()
            except ValueError:
                wall = clock
            reader, rest = ours["reader"], ours["rest"]
            api = _API_RE.match(rest)
            if api:
                out.append(TraceRecord(wall, clock, reader, _API, name=api["name"],
                                       duration=float(api["dur"])))
                continue
            if rest.startswith("meta "):
                out.append(TraceRecord(wall, clock, reader, _META, name="reader",
                                       info=json.loads(rest[5:])))
                continue
        else:
            delta = _DELTA_RE.match(line)
            stamp = None if delta else _log_time(line)
            if delta:
                clock += int(delta["delta"]) / 1e6
            elif stamp is not None:
                first_stamp = stamp if first_stamp is None else first_stamp
                clock = stamp - first_stamp
            wall = stamp if stamp is not None else clock
            reader, rest = "", line
        frame = _FRAME_RE.search(rest)
        if frame is None:
            continue
        if not ours:
            # libccid's index identifies the reader (and slot) within pcscd
            reader = f"reader {frame['idx']}"
        data, spans = _from_hex(frame["hex"] or "")
        slot = int(frame["idx"], 16) if ours else None
        if slot is None and frame["dir"] in ("->", "<-") and len(data) >= 10:
            slot = data[5]
        del number
        out.append(TraceRecord(wall, clock, reader, frame["dir"], data, slot, spans))
    return out


def loads(text: str) -> list[TraceRecord]:
    """Records from trace text: JSON lines, our text form, or a pcscd/libccid debug log."""
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith("{"):
        out = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(_from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"trace line {number} is not a trace record: {exc}") from None
        return out
    return _parse_text(lines)


def load(source: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord]) -> list[TraceRecord]:
    """Records from a trace file path, an open text stream, or records already in memory."""
    if isinstance(source, (str, os.PathLike)):
        try:
            text = Path(source).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read trace {os.fspath(source)!r}: {exc}") from None
        return loads(text)
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        return loads(source.read())
    records = list(source)
    if not all(isinstance(r, TraceRecord) for r in records):
        raise UsageError("trace records must be TraceRecord objects")
    return records


# --- summary ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallStat:
    """Time spent in one kind of call (CCID message, or XfrBlock by INS, or API call)."""

    name: str
    count: int
    total: float  # seconds
    percent: float  # of the trace's total time
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class TraceError:
    """A failed command (bmCommandStatus = failed) or a command left without a reply."""

    time: float
    reader: str
    slot: int | None
    command: str
    bStatus: int | None
    bError: int | None
    text: str


@dataclass(frozen=True, slots=True)
class Summary:
    """Calls sorted by total time, as pcsc-spy prints them, plus errors and interrupts."""

    total_time: float
    frames: int
    calls: tuple[CallStat, ...]
    api: tuple[CallStat, ...]
    errors: tuple[TraceError, ...]
    interrupts: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        lines = ["Results sorted by total execution time",
                 f"total time: {self.total_time:.6f} sec"]
        lines += [f"{c.total:.6f} sec ({c.count:3d} calls) {c.percent:5.2f}% {c.name}"
                  for c in self.calls]
        if self.api:
            lines.append("API calls")
            lines += [f"{c.total:.6f} sec ({c.count:3d} calls) {c.percent:5.2f}% {c.name}"
                      for c in self.api]
        if self.interrupts:
            lines.append("Interrupts")
            lines += [f"{n:9d} x {name}" for name, n in self.interrupts]
        lines.append(f"Errors: {len(self.errors)}")
        for e in self.errors:
            where = f"{e.reader} slot {e.slot}" if e.slot is not None else e.reader
            code = "" if e.bError is None else f" bStatus 0x{e.bStatus or 0:02X}" \
                f" bError 0x{e.bError:02X}"
            lines.append(f"  {_stamp(e.time)} {where}: {e.command}:{code} {e.text}")
        return "\n".join(lines)


def _message_name(msg: int) -> str:
    try:
        name = MessageType(msg).name
    except ValueError:
        return f"message 0x{msg:02X}"
    return name.split("_", 3)[-1]


def call_name(frame: bytes, state: _ChainState | None = None,
              masked: tuple[tuple[int, int], ...] = ()) -> str:
    """Name of a PC_to_RDR command for the summary: message type, and INS for XfrBlock."""
    if len(frame) < 10:
        return "short frame"
    name = _message_name(frame[0])
    if frame[0] != MessageType.PC_to_RDR_XfrBlock:
        return name
    view = _view_xfr(frame, state if state is not None else _ChainState(), True, masked)
    if view.kind == "t1-r":
        return f"{name} T=1 R-block"
    if view.kind == "t1-s":
        return f"{name} T=1 S-block"
    if view.kind == "chained":
        return f"{name} (chained)"
    apdu = view.apdu or b""
    if len(apdu) < 4:
        return name if not apdu else f"{name} ({len(apdu)} bytes)"
    ins = apdu[1]
    text = _INS_NAMES.get(ins)
    return f"{name} {ins:02X} {text}" if text else f"{name} {ins:02X}"


def _control_name(setup: bytes) -> str:
    if len(setup) < 8:
        return "control"
    kind = (setup[0] >> 5) & 3
    request = setup[1]
    if kind == 1:
        try:
            return f"control {ClassRequest(request).name}"
        except ValueError:
            return f"control class 0x{request:02X}"
    if kind == 0:
        return f"control {_STD_REQUESTS.get(request, f'0x{request:02X}')}"
    return f"control vendor 0x{request:02X}"


def _stats(acc: Mapping[str, list[float]], total: float) -> tuple[CallStat, ...]:
    out = [CallStat(name, len(v), sum(v), (100.0 * sum(v) / total) if total > 0 else 0.0,
                    min(v), max(v)) for name, v in acc.items()]
    out.sort(key=lambda c: (-c.total, -c.count, c.name))
    return tuple(out)


def summarize(trace: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord]) -> Summary:
    """Pair each command with its reply and total the time per kind of call."""
    records = load(trace)
    calls: dict[str, list[float]] = {}
    api: dict[str, list[float]] = {}
    interrupts: dict[str, int] = {}
    errors: list[TraceError] = []
    pending: dict[tuple[str, int, int], tuple[TraceRecord, str]] = {}
    control: dict[str, tuple[TraceRecord, str]] = {}
    chains: dict[tuple[str, int], _ChainState] = {}
    frames = 0
    for rec in records:
        d = rec.direction
        if d == _API:
            api.setdefault(rec.name or "?", []).append(rec.duration or 0.0)
            continue
        if d == _META:
            continue
        frames += 1
        if d == "->" and len(rec.data) >= 10:
            state = chains.setdefault((rec.reader, rec.data[5]), _ChainState())
            pending[(rec.reader, rec.data[5], rec.data[6])] = (rec, call_name(rec.data, state,
                                                                          rec.masked))
        elif d == "<-" and len(rec.data) >= 10:
            key = (rec.reader, rec.data[5], rec.data[6])
            status = rec.data[7]
            if status >> 6 == CommandStatus.TIME_EXTENSION:
                continue  # the real answer is still to come
            entry = pending.pop(key, None)
            if entry is None:
                errors.append(TraceError(rec.time, rec.reader, rec.data[5],
                                         _message_name(rec.data[0]), status, None,
                                         "reply without a matching command (stale bSeq?)"))
                continue
            cmd, name = entry
            calls.setdefault(name, []).append(max(0.0, rec.mono - cmd.mono))
            if status >> 6 == CommandStatus.FAILED:
                errors.append(TraceError(rec.time, rec.reader, rec.data[5], name, status,
                                         rec.data[8], describe_error(rec.data[8])))
        elif d == "ctrl->":
            control[rec.reader] = (rec, _control_name(rec.data))
        elif d == "ctrl<-":
            got = control.pop(rec.reader, None)
            if got is not None:
                calls.setdefault(got[1], []).append(max(0.0, rec.mono - got[0].mono))
        elif d == "int<-" and rec.data:
            kind = rec.data[0]
            label = {0x50: "NotifySlotChange", 0x51: "HardwareError"}.get(
                kind, f"interrupt 0x{kind:02X}")
            interrupts[label] = interrupts.get(label, 0) + 1
    for _cmd, name in control.values():
        calls.setdefault(name, []).append(0.0)  # OUT requests have no IN data stage
    for (reader, slot, _seq), (cmd, name) in pending.items():
        errors.append(TraceError(cmd.time, reader, slot, name, None, None,
                                 "no reply recorded (timeout, unplug or end of trace)"))
    timed = [r for r in records if r.direction != _META]
    total = (max(r.mono for r in timed) - min(r.mono for r in timed)) if timed else 0.0
    if total <= 0:
        total = sum(sum(v) for v in calls.values())
    errors.sort(key=lambda e: e.time)
    return Summary(total, frames, _stats(calls, total), _stats(api, total), tuple(errors),
                   tuple(sorted(interrupts.items())))


# --- replay ----------------------------------------------------------------------------


class ReplayScript:
    """The recorded conversation of one reader, answering commands with recorded replies.

    Commands match on their bytes except bSeq (rewritten in the replies) and masked
    bytes. Each recorded exchange is used once, in recorded order (the first unused one
    that matches), so repeated commands such as GET CHALLENGE replay their own answers;
    when every match is used up the last one answers again (status polls). A command the
    trace never saw gets a failed SlotStatus (bError 0x00, command not supported) and is
    listed in ``unmatched``.
    """

    def __init__(self, records: Iterable[TraceRecord], reader: str | None = None) -> None:
        recs = [r for r in records if r.direction in DIRECTIONS or r.direction == _META]
        names = [r.reader for r in recs if r.direction == "->"]
        if reader is None:
            if not names:
                raise UsageError("the trace holds no command to replay")
            reader = names[0]
        self.reader = reader
        self.info: Mapping[str, Any] | None = None
        self.exchanges: list[tuple[TraceRecord, list[bytes]]] = []
        self.interrupts: list[bytes] = []
        #: Recorded answers to class requests, by bRequest (GET_DATA_RATES, ...).
        self.control: dict[int, bytes] = {}
        open_cmds: dict[tuple[int, int], int] = {}
        last_setup: bytes | None = None
        for r in recs:
            if r.reader != reader:
                continue
            if r.direction == _META:
                self.info = r.info
            elif r.direction == "int<-":
                self.interrupts.append(r.data)
            elif r.direction == "ctrl->":
                last_setup = r.data
            elif r.direction == "ctrl<-":
                if last_setup is not None and len(last_setup) >= 2:
                    self.control[last_setup[1]] = r.data
                last_setup = None
            elif r.direction == "->" and len(r.data) >= 10:
                open_cmds[(r.data[5], r.data[6])] = len(self.exchanges)
                self.exchanges.append((r, []))
            elif r.direction == "<-" and len(r.data) >= 10:
                index = open_cmds.get((r.data[5], r.data[6]))
                if index is not None:
                    self.exchanges[index][1].append(r.data)
                    if r.data[7] >> 6 != CommandStatus.TIME_EXTENSION:
                        del open_cmds[(r.data[5], r.data[6])]
        if not self.exchanges:
            raise UsageError(f"the trace holds no command for reader {reader!r}")
        self._used = [False] * len(self.exchanges)
        self._lock = threading.Lock()
        self.unmatched: list[bytes] = []
        self.served = 0

    def answer(self, command: bytes) -> list[bytes]:
        """The reply frames (time extensions first) for one PC_to_RDR command."""
        command = bytes(command)
        with self._lock:
            chosen: int | None = None
            fallback: int | None = None
            for index, (cmd, replies) in enumerate(self.exchanges):
                if replies and cmd.matches(command, ignore=(6,)):
                    if not self._used[index]:
                        chosen = index
                        break
                    fallback = index
            if chosen is None:
                chosen = fallback
            if chosen is not None:
                self._used[chosen] = True
                self.served += 1
                seq = command[6]
                return [r[:6] + bytes((seq,)) + r[7:] for r in self.exchanges[chosen][1]]
            self.unmatched.append(command)
        slot = command[5] if len(command) > 5 else 0
        seq = command[6] if len(command) > 6 else 0
        # failed SlotStatus, ICC present and inactive, bError 0 (command not supported)
        return [bytes((0x81, 0, 0, 0, 0, slot, seq, 0x41, 0x00, 0x00))]

    @property
    def unused(self) -> list[bytes]:
        """Recorded commands that the replay has not been asked for (yet)."""
        return [cmd.data for (cmd, _), used in zip(self.exchanges, self._used) if not used]


def replay(trace: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord], *,
           reader: str | None = None, backend: VirtualBackend | None = None) -> Any:
    """Turn a recorded trace into a virtual reader answering with the recorded replies.

    Returns the pyusb backend holding it (a new ``VirtualBackend`` unless one is given):
    ``ccid.open_reader(backend=...)`` then talks to the replayed reader. The reader is
    rebuilt from the facts the trace recorded at open (USB ids, class descriptor,
    interrupt endpoint, GET_DATA_RATES answer); without them it is a generic TPDU reader.
    Its :class:`ReplayScript` is the ``replay`` attribute of the virtual reader
    (``backend.readers[0].replay``): check ``unmatched`` to see where the program under
    test left the recorded path. A virtual device lives in the process that built it.
    """
    script = ReplayScript(load(trace), reader)
    device = _replay_reader(script)
    if backend is None:
        from ccid.testing import VirtualBackend

        return VirtualBackend(device)
    backend.plug(device)
    return backend


def _replay_reader(script: ReplayScript) -> Any:
    """A ccid.testing VirtualReader whose bulk answers come from ``script``.

    The script is the reader's public ``responder``: every command gets its recorded
    replies (or the "not supported" SlotStatus), the model is never consulted.
    """
    from ccid.descriptor import parse_ccid_descriptor
    from ccid.testing import VirtualReader

    info = dict(script.info or {})
    raw = info.get("ccid_descriptor")
    if raw:
        descriptor = parse_ccid_descriptor(bytes.fromhex(str(raw)))
    else:
        # A trace without reader facts (a pcscd log): the Gemalto PC Twin's descriptor,
        # a one-slot TPDU reader for T=0 and T=1 (the reader of most bug reports).
        descriptor = parse_ccid_descriptor(bytes.fromhex(
            "36210001000703000000a00f0000a00f000000002a00001640050000fe0000000000000000"
            "000000300201000f010000000000000001"))

    def answer(request: int) -> bytes | str:
        got = script.control.get(request)
        return "stall" if got is None else got

    kwargs: dict[str, Any] = {
        "vid": int(info.get("vid", 0x1209)),
        "pid": int(info.get("pid", 0xCC1D)),
        "bcd_device": int(info.get("bcdDevice", 0x0100)),
        "has_interrupt": bool(info.get("interrupt", True)),
        "interface_number": int(info.get("interface", 0)),
        "data_rates_answer": answer(ClassRequest.GET_DATA_RATES),
        "clocks_answer": answer(ClassRequest.GET_CLOCK_FREQUENCIES),
        "name": f"replay of {script.reader}",
        "responder": script.answer,
    }
    for key in ("manufacturer", "product", "serial"):
        if info.get(key) is not None:
            kwargs[key] = str(info[key])
    device: Any = VirtualReader(descriptor, **kwargs)
    device.replay = script
    return device


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at fork(): the child starts afresh.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _from_environment() -> None:
    path = os.environ.get("CCID_TRACE")
    if path:
        mask = os.environ.get("CCID_TRACE_PINS", "") != "1"
        try:
            enable(path, mask_pins=mask)
        except (OSError, UsageError) as exc:
            # A trace is a debugging aid: a wrong path must not stop the library.
            import logging

            logging.getLogger(__name__).warning(
                "CCID_TRACE=%s cannot be written (%s); continuing without a trace", path, exc)


_from_environment()
