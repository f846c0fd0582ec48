"""The wire, readable: every CCID frame with its time, direction and reader.

Tracing is off by default and then costs one attribute test in the transport
(``if trace.enabled:``). Turn it on with :func:`enable` or the ``CCID_TRACE=path``
environment variable (read when this package is first imported; a path ending in
``.jsonl`` selects the JSON-lines form). Trace files are created 0600 and never through a
symbolic link or into someone else's file (:func:`open_private`).

Two forms (:mod:`ccid.trace.formats`): text, the lines users already paste from pcscd
logs, and JSON lines. :func:`load` reads both and plain pcscd/libccid debug logs;
malformed input raises :class:`ccid.errors.TraceFormatError` naming the line.

PIN bytes (data of VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, ENVELOPE, the PIN
structure of PC_to_RDR_Secure, and every piece of a split command that may carry them) are
written as ``**``: see :mod:`ccid.trace.masking`. Only code turns that off
(``mask_pins=False``), never the environment. :func:`summarize` totals time per call
(:mod:`ccid.trace.summary`); ``ccid.testing.replay.replay`` turns a trace back into a
virtual reader.

Modules: ``records`` (the record type), ``masking``, ``recording`` (sinks), ``formats``,
``summary``, ``script`` (the replay index).
"""

from __future__ import annotations

from typing import Any

from ccid.trace.formats import format_record, load, loads
from ccid.trace.masking import MASK_INS, PIN_INS, mask_spans
from ccid.trace.recording import (
    capture,
    describe,
    disable,
    enable,
    from_environment,
    open_private,
    record,
    span,
)
from ccid.trace.records import DIRECTIONS, TraceRecord
from ccid.trace.script import ReplayScript
from ccid.trace.summary import CallStat, Summary, TraceError, call_name, summarize

__all__ = [
    "DIRECTIONS",
    "MASK_INS",
    "PIN_INS",
    "CallStat",
    "ReplayScript",
    "Summary",
    "TraceError",
    "TraceRecord",
    "call_name",
    "capture",
    "describe",
    "disable",
    "enable",
    "enabled",
    "format_record",
    "load",
    "loads",
    "mask_spans",
    "open_private",
    "record",
    "span",
    "summarize",
]

#: True while at least one sink (file, stream or capture) is active.
enabled: bool = False


def __getattr__(name: str) -> Any:
    if name == "replay":
        # The library does not import ccid.testing; the replay reader lives there.
        raise AttributeError("ccid.trace.replay moved: use "
                             "`from ccid.testing.replay import replay`")
    raise AttributeError(f"module 'ccid.trace' has no attribute {name!r}")


from_environment()
