"""The two trace forms, written and read, and pcscd/libccid debug logs, read.

* text: the lines users paste from pcscd logs, prefixed with the elapsed time in
  microseconds since the previous line, a timestamp and the reader::

      00000012 2024-05-01T12:00:00.123456 [Gemalto PC Twin 00 00] -> 000000 65 00 00 ...

* JSON lines: one object per record, ``{"t", "m", "reader", "dir", "slot", "hex"}`` for a
  frame, ``"name"``/``"dur"`` for an API call, ``"name"``/``"info"`` for reader facts.

Reading never raises anything but :class:`ccid.errors.TraceFormatError` (which names the
line) on malformed input: JSON that does not parse or nests too deep, numbers that are not
finite or out of range, hex that is not hex, fields of the wrong type.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ccid.errors import TraceFormatError
from ccid.trace.records import API, DIRECTIONS, META, TraceRecord

__all__ = ["MAX_LINE", "format_record", "load", "loads", "to_json"]

#: Longest line read (characters): a frame is at most 65,548 bytes, 3 characters each.
MAX_LINE = 400_000
_MAX_DEPTH = 32  # JSON nesting accepted in a record (reader facts are flat)
# Wall-clock times a trace may carry: 1970 .. 9000, within what datetime can print.
_T_MIN, _T_MAX = 0.0, 221_845_392_000.0


def _stamp(t: float) -> str:
    try:
        return datetime.fromtimestamp(t).isoformat(timespec="microseconds")
    except (ValueError, OSError, OverflowError):
        return "0000-00-00T00:00:00.000000"  # a record made in memory with a wild time


def format_record(rec: TraceRecord, previous_mono: float | None = None) -> str:
    """One text line: delta µs, timestamp, [reader], then the pcscd-style payload."""
    delta = 0.0 if previous_mono is None else (rec.mono - previous_mono) * 1e6
    micros = round(delta) if math.isfinite(delta) else 0
    micros = max(0, min(micros, 99_999_999))
    head = f"{micros:08d} {_stamp(rec.time)} [{rec.reader}]"
    if rec.direction == API:
        return f"{head} api {rec.name} {rec.duration or 0.0:.6f} sec"
    if rec.direction == META:
        return f"{head} meta {json.dumps(rec.info, separators=(',', ':'), default=str)}"
    index = rec.slot if rec.slot is not None else 0
    body = rec.hex()
    return f"{head} {rec.direction} {index:06X} {body}".rstrip()


def to_json(rec: TraceRecord) -> dict[str, Any]:
    """The JSON-lines object of one record."""
    obj: dict[str, Any] = {"t": round(rec.time, 6), "m": round(rec.mono, 9),
                           "reader": rec.reader, "dir": rec.direction}
    if rec.direction == API:
        obj["name"] = rec.name
        obj["dur"] = rec.duration
        return obj
    if rec.direction == META:
        obj["name"] = rec.name
        obj["info"] = rec.info
        return obj
    obj["slot"] = rec.slot
    obj["hex"] = rec.hex()
    return obj


_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2}|\*\*)$")


def _from_hex(text: str, line: int) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    out = bytearray()
    spans: list[tuple[int, int]] = []
    for i, tok in enumerate(text.split()):
        if not _TOKEN.match(tok):
            raise TraceFormatError(f"{tok[:16]!r} is not a hex byte", line=line)
        if tok == "**":
            out.append(0)
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
        else:
            out.append(int(tok, 16))
    return bytes(out), tuple(spans)


def _number(obj: Mapping[str, Any], key: str, default: float, line: int,
            low: float = -math.inf, high: float = math.inf) -> float:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceFormatError(f'"{key}" must be a number, not {type(value).__name__}',
                               line=line)
    number = float(value) if abs(value) < 1e300 else math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise TraceFormatError(f'"{key}" is out of range: {value!r:.40}', line=line)
    return number


def _text(obj: Mapping[str, Any], key: str, line: int, default: str = "") -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise TraceFormatError(f'"{key}" must be a string, not {type(value).__name__}',
                               line=line)
    return value


def _depth_ok(text: str) -> bool:
    """JSON nesting of ``text`` stays within bounds (checked before parsing it)."""
    depth = peak = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in "]}":
            depth -= 1
    return peak <= _MAX_DEPTH


def _parse_json(text: str, line: int) -> Any:
    if len(text) > MAX_LINE:
        raise TraceFormatError(f"line longer than {MAX_LINE} characters", line=line)
    if text.count("{") + text.count("[") > _MAX_DEPTH and not _depth_ok(text):
        raise TraceFormatError(f"JSON nested deeper than {_MAX_DEPTH} levels", line=line)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except TraceFormatError as exc:
        raise TraceFormatError(str(exc), line=line) from None
    except (ValueError, RecursionError) as exc:
        raise TraceFormatError(f"not JSON: {exc}", line=line) from None


def _no_constant(name: str) -> Any:
    raise TraceFormatError(f"{name} is not a number a trace may hold")


def _info(value: Any, line: int) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise TraceFormatError(f"reader facts must be a JSON object, not {type(value).__name__}",
                           line=line)


def _from_json(obj: Any, line: int) -> TraceRecord:
    if not isinstance(obj, dict):
        raise TraceFormatError(f"a record is a JSON object, not {type(obj).__name__}",
                               line=line)
    direction = obj.get("dir")
    if not isinstance(direction, str):
        raise TraceFormatError('"dir" is missing or not a string', line=line)
    t = _number(obj, "t", 0.0, line, _T_MIN, _T_MAX)
    mono = _number(obj, "m", t, line, -1e15, 1e15)
    reader = _text(obj, "reader", line)
    if direction == API:
        return TraceRecord(t, mono, reader, API, name=_text(obj, "name", line, "?"),
                           duration=_number(obj, "dur", 0.0, line, 0.0, 1e9), line=line)
    if direction == META:
        return TraceRecord(t, mono, reader, META, name=_text(obj, "name", line, "reader"),
                           info=_info(obj.get("info"), line), line=line)
    if direction not in DIRECTIONS:
        raise TraceFormatError(f"unknown direction {direction[:20]!r}", line=line)
    data, spans = _from_hex(_text(obj, "hex", line), line)
    slot = obj.get("slot")
    if slot is not None and (isinstance(slot, bool) or not isinstance(slot, int)
                             or not 0 <= slot <= 0xFF):
        raise TraceFormatError(f'"slot" must be 0..255 or null, not {slot!r:.40}', line=line)
    return TraceRecord(t, mono, reader, direction, data, slot, spans, line=line)


_HEX = r"(?:[0-9A-Fa-f]{2}|\*\*)"
_FRAME_RE = re.compile(
    r"(?P<dir>ctrl->|ctrl<-|int<-|->|<-) (?P<idx>[0-9A-Fa-f]{6}) ?"
    rf"(?P<hex>{_HEX}(?: {_HEX})*)?\s*$"
)
_OURS_RE = re.compile(r"^(?P<delta>\d{8}) (?P<stamp>\S+) \[(?P<reader>[^\]]*)\] (?P<rest>.*)$")
_DELTA_RE = re.compile(r"^(?P<delta>\d{8}) ")
_API_RE = re.compile(r"^api (?P<name>.+) (?P<dur>\d{1,12}\.\d{1,12}) sec$")
# Wall-clock prefixes of system logs: "2024-05-01 12:00:00.123" or macOS "12/11/2015 15:18:48,217"
_ISO_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?")
_DMY_RE = re.compile(r"^(\d\d)/(\d\d)/(\d{4}) (\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?")


def _timestamp(value: datetime) -> float | None:
    try:
        stamp = value.timestamp()
    except (ValueError, OSError, OverflowError):
        return None
    return stamp if _T_MIN <= stamp <= _T_MAX else None


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
        value = datetime(year, month, day, int(m[4]), int(m[5]), int(m[6]))
    except ValueError:
        return None
    stamp = _timestamp(value)
    if stamp is None:
        return None
    return stamp + (float("0." + m[7]) if m[7] else 0.0)


def _parse_text(lines: Iterable[str]) -> list[TraceRecord]:
    """Our text lines, or pcscd / libccid debug logs (frame lines picked out of the rest)."""
    out: list[TraceRecord] = []
    clock = 0.0  # pcscd logs give µs since the previous line: add them all up
    first_stamp: float | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if len(line) > MAX_LINE:
            raise TraceFormatError(f"line longer than {MAX_LINE} characters", line=number)
        ours = _OURS_RE.match(line)
        if ours:
            clock += int(ours["delta"]) / 1e6
            try:
                wall = _timestamp(datetime.fromisoformat(ours["stamp"]))
            except ValueError:
                wall = None
            wall = clock if wall is None else wall
            reader, rest = ours["reader"], ours["rest"]
            api = _API_RE.match(rest)
            if api:
                out.append(TraceRecord(wall, clock, reader, API, name=api["name"],
                                       duration=float(api["dur"]), line=number))
                continue
            if rest.startswith("meta "):
                info = _info(_parse_json(rest[5:], number), number)
                out.append(TraceRecord(wall, clock, reader, META, name="reader", info=info,
                                       line=number))
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
        data, spans = _from_hex(frame["hex"] or "", number)
        slot: int | None = int(frame["idx"], 16) if ours else None
        if slot is not None and slot > 0xFF:
            raise TraceFormatError(f"slot index {frame['idx']} is over 0xFF", line=number)
        if slot is None and frame["dir"] in ("->", "<-") and len(data) >= 10:
            slot = data[5]
        out.append(TraceRecord(wall, clock, reader, frame["dir"], data, slot, spans,
                               line=number))
    return out


def loads(text: str) -> list[TraceRecord]:
    """Records from trace text: JSON lines, our text form, or a pcscd/libccid debug log.

    Raises :class:`ccid.errors.TraceFormatError` naming the line of a malformed record.
    Lines of a debug log that are not frames are skipped; an input without a single
    record gives an empty list.
    """
    if not isinstance(text, str):
        raise TraceFormatError(f"trace text must be str, not {type(text).__name__}")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith("{"):
        out = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                out.append(_from_json(_parse_json(line, number), number))
        return out
    return _parse_text(lines)


def load(source: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord]) -> list[TraceRecord]:
    """Records from a trace file path, an open text stream, or records already in memory."""
    if isinstance(source, (str, os.PathLike)):
        try:
            text = Path(source).read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"cannot read trace {os.fspath(source)!r}: {exc}") from None
        return loads(text)
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        try:
            content = source.read()
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"cannot read the trace stream: {exc}") from None
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        return loads(content)
    try:
        records = list(source)
    except TypeError:
        raise TraceFormatError(f"a trace is a path, a text stream or records, not "
                               f"{type(source).__name__}") from None
    if not all(isinstance(r, TraceRecord) for r in records):
        raise TraceFormatError("trace records must be TraceRecord objects")
    return records
