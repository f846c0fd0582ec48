"""Trace replay: a virtual reader that answers with what a recorded trace holds.

    from ccid.testing.replay import replay
    backend = replay("session.jsonl")
    with ccid.open_reader(backend=backend) as reader: ...

A command the trace holds no answer for raises :class:`ccid.errors.TraceReplayError`
(saying so, with the command's header) in the program under test; the reader stays usable.
Recorded interrupt messages (card inserted, removed, hardware errors) are played back on the
interrupt endpoint in recorded order, each once the commands recorded before it have been
answered.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import IO, Any

import usb.core

from ccid.constants import ClassRequest
from ccid.descriptor import parse_ccid_descriptor
from ccid.errors import CCIDError, TraceFormatError, TraceReplayError
from ccid.testing.backend import VirtualBackend, VirtualDevice
from ccid.testing.reader import VirtualReader
from ccid.trace import ReplayScript, TraceRecord, load

__all__ = ["ReplayReader", "replay"]

# A trace without reader facts (a pcscd log): the Gemalto PC Twin's descriptor, a one-slot
# TPDU reader for T=0 and T=1 (the reader of most bug reports).
_DEFAULT_DESCRIPTOR = bytes.fromhex(
    "36210001000703000000a00f0000a00f000000002a00001640050000fe0000000000000000"
    "000000300201000f010000000000000001")


class _NoRecordedAnswer(TraceReplayError, usb.core.USBError):  # type: ignore[misc]
    """Raised from the virtual bulk-OUT endpoint: pyusb passes it through, the transport
    hands it on as the ccid error it is."""


class ReplayReader(VirtualReader):
    """A virtual reader whose bulk answers and interrupt messages come from a trace.

    ``replay`` is its :class:`ccid.trace.ReplayScript`: ``unmatched`` lists the commands
    the trace had no answer for.
    """

    def __init__(self, script: ReplayScript, descriptor: Any, **kwargs: Any) -> None:
        self.replay = script
        super().__init__(descriptor, responder=self._answer, **kwargs)

    def play_interrupts(self) -> None:
        """Queue the recorded interrupt messages that are due (see ``interrupts_due``)."""
        due = self.replay.interrupts_due()
        if due:
            self.queue_interrupt(*due)

    def _answer(self, frame: bytes) -> list[bytes]:
        replies = self.replay.lookup(frame)
        if replies is None:
            head = frame[:10].hex(" ").upper()
            raise _NoRecordedAnswer(
                f"the replayed trace has no answer for this command (header {head})",
                reader=self.name)
        self.play_interrupts()
        return replies


def _int(info: Mapping[str, Any], key: str, default: int, high: int, line: int | None) -> int:
    value = info.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise TraceFormatError(f"reader fact {key!r} must be an integer 0..{high}, not "
                               f"{value!r:.40}", line=line)
    return value


def _reader_kwargs(script: ReplayScript) -> tuple[Any, dict[str, Any]]:
    info = dict(script.info or {})
    line = script.info_line
    raw = info.get("ccid_descriptor")
    if raw:
        if not isinstance(raw, str):
            raise TraceFormatError("reader fact 'ccid_descriptor' must be a hex string",
                                   line=line)
        try:
            descriptor = parse_ccid_descriptor(bytes.fromhex(raw))
        except ValueError:
            raise TraceFormatError("reader fact 'ccid_descriptor' is not hex", line=line) \
                from None
        except CCIDError as exc:
            raise TraceFormatError(f"reader fact 'ccid_descriptor': {exc}", line=line) \
                from None
    else:
        descriptor = parse_ccid_descriptor(_DEFAULT_DESCRIPTOR)

    def answer(request: int) -> bytes | str:
        got = script.control.get(request)
        return "stall" if got is None else got

    kwargs: dict[str, Any] = {
        "vid": _int(info, "vid", 0x1209, 0xFFFF, line),
        "pid": _int(info, "pid", 0xCC1D, 0xFFFF, line),
        "bcd_device": _int(info, "bcdDevice", 0x0100, 0xFFFF, line),
        "has_interrupt": bool(info.get("interrupt", True)),
        "interface_number": _int(info, "interface", 0, 0xFF, line),
        "data_rates_answer": answer(ClassRequest.GET_DATA_RATES),
        "clocks_answer": answer(ClassRequest.GET_CLOCK_FREQUENCIES),
        "name": f"replay of {script.reader}",
    }
    for key in ("manufacturer", "product", "serial"):
        value = info.get(key)
        if value is not None:
            kwargs[key] = str(value)[:126]  # a USB string descriptor holds 126 characters
    return descriptor, kwargs


def replay(trace: str | os.PathLike[str] | IO[str] | Iterable[TraceRecord], *,
           reader: str | None = None, backend: VirtualBackend | None = None) -> VirtualBackend:
    """Turn a recorded trace into a virtual reader answering with the recorded replies.

    Returns the pyusb backend holding it (a new ``VirtualBackend`` unless one is given):
    ``ccid.open_reader(backend=...)`` then talks to the replayed reader. The reader is
    rebuilt from the facts the trace recorded at open (USB ids, class descriptor,
    interrupt endpoint, GET_DATA_RATES answer); without them it is a generic TPDU reader.
    Its :class:`ccid.trace.ReplayScript` is ``backend.readers[0].replay``: ``unmatched``
    shows where the program under test left the recorded path. Malformed traces and reader
    facts raise :class:`ccid.errors.TraceFormatError` naming the line.
    """
    script = ReplayScript(load(trace), reader)
    descriptor, kwargs = _reader_kwargs(script)
    device = ReplayReader(script, descriptor, **kwargs)
    if backend is None:
        backend = VirtualBackend()
    # No announcement of the model's own (empty) slots: the recorded messages say it all.
    backend.plug(VirtualDevice(device), announce=False)
    device.play_interrupts()
    return backend
