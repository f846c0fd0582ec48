"""Time per kind of call, as pcsc-spy prints it, with failed commands and interrupts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from ccid.constants import ClassRequest, CommandStatus, MessageType, describe_error
from ccid.trace.formats import _stamp, load
from ccid.trace.masking import _t1_block
from ccid.trace.records import API, META, TraceRecord

__all__ = ["INS_NAMES", "CallStat", "Summary", "TraceError", "call_name", "summarize"]

INS_NAMES: dict[int, str] = {
    0x04: "DEACTIVATE FILE",
    0x0E: "ERASE BINARY",
    0x20: "VERIFY",
    0x21: "VERIFY",
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
    0xC2: "ENVELOPE",
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


class NameState:
    """Per (reader, slot): whether the next T=1 I-block starts a command (naming only)."""

    __slots__ = ("t1_first",)

    def __init__(self) -> None:
        self.t1_first = True


def _message_name(msg: int) -> str:
    try:
        name = MessageType(msg).name
    except ValueError:
        return f"message 0x{msg:02X}"
    return name.split("_", 3)[-1]


def _is_masked(masked: tuple[tuple[int, int], ...], index: int) -> bool:
    return any(start <= index < end for start, end in masked)


def call_name(frame: bytes, state: NameState | None = None,
              masked: tuple[tuple[int, int], ...] = ()) -> str:
    """Name of a PC_to_RDR command for the summary: message type, and INS for XfrBlock."""
    if len(frame) < 10:
        return "short frame"
    name = _message_name(frame[0])
    if frame[0] != MessageType.PC_to_RDR_XfrBlock:
        return name
    state = state if state is not None else NameState()
    payload = bytes(frame[10:])
    level = frame[8] | (frame[9] << 8)
    block = _t1_block(payload)
    if block is None and masked and masked[-1][1] >= len(frame) and len(payload) >= 4 \
            and payload[2] != 0xFF and len(payload) - 3 - payload[2] in (1, 2):
        # a T=1 block whose EDC was masked: take it on its length alone
        block = (payload[1], payload[3 : 3 + payload[2]], len(payload) - 3 - payload[2])
    offset = 10
    if block is not None:
        pcb, inf, _ = block
        if pcb & 0x80:
            return f"{name} T=1 {'R' if pcb & 0xC0 == 0x80 else 'S'}-block"
        first, state.t1_first = state.t1_first, not pcb & 0x20
        if not first:
            return f"{name} (chained)"
        apdu, offset = inf, 13
    elif level in (0x0002, 0x0003):
        return f"{name} (chained)"
    else:
        apdu = payload
    if len(apdu) < 4:
        return name if not apdu else f"{name} ({len(apdu)} bytes)"
    if _is_masked(masked, offset + 1):
        return f"{name} (masked)"
    ins = apdu[1]
    text = INS_NAMES.get(ins)
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


def _stat_dict(c: CallStat) -> dict[str, Any]:
    return {"name": c.name, "count": c.count, "total": c.total, "percent": c.percent,
            "min": c.min, "max": c.max}


@dataclass(frozen=True, slots=True)
class Summary:
    """Calls sorted by total time, as pcsc-spy prints them, plus errors and interrupts."""

    total_time: float
    frames: int
    calls: tuple[CallStat, ...]
    api: tuple[CallStat, ...]
    errors: tuple[TraceError, ...]
    interrupts: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON data (what ``ccid trace --json`` prints)::

            {"total_time": float (seconds), "frames": int,
             "calls": [CALL, ...], "api": [CALL, ...],
             "errors": [{"time": float (epoch seconds), "reader": str, "slot": int | null,
                         "command": str, "bStatus": int | null, "bError": int | null,
                         "text": str}, ...],
             "interrupts": [{"name": str, "count": int}, ...]}

        where CALL is ``{"name": str, "count": int, "total": float, "percent": float,
        "min": float, "max": float}`` (times in seconds), calls sorted by total time.
        """
        return {
            "total_time": self.total_time,
            "frames": self.frames,
            "calls": [_stat_dict(c) for c in self.calls],
            "api": [_stat_dict(c) for c in self.api],
            "errors": [{"time": e.time, "reader": e.reader, "slot": e.slot,
                        "command": e.command, "bStatus": e.bStatus, "bError": e.bError,
                        "text": e.text} for e in self.errors],
            "interrupts": [{"name": name, "count": n} for name, n in self.interrupts],
        }

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


def _stats(acc: Mapping[str, list[float]], total: float) -> tuple[CallStat, ...]:
    out = [CallStat(name, len(v), sum(v), (100.0 * sum(v) / total) if total > 0 else 0.0,
                    min(v), max(v)) for name, v in acc.items()]
    out.sort(key=lambda c: (-c.total, -c.count, c.name))
    return tuple(out)


def _no_reply(cmd: TraceRecord, name: str) -> TraceError:
    return TraceError(cmd.time, cmd.reader, cmd.data[5], name, None, None,
                      "no reply recorded (timeout, unplug or end of trace)")


def summarize(trace: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord]) -> Summary:
    """Pair each command with its reply and total the time per kind of call."""
    records = load(trace)
    calls: dict[str, list[float]] = {}
    api: dict[str, list[float]] = {}
    interrupts: dict[str, int] = {}
    errors: list[TraceError] = []
    pending: dict[tuple[str, int, int], tuple[TraceRecord, str]] = {}
    control: dict[str, tuple[TraceRecord, str]] = {}
    names: dict[tuple[str, int], NameState] = {}
    frames = 0
    for rec in records:
        d = rec.direction
        if d == API:
            api.setdefault(rec.name or "?", []).append(rec.duration or 0.0)
            continue
        if d == META:
            continue
        frames += 1
        if d == "->" and len(rec.data) >= 10:
            state = names.setdefault((rec.reader, rec.data[5]), NameState())
            if rec.data[0] in (MessageType.PC_to_RDR_IccPowerOn, MessageType.PC_to_RDR_Abort):
                state.t1_first = True  # no command can continue over a power-on or abort
            key = (rec.reader, rec.data[5], rec.data[6])
            unanswered = pending.pop(key, None)
            if unanswered is not None:  # its bSeq came round again: it never got a reply
                errors.append(_no_reply(*unanswered))
            pending[key] = (rec, call_name(rec.data, state, rec.masked))
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
                names[(rec.reader, rec.data[5])] = NameState()  # a chain ends with a failure
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
    errors += [_no_reply(cmd, name) for cmd, name in pending.values()]
    timed = [r for r in records if r.direction != META]
    total = (max(r.mono for r in timed) - min(r.mono for r in timed)) if timed else 0.0
    if total <= 0:
        total = sum(sum(v) for v in calls.values())
    errors.sort(key=lambda e: e.time)
    return Summary(total, frames, _stats(calls, total), _stats(api, total), tuple(errors),
                   tuple(sorted(interrupts.items())))
